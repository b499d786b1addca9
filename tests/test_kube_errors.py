"""Kubernetes API errors reach a person as a problem and a fix: immutable fields with the exact
commands, denied, overloaded and slow APIs in words, never an ApiException with its HTTP headers; and
the plan sees what differs on either side. In-process steps against the Kubernetes API emulator (the
CLI path is in test_deploy.py)."""

from __future__ import annotations

import copy

import pytest

from gptoss_gke.config import load_settings, parse_set
from gptoss_gke.core import Runner
from gptoss_gke.core.retry import RetryPolicy
from gptoss_gke.k8s.objects import KubeObject
from gptoss_gke.k8s.manifests import render
from tests.conftest import in_process
from tests.envfiles import kube_env

IMAGE = "127.0.0.1:5000/test-project/gptoss/vllm/vllm-openai@sha256:" + "a" * 64


@pytest.fixture
def apply(tmp_path, kube_emulator):
    folder = kube_env(tmp_path, kube_emulator, {"retry": {"attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.02}})

    def run(*sets: str, kinds: tuple[str, ...] = (), edit=lambda obj: obj):
        """``edit``: what the manifest becomes before it is applied (another version of it)."""
        settings = load_settings("dev", environ={"GPTOSS_ENV_DIR": str(folder)}, overrides=parse_set(list(sets)))
        r = settings.retry
        ctx, out = in_process(settings, RetryPolicy(r.attempts, r.base_delay_s, r.max_delay_s))
        steps = [KubeObject(edit(o)) for o in render(settings, settings.target("l4"), IMAGE)
                 if not kinds or o["kind"] in kinds]
        return Runner(ctx).run(steps), out.getvalue()

    return run


def test_an_immutable_change_says_what_differs_and_the_commands_and_sends_nothing(apply, kube_emulator):
    results, out = apply()
    assert all(r.status == "changed" for r in results), out
    kube_emulator.tick(3)  # the StatefulSet makes its pod and claim
    kube_emulator.clear_log()
    results, out = apply("targets.l4.storage_class=premium-rwo", kinds=("StatefulSet",))
    [sts] = results
    assert sts.status == "failed"
    assert sts.error == ("StatefulSet gptoss/gptoss-l4 differs in what the API server cannot change in place: "
                         "spec.volumeClaimTemplates.0.spec.storageClassName: standard-rwo → premium-rwo")
    kubectl = f"kubectl --kubeconfig={kube_emulator.kubeconfig_path} --context=test -n gptoss"
    assert f"\n      {kubectl} delete statefulset gptoss-l4\n      {kubectl} delete pvc model-cache-gptoss-l4-0\n" \
           f"      inv deploy --target=l4\n" in sts.fix
    assert "the model is downloaded again" in sts.fix
    assert kube_emulator.writes() == []
    assert kube_emulator.get("PersistentVolumeClaim", "gptoss", "model-cache-gptoss-l4-0") is not None


def test_denied_and_overloaded_apis_are_said_in_words(apply, kube_emulator):
    kube_emulator.inject("GET", r"/namespaces/gptoss$", 403, message='namespaces "gptoss" is forbidden: User '
                         '"dev@example.com" cannot get resource "namespaces" in API group "" in the namespace "gptoss"')
    kube_emulator.inject("GET", r"/namespaces/gptoss/serviceaccounts/vllm$", 503, times=3)  # every attempt
    results, out = apply(kinds=("Namespace", "ServiceAccount"))
    ns, sa = results
    assert ns.error.startswith('the Kubernetes API denied it (403 Forbidden): namespaces "gptoss" is forbidden: '
                               'User "dev@example.com" cannot get resource')
    assert ns.fix.startswith("ask for roles/container.developer in project test-project")
    assert sa.status == "skipped"  # it needs the namespace
    kube_emulator.inject("GET", r"/namespaces/gptoss/serviceaccounts/vllm$", 503, times=3)
    results, out2 = apply(kinds=("ServiceAccount",))
    [sa] = results
    assert sa.error.startswith("the Kubernetes API kept answering 503 ServiceUnavailable after 3 attempts: "
                               "the server is currently unable to handle the request")
    assert out2.count("retrying GET /api/v1/namespaces/gptoss/serviceaccounts/vllm") == 2
    for text in (out, out2, ns.error, sa.error):
        for raw in ("HTTP response headers", "ApiException", "HTTPHeaderDict", "Traceback"):
            assert raw not in text


EXTRA_ENV = {"name": "VLLM_USAGE_SOURCE", "value": "gptoss-gke"}
EXTRA_ANNOTATION = ("example.com/owner", "search-team")


def with_extras(obj: dict) -> dict:
    """The StatefulSet as another version of the manifest had it: one more env var on the server
    container (a by-name list item) and one more annotation (a map key)."""
    if obj["kind"] != "StatefulSet":
        return obj
    obj = copy.deepcopy(obj)
    obj["metadata"].setdefault("annotations", {})[EXTRA_ANNOTATION[0]] = EXTRA_ANNOTATION[1]
    obj["spec"]["template"]["spec"]["containers"][0]["env"].append(dict(EXTRA_ENV))
    return obj


def extras_on(kube_emulator) -> tuple[bool, bool]:
    """(the env var, the annotation) on the live StatefulSet."""
    live = kube_emulator.get("StatefulSet", "gptoss", "gptoss-l4")
    env = live["spec"]["template"]["spec"]["containers"][0]["env"]
    return EXTRA_ENV in env, (live["metadata"].get("annotations") or {}).get(EXTRA_ANNOTATION[0]) == EXTRA_ANNOTATION[1]


def test_a_removed_env_var_or_annotation_is_a_change_on_either_side_and_applying_converges(apply, kube_emulator):
    env_path = f"spec.template.spec.containers.0.env.{EXTRA_ENV['name']}"
    env_shown = f"{{name: {EXTRA_ENV['name']}, value: {EXTRA_ENV['value']}}}"
    results, out = apply(kinds=("Namespace", "StatefulSet"), edit=with_extras)
    assert all(r.status == "changed" for r in results), out
    assert extras_on(kube_emulator) == (True, True)

    # Gone from the manifest, still on the live object: two changes, and applying removes both.
    kube_emulator.clear_log()
    [sts], out = apply(kinds=("StatefulSet",))
    assert sts.status == "changed", out
    assert f"~ {env_path}: {env_shown} → (absent)" in out
    # Our only annotation: the whole map goes, and the line names what was in it.
    assert f"~ metadata.annotations: {{{EXTRA_ANNOTATION[0]}: {EXTRA_ANNOTATION[1]}}} → (absent)" in out
    assert len(kube_emulator.writes()) == 1
    assert extras_on(kube_emulator) == (False, False)
    [sts], out = apply(kinds=("StatefulSet",))
    assert sts.status == "ok", out  # converged: nothing left to remove

    # The other side: the manifest has them, the live object lost them (someone edited it by hand).
    apply(kinds=("StatefulSet",), edit=with_extras)
    live = kube_emulator.get("StatefulSet", "gptoss", "gptoss-l4")
    live["spec"]["template"]["spec"]["containers"][0]["env"].remove(EXTRA_ENV)
    del live["metadata"]["annotations"][EXTRA_ANNOTATION[0]]
    kube_emulator.seed(live)
    assert extras_on(kube_emulator) == (False, False)
    kube_emulator.clear_log()
    [sts], out = apply(kinds=("StatefulSet",), edit=with_extras)
    assert sts.status == "changed", out
    assert f"~ {env_path}: (absent) → {env_shown}" in out
    assert f"~ metadata.annotations.{EXTRA_ANNOTATION[0]}: (absent) → {EXTRA_ANNOTATION[1]}" in out
    assert extras_on(kube_emulator) == (True, True)


def test_a_stalled_api_is_retried_like_a_503_and_a_persistent_stall_is_said_in_words(apply, kube_emulator,
                                                                                      monkeypatch):
    """A control plane that stops answering (an upgrade, an overloaded etcd) makes the client's read time
    out: that is retried like a 503, on reads and on server-side apply; one that never answers is a
    failure with the cause and the fix."""
    from gptoss_gke.k8s import client

    # The real read timeout is a minute; a second still leaves a loaded machine room for every other answer.
    monkeypatch.setattr(client, "REQUEST_TIMEOUT_S", (5, 1.0))
    sa = r"/namespaces/gptoss/serviceaccounts/vllm$"
    kube_emulator.inject("GET", sa, None, delay_s=4)  # stalled, then answered: too late for the client
    kube_emulator.inject("PATCH", sa, None, delay_s=4, dry_run=False)
    results, out = apply(kinds=("Namespace", "ServiceAccount"))
    assert [r.status for r in results] == ["changed", "changed"], out
    assert kube_emulator.faults_left() == 0
    assert "retrying GET /api/v1/namespaces/gptoss/serviceaccounts/vllm" in out
    assert "retrying PATCH /api/v1/namespaces/gptoss/serviceaccounts/vllm" in out
    assert kube_emulator.get("ServiceAccount", "gptoss", "vllm") is not None

    kube_emulator.inject("GET", sa, None, times=3, delay_s=4)  # every attempt
    [result], out = apply(kinds=("ServiceAccount",))
    assert result.status == "failed", out
    assert result.error.startswith(f"cannot reach the Kubernetes API of context test at {kube_emulator.url}"), \
        result.error
    assert "timed out" in result.error
    assert result.fix == "check the cluster is running and the network path to its control plane"
    assert out.count("retrying GET /api/v1/namespaces/gptoss/serviceaccounts/vllm") == 2
    for text in (out, result.error):
        for raw in ("HTTPConnectionPool", "urllib3", "Traceback", "ApiException"):
            assert raw not in text, text
