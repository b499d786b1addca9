"""`inv deploy --target=l4` end to end on loopback: image mirrored and pinned, objects applied in kind
order with our labels, the API key generated once and kept, rollout waited, smoke test passed."""

from __future__ import annotations

import json

from tests.deploy_world import NS

OBJECTS = ["Namespace gptoss", "ServiceAccount gptoss/vllm", "Secret gptoss/vllm-api-key",
           "Service gptoss/gptoss-l4-headless", "Service gptoss/gptoss-l4", "StatefulSet gptoss/gptoss-l4"]


def test_first_deploy_creates_everything_second_changes_nothing(deploy_world, tmp_path):
    w = deploy_world
    report = tmp_path / "deploy.json"
    w.kube.script_pods("gptoss-l4", "ready", ticks=8)  # a few polls of "starting" before Ready
    first = w.inv("deploy", "--target=l4", f"--report={report}")
    out = first.stdout
    assert first.returncode == 0, out + first.stderr
    positions = [out.index(f"TASK [kubernetes : {name}]") for name in OBJECTS]
    assert positions == sorted(positions)  # kind order: namespace, account, secret, services, workload
    assert "changed: generate a new API key and store it in the Secret" in out
    assert "changed: create StatefulSet gptoss/gptoss-l4" in out
    assert "phase: " in out and "ready after" in out
    assert "ok: openai/gpt-oss-20b answered through the port-forward" in out
    assert "RECAP" in out and "failed=0" in out

    sts = w.kube.get("StatefulSet", NS, "gptoss-l4")
    image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
    digest = w.dst.manifest_digest(f"test-project/gptoss/vllm/vllm-openai", "v0.12.0")
    assert image == f"{w.dst.host}/test-project/gptoss/vllm/vllm-openai@{digest}"  # pinned by digest
    for kind in ("Namespace", "ServiceAccount", "Secret", "Service", "StatefulSet"):
        assert w.labelled(kind), f"no {kind} carries our labels"
    key = w.api_key()
    assert key and len(key) >= 40
    doc = report.read_text()
    for text in (out, first.stderr, doc, json.dumps(sts)):
        assert key not in text and w.token not in text

    w.kube.clear_log()
    w.gcp.clear_log()
    copies_before = len([r for r in w.dst.requests() if r.method == "PUT"])
    second = w.inv("deploy", "--target=l4")
    assert second.returncode == 0, second.stdout + second.stderr
    assert w.kube.writes() == [] and w.gcp.mutating_requests() == []
    assert len([r for r in w.dst.requests() if r.method == "PUT"]) == copies_before
    assert "changed:" not in second.stdout
    assert "ok: API key present and kept" in second.stdout
    assert "ok: StatefulSet gptoss/gptoss-l4 matches the manifest (server-side dry run)" in second.stdout
    assert w.api_key() == key  # kept across runs
    assert key not in second.stdout


def test_a_changed_setting_patches_only_that_object(deploy_world):
    w = deploy_world
    assert w.inv("deploy", "--target=l4", "--skip-smoke").returncode == 0
    w.kube.clear_log()
    proc = w.inv("deploy", "--target=l4", "--skip-smoke", "--set", "targets.l4.max_model_len=64000")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    patched = {(r.path.rsplit("/", 1)[-1]) for r in w.kube.writes()}
    assert patched == {"gptoss-l4"} and all("statefulsets" in r.path for r in w.kube.writes())
    assert "changed: update StatefulSet gptoss/gptoss-l4 (1 field)" in proc.stdout
    assert "--max-model-len=128000" in proc.stdout and "--max-model-len=64000" in proc.stdout  # the diff line
    args = w.kube.get("StatefulSet", NS, "gptoss-l4")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--max-model-len=64000" in args


def test_rotate_api_key_only_when_asked(deploy_world):
    w = deploy_world
    assert w.inv("deploy", "--target=l4", "--skip-smoke").returncode == 0
    first = w.api_key()
    proc = w.inv("deploy", "--target=l4", "--skip-smoke", "--rotate-api-key")
    assert proc.returncode == 0, proc.stdout
    assert "changed: rotate the API key" in proc.stdout
    assert w.api_key() not in (None, first)


def test_dry_run_writes_nothing_and_shows_the_manifests(deploy_world):
    w = deploy_world
    w.kube.clear_log()
    proc = w.inv("deploy", "--target=l4", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert w.kube.writes() == [] and w.gcp.mutating_requests() == []
    assert "changed (dry-run): would create StatefulSet gptoss/gptoss-l4" in proc.stdout
    assert "+ kind: StatefulSet" in proc.stdout
    assert "would smoke-test the endpoint" in proc.stdout


def test_missing_node_pool_points_to_setup_cluster(deploy_world):
    w = deploy_world
    with w.gcp.lock:
        del w.gcp.state.nodepools[("test-project", "us-central1", "gptoss", "l4-gptoss")]
    proc = w.inv("deploy", "--target=l4")
    assert proc.returncode == 1
    assert "node pool(s) l4-gptoss missing from cluster gptoss" in proc.stdout
    assert "fix: run `inv setup-cluster --target=l4` first" in proc.stdout
    assert w.kube.writes() == []


def test_an_unlabelled_object_is_not_taken_over(deploy_world):
    w = deploy_world
    w.kube.seed({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gptoss-l4", "namespace": NS},
                 "spec": {"ports": [{"port": 80}]}})
    proc = w.inv("deploy", "--target=l4", "--skip-smoke")
    assert proc.returncode == 1
    assert ("Service gptoss/gptoss-l4 exists and is not ours (no app.kubernetes.io/managed-by=gptoss-gke label): "
            "refusing to take it over") in proc.stdout
    assert w.kube.get("Service", NS, "gptoss-l4")["metadata"].get("labels") in (None, {})


# ---- Kubernetes API faults, immutable fields, ownership and diffs ---------------------------------------------

def test_api_blips_are_waited_out_and_api_errors_are_said_as_problem_and_fix(deploy_world):
    w = deploy_world
    w.kube.script_pods("gptoss-l4", "ready", ticks=12)  # several polls before Ready
    # A control plane that restarts under us: one 503 on the apply, a dropped connection on a read,
    # and a 429 that asks for a second while the rollout is polled.
    w.kube.inject("PATCH", r"/statefulsets/gptoss-l4$", 503, dry_run=False)
    w.kube.inject("GET", r"/namespaces/gptoss/secrets/vllm-api-key$", 0, reset=True)
    w.kube.inject("GET", r"/api/v1/namespaces/gptoss/pods$", 429, retry_after=1)
    # ... and then an outage longer than all the retries of one poll: shown, and waited out.
    w.kube.inject("GET", r"/api/v1/namespaces/gptoss/pods$", 503, times=5)
    proc = w.inv("deploy", "--target=l4", "--skip-smoke")
    out = proc.stdout
    assert proc.returncode == 0, out
    assert w.kube.faults_left() == 0
    assert "retrying PATCH /apis/apps/v1/namespaces/gptoss/statefulsets/gptoss-l4" in out
    assert "retrying GET /api/v1/namespaces/gptoss/secrets/vllm-api-key" in out
    assert "retrying GET /api/v1/namespaces/gptoss/pods in 1.0s" in out  # Retry-After honoured
    assert "(the Kubernetes API is not answering (503 Service Unavailable: the server is currently unable" in out
    assert w.kube.get("StatefulSet", NS, "gptoss-l4")["status"]["readyReplicas"] == 1

    # A field that cannot change in place: what differs, why, the exact commands; nothing is sent
    # (more cases, and other API errors, in test_kube_errors.py).
    w.kube.clear_log()
    proc = w.inv("deploy", "--target=l4", "--skip-smoke", "--set", "targets.l4.pvc_size_gi=100")
    out = proc.stdout
    assert proc.returncode == 1, out
    assert ("failed: StatefulSet gptoss/gptoss-l4 differs in what the API server cannot change in place: "
            "spec.volumeClaimTemplates.0.spec.resources.requests.storage: 60Gi → 100Gi") in out
    kubectl = f"kubectl --kubeconfig={w.kube.kubeconfig_path} --context=test -n gptoss"
    assert (f"{kubectl} patch pvc model-cache-gptoss-l4-0 -p "
            "'{\"spec\": {\"resources\": {\"requests\": {\"storage\": \"100Gi\"}}}}'") in out
    assert f"{kubectl} delete statefulset gptoss-l4 --cascade=orphan" in out and "inv deploy --target=l4" in out
    assert w.kube.writes() == [] and w.kube.get("StatefulSet", NS, "gptoss-l4") is not None
    for raw in ("HTTP response headers", "ApiException", "Traceback", "HTTPHeaderDict"):
        assert raw not in out + proc.stderr


def test_user_labels_never_decide_ownership_and_removed_fields_are_changes(deploy_world):
    w = deploy_world
    assert w.inv("deploy", "--target=l4", "--skip-smoke").returncode == 0
    # Labels added after the first deploy: applied everywhere, nothing disowned (not the account,
    # not the workload), and not stamped into the immutable volumeClaimTemplates.
    extra = ["--set", "labels.team=search", "--set", "targets.l4.vllm_extra_args=[--enable-prefix-caching]"]
    proc = w.inv("deploy", "--target=l4", "--skip-smoke", *extra)
    assert proc.returncode == 0, proc.stdout
    for kind, name in (("Namespace", None), ("ServiceAccount", "vllm"), ("Secret", "vllm-api-key"),
                       ("Service", "gptoss-l4"), ("StatefulSet", "gptoss-l4")):
        obj = w.kube.get(kind, None if name is None else NS, name or NS)
        assert obj["metadata"]["labels"]["team"] == "search", kind
    sts = w.kube.get("StatefulSet", NS, "gptoss-l4")
    assert sts["spec"]["template"]["metadata"]["labels"]["team"] == "search"
    assert "team" not in sts["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"]
    assert "--enable-prefix-caching" in sts["spec"]["template"]["spec"]["containers"][0]["args"]

    # Removed from the settings → removed from the objects: a difference, not "matches".
    proc = w.inv("deploy", "--target=l4", "--skip-smoke")
    out = proc.stdout
    assert proc.returncode == 0, out
    assert "changed: update ServiceAccount gptoss/vllm (1 field)" in out
    assert "~ metadata.labels.team: search → (absent)" in out
    assert "changed: update StatefulSet gptoss/gptoss-l4" in out
    assert "~ spec.template.spec.containers.0.args: removed --enable-prefix-caching" in out
    sts = w.kube.get("StatefulSet", NS, "gptoss-l4")
    assert "team" not in sts["metadata"]["labels"] and "team" not in sts["spec"]["template"]["metadata"]["labels"]
    assert "--enable-prefix-caching" not in sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "team" not in w.kube.get("ServiceAccount", NS, "vllm")["metadata"]["labels"]

    # Teardown with other user labels still finds everything of this environment.
    proc = w.inv("teardown", "--dry-run", "--set", "labels.team=other")
    assert proc.returncode == 0, proc.stdout
    for name in ("ServiceAccount gptoss/vllm", "Secret gptoss/vllm-api-key", "Service gptoss/gptoss-l4",
                 "StatefulSet gptoss/gptoss-l4"):
        assert f"would delete {name}" in proc.stdout, name
