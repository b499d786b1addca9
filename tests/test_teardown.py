"""`inv teardown`: scoped to what carries our labels, listed and confirmed first, idempotent."""

from __future__ import annotations

import json
import socket

import yaml

from tests.conftest import run_inv
from tests.deploy_world import NS
from tests.envfiles import write_env
from tests.registry import publish

P, L, C = "test-project", "us-central1", "gptoss"


def deployed(w):
    # Pre-existing objects that are not ours, in and out of our namespace.
    w.kube.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    w.kube.seed({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "theirs", "namespace": "team-a"},
                 "data": {"a": "b"}})
    proc = w.inv("deploy", "--target=l4", "--skip-smoke")
    assert proc.returncode == 0, proc.stdout
    w.kube.clear_log()
    w.gcp.clear_log()
    return proc


def names(w, kind, ns=NS):
    w.kube.tick(3)  # let the emulated controllers finish what deletion started (finalizers, GC)
    return sorted(o["metadata"]["name"] for o in w.kube.objects(kind, ns))


def test_without_a_terminal_or_yes_it_refuses_and_deletes_nothing(deploy_world):
    w = deploy_world
    deployed(w)
    w.kube.clear_log()
    w.gcp.clear_log()
    proc = w.inv("teardown")
    assert proc.returncode == 1
    assert "changed (dry-run): would delete StatefulSet gptoss/gptoss-l4" in proc.stdout  # it listed first
    assert "nothing deleted: teardown needs confirmation" in proc.stdout
    assert "--yes" in proc.stdout
    assert w.kube.writes() == [] and w.gcp.mutating_requests() == []


def test_dry_run_only_lists(deploy_world):
    w = deploy_world
    deployed(w)
    w.kube.clear_log()
    proc = w.inv("teardown", "--dry-run")
    assert proc.returncode == 0
    assert "would delete Service gptoss/gptoss-l4" in proc.stdout
    assert "would run: gcloud container node-pools delete l4-gptoss" in proc.stdout
    assert w.kube.writes() == [] and w.gcp.mutating_requests() == []


def test_full_teardown_leaves_exactly_what_was_there_before_and_a_second_run_is_all_ok(deploy_world):
    w = deploy_world
    deployed(w)
    # Someone replaced our headless Service with their own: same name, not our labels.
    svc = w.kube.get("Service", NS, "gptoss-l4-headless")
    svc["metadata"]["labels"] = {"team": "a"}
    w.kube.remove("Service", NS, "gptoss-l4-headless")
    w.kube.seed(svc)
    # A smoke run stopped between its code ConfigMap and its Job (the Job would have owned it).
    seed_ours(w, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "smoke-l4-code", "namespace": NS},
                  "data": {"request.json": "{}"}})

    proc = w.inv("teardown", "--yes", "--purge-model")
    assert proc.returncode == 0, proc.stdout
    # The list is shown once; after it, only what is deleted (and the recap).
    preview, _, deleting = proc.stdout.partition("Deleting (only what is listed above):")
    assert deleting, proc.stdout
    assert preview.count("would delete StatefulSet gptoss/gptoss-l4") == 1 and "would " not in deleting
    assert "TASK [kubernetes : Ingress objects" in preview and "TASK [kubernetes : Ingress objects" not in deleting
    assert deleting.count("changed: delete StatefulSet gptoss/gptoss-l4") == 1
    assert [ln.split("] ")[0] for ln in deleting.splitlines() if ln.startswith("TASK [")] == [
        "TASK [kubernetes : StatefulSet objects of l4, ironwood", "TASK [kubernetes : Service objects of l4, ironwood",
        "TASK [kubernetes : PersistentVolumeClaim objects of l4, ironwood",
        "TASK [kubernetes : ConfigMap objects of l4, ironwood", "TASK [kubernetes : Secret objects",
        "TASK [kubernetes : ServiceAccount objects", "TASK [node pools : node pool l4-gptoss",
        "TASK [node pools : node pool ironwood-gptoss"]
    assert ("left alone: Service gptoss/gptoss-l4-headless, not ours (no app.kubernetes.io/managed-by=gptoss-gke label)"
            in proc.stdout)
    assert names(w, "Service") == ["gptoss-l4-headless"]  # the look-alike survived
    for kind in ("StatefulSet", "Secret", "ServiceAccount", "PersistentVolumeClaim", "Pod", "ConfigMap"):
        assert [n for n in names(w, kind) if n not in ("default", "kube-root-ca.crt")] == [], kind
    assert "theirs" in names(w, "ConfigMap", "team-a") and "team-a" in names(w, "Namespace", None)
    # Deleting our namespace would delete the look-alike with it: kept, and said why.
    assert "namespace kept: it also holds objects that are not ours (Service gptoss/gptoss-l4-headless)" in proc.stdout
    # Node pools we created are gone, the default pool (not ours) stays.
    assert w.gcp.get_nodepool(P, L, C, "l4-gptoss") is None
    assert w.gcp.get_nodepool(P, L, C, "default-pool") is not None
    assert w.gcp.get_cluster(P, L, C) is not None  # never without --delete-cluster

    w.kube.clear_log()
    w.gcp.clear_log()
    again = w.inv("teardown", "--yes", "--purge-model")
    assert again.returncode == 0, again.stdout
    assert "changed=0" in again.stdout and "failed=0" in again.stdout
    assert w.kube.writes() == [] and w.gcp.mutating_requests() == []


def test_model_cache_is_kept_without_purge_model(deploy_world):
    w = deploy_world
    deployed(w)
    assert names(w, "PersistentVolumeClaim")  # the StatefulSet's model cache
    proc = w.inv("teardown", "--yes")
    assert proc.returncode == 0, proc.stdout
    assert "kept model cache PersistentVolumeClaim gptoss/model-cache-gptoss-l4-0" in proc.stdout
    assert names(w, "PersistentVolumeClaim") == ["model-cache-gptoss-l4-0"]
    assert NS in names(w, "Namespace", None)  # kept: it holds the cache
    assert names(w, "StatefulSet") == []


def test_scale_to_zero_keeps_the_pool(deploy_world):
    w = deploy_world
    deployed(w)
    proc = w.inv("teardown", "--yes", "--scale-to-zero", "--target=l4")
    assert proc.returncode == 0, proc.stdout
    pool = w.gcp.get_nodepool(P, L, C, "l4-gptoss")
    assert pool is not None and pool["autoscaling"]["enabled"]
    assert "shared by every target: kept" in proc.stdout  # a single target keeps namespace, account, secret
    assert w.kube.get("Secret", NS, "vllm-api-key") is not None


def test_delete_cluster_refuses_a_cluster_we_did_not_create(deploy_world):
    w = deploy_world
    with w.gcp.lock:
        w.gcp.state.clusters[(P, L, C)]["resourceLabels"] = {"owner": "platform-team"}
    proc = w.inv("teardown", "--yes", "--delete-cluster")
    assert proc.returncode == 1
    assert "cluster gptoss is not ours (no managed-by=gptoss-gke label): refusing to delete it" in proc.stdout
    assert w.gcp.get_cluster(P, L, C) is not None


def test_purge_model_deletes_only_what_this_environment_staged_and_a_grant_no_other_uses(deploy_world):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from gptoss_gke.staging.state import MANIFEST_NAME

    w = deploy_world
    client = storage.Client(project=P, credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": w.gcs.url})
    bucket = client.create_bucket("test-project-models")
    staged = {"b" * 40: "dev", "c" * 40: "prod", "d" * 40: None}  # revision folder → who staged it
    for rev, env in staged.items():
        blob = bucket.blob(f"models/openai/gpt-oss-120b/{rev}/model-00000-of-00014.safetensors")
        blob.metadata = {"hf-revision": rev, "sha256": "0" * 64}
        blob.upload_from_string(b"weights")
        manifest = {"tool": "gptoss-gke", "revision": rev, **({"environment": env} if env else {})}
        bucket.blob(f"models/openai/gpt-oss-120b/{rev}/{MANIFEST_NAME}").upload_from_string(json.dumps(manifest))
    bucket.blob(f"models/openai/gpt-oss-120b/{'b' * 40}/my-notes.txt").upload_from_string(b"not staged by us")
    bucket.blob("datasets/theirs.parquet").upload_from_string(b"not ours")
    bucket.blob("models/openai/gpt-oss-120b/notes.txt").upload_from_string(b"someone's notes")
    number = w.gcp.state.projects[P]["projectNumber"]
    member = (f"principal://iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/"
              f"{P}.svc.id.goog/subject/ns/{NS}/sa/vllm")
    policy = bucket.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {member, "user:alice@example.com"}})
    bucket.set_iam_policy(policy)
    # Another environment of ours, in another cluster of the same project, serving from the same bucket
    # as the same namespace and service account: the same Workload Identity principal.
    write_env(w.tmp, w.settings, {"cluster": {"name": "gptoss-staging"}}, name="staging")

    proc = w.inv("teardown", "--yes", "--purge-model")
    assert proc.returncode == 0, proc.stdout
    left = sorted(b.name for b in client.list_blobs("test-project-models"))
    assert left == sorted(["datasets/theirs.parquet", "models/openai/gpt-oss-120b/notes.txt",
                           f"models/openai/gpt-oss-120b/{'b' * 40}/my-notes.txt",
                           *(f"models/openai/gpt-oss-120b/{r}/{n}" for r in ("c" * 40, "d" * 40)
                             for n in (MANIFEST_NAME, "model-00000-of-00014.safetensors"))])
    assert "(staged by environment prod)" in proc.stdout and "(staged by no recorded environment)" in proc.stdout
    members = {m for b in w.gcs.policy("test-project-models").get("bindings", []) for m in b.get("members", [])}
    assert member in members  # environment staging reads the bucket as the same principal
    assert f"ok: {member} keeps roles/storage.objectViewer on gs://test-project-models: environment staging " \
           f"uses it too" in proc.stdout

    (w.tmp / "env" / "staging.yaml").unlink()
    proc = w.inv("teardown", "--yes", "--purge-model")
    assert proc.returncode == 0, proc.stdout
    members = {m for b in w.gcs.policy("test-project-models").get("bindings", []) for m in b.get("members", [])}
    assert member not in members and "user:alice@example.com" in members


def test_delete_cluster_removes_a_cluster_we_created(deploy_world):
    w = deploy_world
    deployed(w)
    proc = w.inv("teardown", "--yes", "--delete-cluster")
    assert proc.returncode == 0, proc.stdout
    assert "changed: delete cluster gptoss" in proc.stdout
    assert w.gcp.get_cluster(P, L, C) is None
    again = w.inv("teardown", "--yes", "--delete-cluster")
    assert again.returncode == 0, again.stdout
    assert "ok: cluster gptoss does not exist" in again.stdout and "changed=0" in again.stdout


# ---- scope and blindness ------------------------------------------------------------------------------------

OURS = {"app.kubernetes.io/managed-by": "gptoss-gke", "gptoss-gke/env": "dev"}


def seed_ours(w, obj: dict, target: str | None = "l4") -> None:
    """An object as deploy leaves it (our labels), put straight into the cluster: no deploy needed."""
    obj = json.loads(json.dumps(obj))
    obj["metadata"]["labels"] = {**OURS, **({"gptoss-gke/target": target} if target else {})}
    w.kube.seed(obj)


def seed_serving_objects(w) -> None:
    """What costs money outside the cluster's nodes: a load balancer (Service and gce Ingress) and a
    disk (the model cache claim), plus our namespace."""
    seed_ours(w, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}, target=None)
    seed_ours(w, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gptoss-l4-public", "namespace": NS},
                  "spec": {"type": "LoadBalancer", "selector": {"app": "x"}, "ports": [{"port": 8000}]}})
    seed_ours(w, {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                  "metadata": {"name": "gptoss-l4", "namespace": NS},
                  "spec": {"defaultBackend": {"service": {"name": "gptoss-l4-public", "port": {"number": 8000}}}}})
    seed_ours(w, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                  "metadata": {"name": "model-cache-gptoss-l4-0", "namespace": NS},
                  "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard-rwo",
                           "resources": {"requests": {"storage": "60Gi"}}}})
    w.kube.tick(2)  # the cloud controllers add their finalizers; the claim gets a provisioned disk
    assert "service.kubernetes.io/load-balancer-cleanup" in w.kube.get("Service", NS, "gptoss-l4-public")[
        "metadata"]["finalizers"]


def test_another_environments_cluster_and_node_pools_are_left_alone(deploy_world):
    w = deploy_world
    prod = {"managed-by": "gptoss-gke", "gptoss-gke-env": "prod"}
    with w.gcp.lock:
        w.gcp.state.clusters[(P, L, C)]["resourceLabels"] = dict(prod)
        for name in ("l4-gptoss", "ironwood-gptoss"):
            w.gcp.state.nodepools[(P, L, C, name)]["config"]["resourceLabels"] = dict(prod)

    proc = w.inv("teardown", "--yes", "--delete-cluster")
    assert proc.returncode == 1, proc.stdout
    assert "cluster gptoss is not ours (environment prod): refusing to delete it" in proc.stdout
    assert w.gcp.get_cluster(P, L, C) is not None

    w.gcp.clear_log()
    proc = w.inv("teardown", "--yes")
    assert proc.returncode == 0, proc.stdout
    assert "ok: node pool l4-gptoss is not ours (environment prod): left alone" in proc.stdout
    assert "ok: node pool ironwood-gptoss is not ours (environment prod): left alone" in proc.stdout
    assert w.gcp.get_nodepool(P, L, C, "l4-gptoss") is not None
    assert w.gcp.get_nodepool(P, L, C, "ironwood-gptoss") is not None
    assert w.gcp.mutating_requests() == []


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kubeconfig(w, name: str, server: str, token: str = "emulator-token") -> str:
    path = w.tmp / name
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test-cluster", "cluster": {"server": server}}],
        "users": [{"name": "test-user", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test-cluster", "user": "test-user"}}]}))
    return str(path)


def set_endpoint(w, address: str) -> None:
    """Where GKE says the cluster's control plane answers (its IP endpoint, both fields)."""
    with w.gcp.lock:
        cluster = w.gcp.state.clusters[(P, L, C)]
        cluster["endpoint"] = address
        cluster["controlPlaneEndpointsConfig"]["ipEndpointsConfig"]["publicEndpoint"] = address


def test_nothing_is_deleted_while_anything_could_not_be_seen(deploy_world):
    w = deploy_world
    seed_serving_objects(w)
    w.kube.clear_log()
    dead = _dead_port()
    refused = _kubeconfig(w, "refused", f"http://127.0.0.1:{dead}")
    no_token = {k: v for k, v in w.env.items() if k != "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE"}
    seeded_endpoint = w.gcp.get_cluster(P, L, C)["endpoint"]
    blind = [
        # (what is wrong, environment of the run, cluster endpoint GKE reports, what the run must say)
        ("no usable gcloud credentials", no_token, seeded_endpoint, "gcloud has no usable credentials"),
        ("Kubernetes API refuses connections", {**w.env, "GPTOSS_KUBE__KUBECONFIG": refused}, f"127.0.0.1:{dead}",
         "cannot reach the Kubernetes API of context test"),
        ("expired Kubernetes credentials",
         {**w.env, "GPTOSS_KUBE__KUBECONFIG": _kubeconfig(w, "expired", w.kube.url, token="")}, seeded_endpoint,
         "the Kubernetes API refused the credentials of context test (401)"),
        ("the context reaches another cluster", w.env, "10.0.0.7",
         f"kube.context test points at {w.kube.url} (kubeconfig cluster test-cluster), not at cluster gptoss "
         f"(endpoint 10.0.0.7:443, gke-"),
    ]
    report = w.tmp / "report.json"
    for what, env, endpoint, cause in blind:
        set_endpoint(w, endpoint)
        w.gcp.clear_log()
        proc = run_inv(["teardown", "--yes", "--delete-cluster", f"--report={report}"], env)
        out = proc.stdout
        assert proc.returncode == 1, (what, out)
        assert cause in out, (what, out)
        assert "nothing deleted: teardown stops when anything it would delete" in out, what
        # Nothing changed anywhere: no cloud write, no Kubernetes write, everything still there.
        assert w.gcp.mutating_requests() == [] and w.kube.writes() == [], what
        assert w.gcp.get_cluster(P, L, C) is not None and w.gcp.get_nodepool(P, L, C, "l4-gptoss") is not None
        assert w.kube.get("Service", NS, "gptoss-l4-public") is not None
        assert w.kube.get("PersistentVolumeClaim", NS, "model-cache-gptoss-l4-0") is not None
        # The recap and the report say nothing was deleted.
        doc = json.loads(report.read_text())
        assert doc["recap"]["changed"] == 0 and doc["recap"]["failed"] >= 1 and doc["deleted"] == [], what
        assert " changed=0 " in out.rstrip().splitlines()[-1], what

    # --force: the cluster goes anyway, and the run names what may be left behind.
    set_endpoint(w, f"127.0.0.1:{dead}")
    proc = run_inv(["teardown", "--yes", "--delete-cluster", "--force", f"--report={report}"],
                   {**w.env, "GPTOSS_KUBE__KUBECONFIG": refused})
    assert proc.returncode == 0, proc.stdout
    assert w.gcp.get_cluster(P, L, C) is None
    assert "(--force: cannot reach the Kubernetes API of context test" in proc.stdout
    assert "may be left behind: external load balancers (gcloud compute forwarding-rules list" in proc.stdout
    assert "persistent disks (gcloud compute disks list" in proc.stdout
    doc = json.loads(report.read_text())
    assert [d.split(" (")[0] for d in doc["deleted"]] == ["delete cluster gptoss"]


def test_delete_cluster_first_deletes_load_balancers_and_disks_and_waits_until_they_are_gone(deploy_world):
    w = deploy_world
    seed_serving_objects(w)
    disk = w.kube.get("PersistentVolumeClaim", NS, "model-cache-gptoss-l4-0")["spec"]["volumeName"]
    assert w.kube.get("PersistentVolume", None, disk) is not None  # a provisioned disk
    w.kube.cloud_cleanup_s = 3  # the load balancers and the disk take a while to go
    proc = w.inv("teardown", "--yes", "--delete-cluster")
    assert proc.returncode == 0, proc.stdout
    assert "waiting for Service gptoss-l4-public to be gone (finalizers: service.kubernetes.io/load-balancer-cleanup" \
        in proc.stdout
    # Even without --purge-model the model cache goes with the cluster: a claim left behind is an
    # orphaned, billed disk.
    assert "would delete PersistentVolumeClaim gptoss/model-cache-gptoss-l4-0" in proc.stdout
    [delete] = [r for r in w.gcp.mutating_requests() if r.method == "DELETE" and r.path.endswith(f"/clusters/{C}")]
    assert w.gcp.get_cluster(P, L, C) is None
    for key in (("Service", NS, "gptoss-l4-public"), ("Ingress", NS, "gptoss-l4"),
                ("PersistentVolumeClaim", NS, "model-cache-gptoss-l4-0"), ("PersistentVolume", "", disk)):
        assert key in w.kube.removed_at, key
        assert w.kube.removed_at[key] < w.gcp.arrival(delete), f"{key} was still there when the cluster was deleted"


def test_the_namespace_is_kept_when_anything_of_any_kind_in_it_is_not_ours(deploy_world):
    w = deploy_world
    seed_ours(w, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}, target=None)
    seed_ours(w, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "vllm", "namespace": NS}},
              target=None)
    theirs = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "cache-warmer"},
         "spec": {"replicas": 0, "selector": {"matchLabels": {"a": "b"}},
                  "template": {"metadata": {"labels": {"a": "b"}},
                               "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny-all"},
         "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "vllm-hpa"},
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "gptoss-l4"},
                  "minReplicas": 1, "maxReplicas": 2}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "vllm-pdb"},
         "spec": {"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly-bench"},
         "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {
             "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "vllm-route"},
         "spec": {"rules": [{"backendRefs": [{"name": "gptoss-l4", "port": 80}]}]}},
    ]
    for obj in theirs:
        obj["metadata"]["namespace"] = NS
        w.kube.seed(obj)
    report = w.tmp / "report.json"
    proc = w.inv("teardown", "--yes", f"--report={report}")
    assert proc.returncode == 0, proc.stdout
    assert "ok: namespace kept: it also holds objects that are not ours (" in proc.stdout
    step = next(s for s in json.loads(report.read_text())["steps"] if s["name"] == "Namespace objects")
    found = set(step["facts"]["foreign"])
    assert found == {f"{o['kind']} {NS}/{o['metadata']['name']}" for o in theirs}
    assert NS in names(w, "Namespace", None)
    for obj in theirs:
        assert w.kube.get(obj["kind"], NS, obj["metadata"]["name"]) is not None, obj["kind"]
    assert names(w, "ServiceAccount") == ["default"]  # ours went; theirs and the namespace stayed


# ---- images in Artifact Registry --------------------------------------------------------------------------

def test_purge_images_in_artifact_registry_deletes_only_our_tags_and_keeps_what_another_environment_mirrors(
        deploy_world, docker_hosts):
    """``registry.host`` unset: the images live in Artifact Registry. skopeo reads them at
    us-central1-docker.pkg.dev (the loopback registry behind a TLS front) and the real gcloud deletes
    through Artifact Registry's API (the emulator, on that same registry's storage)."""
    w = deploy_world
    front = docker_hosts(w.dst)
    w.gcp.add_repository(P, L, "gptoss", labels={"managed-by": "gptoss-gke", "gptoss-gke-env": "dev"})
    w.gcp.serve_docker_images(P, L, "gptoss", w.dst)
    openai, tpu = f"{P}/gptoss/vllm/vllm-openai", f"{P}/gptoss/vllm/vllm-tpu"
    publish(w.dst, openai, "v0.12.0", w.tmp)  # l4's mirror (ours)...
    publish(w.dst, openai, "latest", w.tmp)  # ...the same image, which environment prod mirrors as :latest
    publish(w.dst, tpu, "nightly", w.tmp, version="2")  # ironwood's mirror (ours alone)
    shared = w.dst.manifest_digest(openai, "v0.12.0")
    assert w.dst.manifest_digest(openai, "latest") == shared
    tpu_digest = w.dst.manifest_digest(tpu, "nightly")
    dev = {k: v for k, v in w.settings.items() if k != "registry"}  # Artifact Registry, not a registry host
    write_env(w.tmp, dev, {"targets": {"ironwood": {"image": f"{w.src.host}/vllm/vllm-tpu:nightly"}}})
    write_env(w.tmp, dev, {"targets": {"l4": {"image": f"{w.src.host}/vllm/vllm-openai:latest"}}}, name="prod")

    proc = w.inv("teardown", "--yes", "--purge-images", env=front.env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    dest = f"us-central1-docker.pkg.dev/{openai}"
    assert f"changed: delete tag {dest}:v0.12.0 (its image stays: also tagged latest)" in out
    assert f"changed: delete us-central1-docker.pkg.dev/{tpu}:nightly" in out
    assert "repository gptoss kept: environment prod uses it too" in out
    # Only our tags went: prod's tag still pulls the same image; ironwood's image is gone with its tag.
    assert w.dst.tags(openai) == {"latest": shared} and shared in w.dst.digests(openai)
    assert w.dst.tags(tpu) == {} and tpu_digest not in w.dst.digests(tpu)
    assert w.gcp.get_repository(P, L, "gptoss") is not None
    deletes = [r.path.split("/packages/")[1] for r in w.gcp.mutating_requests() if "/packages/" in r.path]
    assert deletes == ["vllm%2Fvllm-openai/tags/v0.12.0", "vllm%2Fvllm-tpu/tags/nightly",
                       f"vllm%2Fvllm-tpu/versions/{tpu_digest}"]
    assert front.connects and front.refused == []  # skopeo read through the front, and asked nothing else

    again = w.inv("teardown", "--yes", "--purge-images", env=front.env())
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"ok: {dest}:v0.12.0 does not exist" in again.stdout and "changed=0" in again.stdout


def test_a_missing_kubeconfig_is_blind_and_nothing_is_deleted(deploy_world):
    """The first blind case users meet: the kubeconfig named by the settings is not there (a new
    machine, a cleaned home). Teardown cannot see the load balancer or the disk inside the cluster, so
    it must not delete the cluster, its pools or anything else."""
    w = deploy_world
    seed_serving_objects(w)
    w.gcp.add_repository(P, L, "gptoss", labels={"managed-by": "gptoss-gke", "gptoss-gke-env": "dev"})
    w.kube.clear_log()
    w.gcp.clear_log()
    missing = w.tmp / "nowhere" / "kubeconfig"
    report = w.tmp / "report.json"
    proc = run_inv(["teardown", "--yes", "--delete-cluster", f"--report={report}"],
                   {**w.env, "GPTOSS_KUBE__KUBECONFIG": str(missing)})
    out = proc.stdout
    assert proc.returncode == 1, out
    assert f"failed: no kubeconfig at {missing}\n" in out  # the reason, as what it is...
    assert "fix: KUBECONFIG=" in out and " gcloud container clusters get-credentials gptoss --location=us-central1 " \
        "--project=test-project (it only writes the context)" in out  # the fix creates nothing
    assert "nothing deleted: teardown stops when anything it would delete" in out
    assert "Traceback" not in out + proc.stderr
    # No write reached either API: the cluster, both pools, the repository and the billed objects remain.
    assert w.gcp.mutating_requests() == [] and w.kube.writes() == []
    assert w.gcp.get_cluster(P, L, C) is not None
    assert w.gcp.get_nodepool(P, L, C, "l4-gptoss") is not None
    assert w.gcp.get_nodepool(P, L, C, "ironwood-gptoss") is not None
    assert w.gcp.get_repository(P, L, "gptoss") is not None
    assert w.kube.get("Service", NS, "gptoss-l4-public") is not None
    assert w.kube.get("PersistentVolumeClaim", NS, "model-cache-gptoss-l4-0") is not None
    assert not missing.exists()  # nor did it write a kubeconfig behind the user's back
    doc = json.loads(report.read_text())
    assert doc["recap"]["changed"] == 0 and doc["recap"]["failed"] >= 1 and doc["deleted"] == []
