"""`inv teardown`: scoped to what carries our labels, listed and confirmed first, idempotent."""

from __future__ import annotations

from tests.deploy_world import NS, deploy_world  # noqa: F401  (fixture)
from tests.emulators.kube import kube_emulator  # noqa: F401  (fixture)
from tests.gcs import fake_gcs, gcs_front  # noqa: F401  (fixtures)
from tests.registry import registries  # noqa: F401  (fixture)

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

    proc = w.inv("teardown", "--yes", "--purge-model")
    assert proc.returncode == 0, proc.stdout
    assert "left alone (not ours): Service gptoss/gptoss-l4-headless" in proc.stdout
    assert names(w, "Service") == ["gptoss-l4-headless"]  # the look-alike survived
    for kind in ("StatefulSet", "Secret", "ServiceAccount", "PersistentVolumeClaim", "Pod"):
        assert [n for n in names(w, kind) if n != "default"] == [], kind
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
    assert "was not created by this tool" in proc.stdout
    assert w.gcp.get_cluster(P, L, C) is not None


def test_purge_model_deletes_only_our_staged_objects_and_our_grant(deploy_world):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from gptoss_gke.models import MANIFEST_NAME

    w = deploy_world
    client = storage.Client(project=P, credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": w.gcs.url})
    bucket = client.create_bucket("test-project-models")
    rev = "b" * 40
    ours = f"models/openai/gpt-oss-120b/{rev}/model-00000-of-00014.safetensors"
    blob = bucket.blob(ours)
    blob.metadata = {"hf-revision": rev, "sha256": "0" * 64}
    blob.upload_from_string(b"weights")
    bucket.blob(f"models/openai/gpt-oss-120b/{rev}/{MANIFEST_NAME}").upload_from_string(b"{}")
    bucket.blob("datasets/theirs.parquet").upload_from_string(b"not ours")
    bucket.blob("models/openai/gpt-oss-120b/notes.txt").upload_from_string(b"someone's notes")
    number = w.gcp.state.projects[P]["projectNumber"]
    member = (f"principal://iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/"
              f"{P}.svc.id.goog/subject/ns/{NS}/sa/vllm")
    policy = bucket.get_iam_policy(requested_policy_version=3)
    policy.bindings.append({"role": "roles/storage.objectViewer", "members": {member, "user:alice@example.com"}})
    bucket.set_iam_policy(policy)

    proc = w.inv("teardown", "--yes", "--purge-model")
    assert proc.returncode == 0, proc.stdout
    left = sorted(b.name for b in client.list_blobs("test-project-models"))
    assert left == ["datasets/theirs.parquet", "models/openai/gpt-oss-120b/notes.txt"]
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
