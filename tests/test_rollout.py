"""Waiting for a rollout: the phase in plain words and each event turned into a hint, against pods the
Kubernetes API emulator drives through real failure scenarios."""

from __future__ import annotations

import pytest

from gptoss_gke.config import load_settings, parse_set
from gptoss_gke.core import Runner
from gptoss_gke.k8s.objects import KubeObject
from gptoss_gke.k8s.manifests import render
from gptoss_gke.k8s.secret import ApiKeySecret
from gptoss_gke.k8s.wait import Rollout
from tests.conftest import in_process
from tests.envfiles import kube_env


@pytest.fixture
def rollout(tmp_path, kube_emulator):
    folder = kube_env(tmp_path, kube_emulator, {"targets": {"l4": {"load_timeout_s": 2}}})

    def run(scenario: str | None = None, **params):
        settings = load_settings("dev", environ={"GPTOSS_ENV_DIR": str(folder)}, overrides=parse_set([]))
        ctx, out = in_process(settings)
        if scenario:
            kube_emulator.script_pods("gptoss-l4", scenario, **params)
        image = "127.0.0.1:5000/test-project/gptoss/vllm/vllm-openai@sha256:" + "a" * 64
        steps = [KubeObject(obj) for obj in render(settings, settings.target("l4"), image)]
        results = Runner(ctx).run([*steps, ApiKeySecret(settings), Rollout(settings, "l4")])
        return results[-1], out.getvalue()

    return run


def test_ready_rollout_reports_phases_then_ready(rollout):
    r, out = rollout("ready", ticks=40)  # reads tick the controller: enough to see phases
    assert r.status == "changed" and "ready after" in out
    assert "phase: " in out


@pytest.mark.parametrize("scenario, params, expect, fix", [
    ("image_pull", {}, "ImagePullBackOff", "inv mirror-image"),
    ("crashloop", {"exit_code": 3}, "keeps exiting (exit code 3", "kubectl logs -p"),
    ("oomkilled", {}, "was OOMKilled", "lower max_model_len"),
    ("gcsfuse_denied", {}, "GCS FUSE was denied access to the bucket", "roles/storage.objectViewer"),
])
def test_fatal_conditions_fail_fast_with_the_fix(rollout, scenario, params, expect, fix):
    r, out = rollout(scenario, **params)
    assert r.status == "failed", out
    assert expect in r.error and fix in (r.fix or "")
    assert "timed out" not in r.error  # it did not wait out the budget


def test_crashloop_shows_the_last_log_lines(rollout, kube_emulator):
    kube_emulator.set_logs("gptoss-l4", ["INFO loading", "ValueError: max_model_len 128000 is too large"])
    r, out = rollout("crashloop")
    assert "ValueError: max_model_len 128000 is too large" in r.error


@pytest.mark.parametrize("params, hint", [
    ({}, "no node with free nvidia.com/gpu yet; the autoscaler adds one from pool l4-gptoss"),
    ({"not_trigger_scale_up": "pod didn't trigger scale-up: 1 max node group size reached"},
     "the cluster autoscaler will not add a node: pod didn't trigger scale-up: 1 max node group size reached"),
    ({"scale_up": "pod triggered scale-up: [{l4-gptoss 0->1 (max: 1)}]"}, "waiting for a node (scale-up triggered)"),
])
def test_waiting_for_a_node_times_out_saying_what_it_waited_for(rollout, params, hint):
    r, out = rollout("unschedulable", **params)
    assert r.status == "failed"
    assert r.error.startswith("timed out after 2.0s waiting for StatefulSet gptoss/gptoss-l4 to become ready; "
                              "it was waiting for a node")
    assert hint in out


def test_loading_phase_comes_from_vllm_log_lines(rollout, kube_emulator):
    kube_emulator.set_logs("gptoss-l4", ["INFO [default_loader.py] Loading weights took 73.54 seconds"])
    r, out = rollout("running_not_ready")
    assert "phase: loading weights" in out
    assert "timed out" in r.error and "it was loading weights" in r.error
