"""Kubernetes API errors reach a person as a problem and a fix: immutable fields with the exact
commands, denied and overloaded APIs in words, never an ApiException with its HTTP headers. In-process
steps against the Kubernetes API emulator (the CLI path is in test_deploy.py)."""

from __future__ import annotations

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

    def run(*sets: str, kinds: tuple[str, ...] = ()):
        settings = load_settings("dev", environ={"GPTOSS_ENV_DIR": str(folder)}, overrides=parse_set(list(sets)))
        r = settings.retry
        ctx, out = in_process(settings, RetryPolicy(r.attempts, r.base_delay_s, r.max_delay_s))
        steps = [KubeObject(o) for o in render(settings, settings.target("l4"), IMAGE)
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
