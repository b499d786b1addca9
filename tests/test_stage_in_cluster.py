"""In-cluster staging: the transfer as an Indexed Job whose pods really run (tests/emulators/kube/jobs.py runs
each pod as a local process from the ConfigMap'd checkout) against the loopback hub and fake-gcs-server.

The world: a gpt-oss-shaped repo on the hub emulator (3 shards of 20 MiB, 8 MiB chunks), the bucket behind
GcsFront (bucket IAM with conditions), the Kubernetes API emulator. Steps run in-process through the real
runner, as `inv stage-model --in-cluster` runs them; one test drives `inv deploy` end to end.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import signal
import threading
import time
from dataclasses import dataclass

import pytest

from gptoss_gke.config import load_settings
from gptoss_gke.core import Runner
from gptoss_gke.core.retry import RetryPolicy
from gptoss_gke.staging.incluster import REQUIREMENTS_LOCK, STAGER_ACCOUNT, job_name, stage_in_cluster_steps
from gptoss_gke.staging.state import MANIFEST_NAME
from gptoss_gke.staging.steps import model_folder
from tests.conftest import in_process
from tests.emulators.hfhub import make_gptoss_like_repo
from tests.envfiles import BASE, kube, staging, write_env
from tests.gcs import PROJECT_NUMBER
from tests.registry import publish

REPO_ID = "openai/gpt-oss-120b"
MiB = 1024 * 1024
LOADS = {"chat_template.jinja", "config.json", "generation_config.json", "model-00000-of-00002.safetensors",
         "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
         "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"}


TOOLS_PATH = "library/python"  # the stager image's path, as docker.io names python:3.12-slim
AR_TOKEN = "gptoss-test-token-" + secrets.token_hex(12)  # what gcloud would print: the registry demands it


@dataclass
class ToolsImage:
    """The stager image on a loopback "Docker Hub" (src), and a loopback registry standing in for Artifact
    Registry (dst, which wants ``oauth2accesstoken:<token>`` as Artifact Registry does)."""

    src: object
    dst: object
    image: object

    @property
    def dest_name(self) -> str:
        return f"test-project/gptoss/{TOOLS_PATH}"

    def settings(self) -> dict:
        return {"registry": {"host": self.dst.host, "tls_verify": False},
                "models": {"stager_image": f"{self.src.host}/{TOOLS_PATH}:3.12-slim"}}


@pytest.fixture
def tools(tmp_path, registries):
    src = registries("source")
    dst = registries("dest", credentials=("oauth2accesstoken", AR_TOKEN))
    image = publish(src, TOOLS_PATH, "3.12-slim", tmp_path, platforms=("linux/amd64", "linux/arm64"))
    return ToolsImage(src, dst, image)


def _settings(tmp_path, hub, emulator, sha, tools, **environ):
    folder = write_env(tmp_path, BASE, staging(sha, workers=2), kube(emulator, poll_interval_s=0.05),
                       {"models": {"stage_in": "cluster", "stage_pods": 3},
                        "retry": {"attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05}}, tools.settings())
    return load_settings(environ={"GPTOSS_ENV_DIR": folder, "HF_ENDPOINT": hub.url, **environ})


def _run(settings):
    """The in-cluster staging steps through the real runner (as `inv stage-model --in-cluster` minus the gcloud
    gates and the repository step: a loopback registry is the repository), with the project number the Project
    step would have observed and the token gcloud would have printed."""
    ctx, out = in_process(settings, RetryPolicy(3, 0.01, 0.05))
    if settings.hf_token:
        ctx.redact.add(settings.hf_token.get_secret_value())
    ctx.redact.add(AR_TOKEN)
    ctx.fact("gcp.project", lambda: {"projectNumber": PROJECT_NUMBER, "lifecycleState": "ACTIVE"})
    ctx.fact("gcp.access_token", lambda: AR_TOKEN)
    results = Runner(ctx).run(stage_in_cluster_steps(settings, ["ironwood"], with_repository=False))
    return results, out.getvalue()


def _objects(gcs, prefix=""):
    client = gcs.client()
    return {b.name: b for b in client.list_blobs("test-models", prefix=prefix)} if client.lookup_bucket(
        "test-models") else {}


def test_first_run_stages_with_three_pods_then_a_rerun_creates_no_job(tmp_path, hf_hub, gcs_front, fake_gcs,
                                                                      kube_emulator, tools):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=20 * MiB, n_shards=3, copy_size=MiB)
    s = _settings(tmp_path, hf_hub, kube_emulator, sha, tools)
    results, out = _run(s)
    assert [r.status for r in results][-1] == "changed", out
    stage = results[-1]
    name = job_name(s.target("ironwood"), sha)
    assert stage.facts["job"] == name and stage.facts["pods"] == 3
    folder = model_folder(s, s.target("ironwood"), sha)
    objs = _objects(fake_gcs, folder)
    assert set(objs) == {folder + p for p in LOADS} | {folder + MANIFEST_NAME}, sorted(objs)
    for p in LOADS:
        assert objs[folder + p].download_as_bytes() == hf_hub.content(REPO_ID, p, sha)
    assert not _objects(fake_gcs, folder.rstrip("/") + ".partial/")  # every record and claim swept
    manifest = json.loads(objs[folder + MANIFEST_NAME].download_as_bytes())
    assert {f["path"] for f in manifest["files"]} == LOADS
    # Three pods, one per index, each moved its share; one progress line summed them.
    job = kube_emulator.get("Job", "gptoss", name)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 3
    assert job["status"]["completedIndexes"] == "0-2"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0  # cleaned up after success
    pods = kube_emulator.objects("Pod", "gptoss", f"job-name={name}")
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods) == \
        ["0", "1", "2"]
    spec = pods[0]["spec"]
    # The pods run the stager image from our repository, pinned by the source's amd64 digest, copied there first.
    amd64 = tools.image.platforms["linux/amd64"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == f"{tools.dst.host}/{tools.dest_name}@{amd64}"
    assert tools.dst.manifest_digest(tools.dest_name, "3.12-slim") == amd64
    assert all(tools.dst.has_blob(tools.dest_name, b) for b in tools.image.blobs("linux/amd64"))
    assert spec["serviceAccountName"] == STAGER_ACCOUNT
    # What the pods install when their image lacks the modules: the checked-in lock, as it is.
    code = kube_emulator.get("ConfigMap", "gptoss", f"{name}-code")
    assert code["data"]["requirements.txt"] == REQUIREMENTS_LOCK.read_text()
    assert not spec.get("tolerations") and "nvidia.com/gpu" not in json.dumps(spec)  # never on an accelerator
    assert "staged 62.9 MB of 62.9 MB" in out, out
    # The pods ran the checkout that was sent: the digest check passed and the report line says so.
    logs = "".join(kube_emulator.kubelet.pod_logs("gptoss", p["metadata"]["name"], {}) for p in pods)
    assert "gptoss-gke-report" in logs and "share 1 of 3" in logs

    # The staging account's grant: objectUser, only under the model's prefix.
    member = (f"principal://iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/"
              f"test-project.svc.id.goog/subject/ns/gptoss/sa/{STAGER_ACCOUNT}")
    grants = [b for b in gcs_front.policy("test-models")["bindings"] if member in b["members"]]
    assert [b["role"] for b in grants] == ["roles/storage.objectUser"]
    assert grants[0]["condition"]["expression"].startswith(
        f'resource.name.startsWith("projects/_/buckets/test-models/objects/models/{REPO_ID}/")')

    writes = len(kube_emulator.writes())
    served = hf_hub.bytes_served
    registry_requests = len(tools.dst.requests())
    results, out = _run(s)
    assert all(r.status == "ok" for r in results), out
    assert "(manifest verified)" in out and hf_hub.bytes_served == served
    assert f"already at {amd64} (source unchanged)" in out  # the image: one manifest read, nothing copied
    assert {r.method for r in tools.dst.requests()[registry_requests:]} <= {"GET", "HEAD"}
    assert not [w for w in kube_emulator.writes()[writes:] if "jobs" in w.path]  # no Job created

    # teardown --purge-model: the staging account's grant goes with the weights (another environment
    # staging the same model as the same principal would keep it).
    from gptoss_gke.staging.steps import purge_model_steps

    ctx, _ = in_process(s, RetryPolicy(3, 0.01, 0.05))
    ctx.fact("gcp.project", lambda: {"projectNumber": PROJECT_NUMBER, "lifecycleState": "ACTIVE"})
    results = Runner(ctx).run(purge_model_steps(s, ["ironwood"], {"prod": s}))
    assert results[-1].status == "ok" and "keeps roles/storage.objectUser" in results[-1].reason
    results = Runner(ctx).run(purge_model_steps(s, ["ironwood"], {}))
    assert results[-1].status == "changed"
    assert not [b for b in gcs_front.policy("test-models")["bindings"] if member in b["members"]]


def test_a_pod_killed_mid_transfer_is_retried_and_resumes(tmp_path, hf_hub, gcs_front, fake_gcs, kube_emulator,
                                                          tools):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=20 * MiB, n_shards=3, copy_size=MiB)
    s = _settings(tmp_path, hf_hub, kube_emulator, sha, tools)
    name = job_name(s.target("ironwood"), sha)
    folder = model_folder(s, s.target("ironwood"), sha)
    hf_hub.slow(8 * MiB)
    killed = []

    def killer():  # once index 0 has a part recorded, its node goes away
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            records = [n for n in _objects(fake_gcs, folder.rstrip("/") + ".partial/") if n[-6:].isdigit()]
            if records and kube_emulator.controllers.jobs.kill(name, 0):
                hf_hub.slow(None)
                killed.append(len(records))
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        results, out = _run(s)
    finally:
        t.join(timeout=70)
        hf_hub.slow(None)
    assert killed, out
    assert results[-1].status == "changed", out
    pods = kube_emulator.objects("Pod", "gptoss", f"job-name={name}")
    index0 = [p for p in pods if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0"]
    assert sorted(p["status"]["phase"] for p in index0) == ["Failed", "Succeeded"]  # retried by the Job
    assert index0[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] in (137, 0)
    objs = _objects(fake_gcs, folder)
    for p in LOADS:
        data = objs[folder + p].download_as_bytes()
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(hf_hub.content(REPO_ID, p, sha)).hexdigest()
    assert folder + MANIFEST_NAME in objs
    assert gcs_front.uploads == {}  # the killed pod's upload was continued (or aborted), none left billed
    assert "retried 1" in out


def test_a_second_run_attaches_to_the_running_job_and_the_token_reaches_pods_only_by_secret(
        tmp_path, hf_hub, gcs_front, fake_gcs, kube_emulator, tools):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=20 * MiB, n_shards=3, copy_size=MiB, gated="manual")
    s = _settings(tmp_path, hf_hub, kube_emulator, sha, tools, HF_TOKEN=hf_hub.token)
    name = job_name(s.target("ironwood"), sha)
    hf_hub.slow(12 * MiB)  # long enough for a second run to find the Job running
    first: dict = {}
    t = threading.Thread(target=lambda: first.update(zip(("results", "out"), _run(s))), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while kube_emulator.get("Job", "gptoss", name) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        results, out = _run(s)
    finally:
        t.join(timeout=120)
        hf_hub.slow(None)
    assert results[-1].status == "changed" and f"attach to Job {name}" in out, out
    assert results[-1].facts.get("attached") is True
    assert first["results"][-1].status == "changed", first["out"]
    creates = [w for w in kube_emulator.writes() if w.path.endswith("/jobs") or f"/jobs/{name}" in w.path
               and w.method in ("POST", "PATCH")]
    assert len(creates) == 1, [(w.method, w.path) for w in creates]  # one Job, never two
    folder = model_folder(s, s.target("ironwood"), sha)
    assert folder + MANIFEST_NAME in _objects(fake_gcs, folder)
    # The token: in the Secret, and nowhere else (not the Job, its pods' args, the ConfigMap, the output).
    secret = kube_emulator.get("Secret", "gptoss", f"{name}-hf-token")
    assert secret and secret["data"]["HF_TOKEN"]
    # The token and the code belong to the Job: Kubernetes deletes them with it.
    job_uid = kube_emulator.get("Job", "gptoss", name)["metadata"]["uid"]
    for kind, obj_name in (("Secret", f"{name}-hf-token"), ("ConfigMap", f"{name}-code")):
        refs = kube_emulator.get(kind, "gptoss", obj_name)["metadata"]["ownerReferences"]
        assert [(r["kind"], r["uid"]) for r in refs] == [("Job", job_uid)]
    kube_emulator.remove("Job", "gptoss", name)
    kube_emulator.tick(2)
    assert kube_emulator.get("Secret", "gptoss", f"{name}-hf-token") is None
    assert kube_emulator.get("ConfigMap", "gptoss", f"{name}-code") is None
    for kind in ("Job", "ConfigMap", "Pod"):
        assert hf_hub.token not in json.dumps(kube_emulator.objects(kind, "gptoss"))
    assert hf_hub.token not in out + first["out"]
    assert all(r.had_token for r in hf_hub.find_requests("GET", r"/resolve/"))


def test_a_refused_token_fails_with_the_fix_before_any_job(tmp_path, hf_hub, gcs_front, fake_gcs, kube_emulator,
                                                           tools):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=MiB, n_shards=2, copy_size=MiB, gated="manual")
    bogus = "hf_" + "Q" * 34
    s = _settings(tmp_path, hf_hub, kube_emulator, sha, tools, HF_TOKEN=bogus)
    results, out = _run(s)
    stage = results[-1]
    assert stage.status == "failed" and "refused the HF token" in stage.error and stage.fix, out
    assert not kube_emulator.objects("Job", "gptoss") and bogus not in out
    assert hf_hub.bytes_served == 0


def _claim(fake_gcs, folder):
    """The folder's claim (generation, document), or None."""
    blob = fake_gcs.client().bucket("test-models").get_blob(folder.rstrip("/") + ".partial/.in-progress")
    return (blob.generation, json.loads(blob.download_as_bytes())) if blob is not None else None


def test_a_local_run_is_refused_while_the_job_writes_the_folder_and_is_a_no_op_after(
        tmp_path, hf_hub, gcs_front, fake_gcs, kube_emulator, tools, gcp_emulator):
    from tests.conftest import run_inv
    from tests.emulators.gcp import gcloud_env

    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=20 * MiB, n_shards=3, copy_size=MiB)
    s = _settings(tmp_path, hf_hub, kube_emulator, sha, tools)
    name = job_name(s.target("ironwood"), sha)
    folder = model_folder(s, s.target("ironwood"), sha)
    gcp_emulator.add_project("test-project", PROJECT_NUMBER)
    env = {**gcloud_env(gcp_emulator, tmp_path, "test-project"), "GPTOSS_ENV_DIR": str(tmp_path / "env"),
           "GPTOSS_MODELS__STAGE_IN": "local", "HF_ENDPOINT": hf_hub.url, "STORAGE_EMULATOR_HOST": gcs_front.url,
           "NO_COLOR": "1"}
    hf_hub.slow(MiB)
    first: dict = {}
    paused: list[int] = []
    t = threading.Thread(target=lambda: first.update(zip(("results", "out"), _run(s))), daemon=True)
    t.start()
    try:
        # The Job's pods are paused mid-transfer (SIGSTOP: alive, running, writing nothing) while the local runs
        # look, so the Job is running for as long as they take, however loaded the machine.
        deadline = time.monotonic() + 60
        while len(paused) < 3 and time.monotonic() < deadline:
            paused += [i for i in range(3) if i not in paused and kube_emulator.controllers.jobs.kill(name, i,
                                                                                                     signal.SIGSTOP)]
            time.sleep(0.02)
        assert len(paused) == 3, paused
        generation, doc = _claim(fake_gcs, folder)
        # The orchestrator holds the folder on the Job's behalf: the claim names the Job and its cluster.
        assert doc["job"]["namespace"] == "gptoss" and doc["job"]["name"] == name, doc
        assert doc["job"]["server"] == f"127.0.0.1:{kube_emulator.port}"

        report = tmp_path / "busy.json"
        busy = run_inv(["stage-model", "--target=ironwood", f"--report={report}"], env)
        out = busy.stdout + busy.stderr
        assert busy.returncode == 1, out
        assert (f"a staging Job is writing gs://test-models/{folder}: Job gptoss/{name} on cluster "
                f"test-project/us-central1/gptoss (running)") in out, out
        assert "`inv stage-model --in-cluster` attaches to it" in out and f"kubectl -n gptoss delete job {name}" in out
        steps = json.loads(report.read_text())["steps"]
        assert steps[-1]["status"] == "failed" and not any(st["status"] == "changed" for st in steps)
        assert _claim(fake_gcs, folder) == (generation, doc)  # not taken, not touched

        # Where the Job cannot be read (a context that is not in the kubeconfig), the folder is never "free".
        blind = run_inv(["stage-model", "--target=ironwood"], {**env, "GPTOSS_KUBE__CONTEXT": "elsewhere"})
        out = blind.stdout + blind.stderr
        assert blind.returncode == 1, out
        assert f"is claimed by the staging Job gptoss/{name}" in out and "whether it still runs cannot be read" in out
        assert "get-credentials" in out and "clear its claim: gcloud storage rm" in out
        assert _claim(fake_gcs, folder) == (generation, doc)
        assert kube_emulator.get("Job", "gptoss", name)["status"].get("active")  # still writing all along
    finally:
        hf_hub.slow(None)
        for i in paused:
            kube_emulator.controllers.jobs.kill(name, i, signal.SIGCONT)
        t.join(timeout=120)
    assert first["results"][-1].status == "changed", first["out"]
    assert _claim(fake_gcs, folder) is None  # followed to its end: released

    after = run_inv(["stage-model", "--target=ironwood"], env)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "(manifest verified)" in after.stdout and "changed=0" in after.stdout, after.stdout


def test_the_job_is_not_started_while_a_local_run_holds_the_folder(tmp_path, hf_hub, gcs_front, fake_gcs,
                                                                   kube_emulator, tools):
    import datetime as dt

    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=MiB, n_shards=2, copy_size=MiB)
    s = _settings(tmp_path, hf_hub, kube_emulator, sha, tools)
    folder = model_folder(s, s.target("ironwood"), sha)
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    bucket = fake_gcs.client().create_bucket("test-models")
    bucket.blob(folder.rstrip("/") + ".partial/.in-progress").upload_from_string(
        json.dumps({"host": "laptop-3", "pid": 4242, "started": now, "heartbeat": now}))
    claim = _claim(fake_gcs, folder)
    results, out = _run(s)
    assert results[-1].status == "failed", out
    assert results[-1].error.startswith(f"another stage-model run is writing gs://test-models/{folder}")
    assert "on laptop-3 (pid 4242)" in results[-1].error
    assert not kube_emulator.objects("Job", "gptoss") and _claim(fake_gcs, folder) == claim
    assert hf_hub.bytes_served_for(REPO_ID, "model-00000-of-00002.safetensors") == 0


def test_a_job_claim_is_live_while_its_job_runs_however_old_and_stale_once_it_ended():
    import datetime as dt

    from gptoss_gke.staging.claim import MARKER_STALE_S, RunMarker

    long_ago = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=10 * MARKER_STALE_S)).isoformat()
    just_now = dt.datetime.now(dt.timezone.utc).isoformat()
    job = {"namespace": "gptoss", "name": "stage-ironwood-abc", "cluster": "p/us-central1/gptoss"}

    def marker(started, state):
        m = RunMarker("b", "models/x/abc.partial/.in-progress", 7, {"host": "h", "started": started, "job": job})
        m.job_state = state
        return m

    # The inv that followed it was stopped hours ago (no heartbeat since): the Job still writes, so it holds.
    assert marker(long_ago, "running").stale_because() is None
    assert marker(long_ago, None).stale_because() is None  # not read: nobody may take it
    assert marker(just_now, "gone").stale_because() is None  # written just before its Job is created
    assert "has complete" in marker(long_ago, "complete").stale_because()
    assert "has failed" in marker(just_now, "failed").stale_because()
    assert "is gone" in marker(long_ago, "gone").stale_because()


def test_pod_failures_are_explained_with_the_fix():
    from gptoss_gke.remote.entry import REPORT_MARK
    from gptoss_gke.staging.incluster import explain_failure

    report = REPORT_MARK + json.dumps({"steps": [{"status": "failed", "error": "the hub refused the HF token",
                                                   "fix": "set HF_TOKEN to a token with access"}]})
    assert explain_failure(["TASK [models : stage ...]", report]) == ("the hub refused the HF token",
                                                                    "set HF_TOKEN to a token with access")
    problem, fix = explain_failure(["requests.exceptions.ConnectionError: HTTPSConnectionPool(host='huggingface.co')"
                                    ": Temporary failure in name resolution"])
    assert "cannot reach the Hugging Face Hub" in problem and "Cloud NAT" in fix
    problem, fix = explain_failure(["403 POST https://storage.googleapis.com/upload/storage/v1/b/x/o: "
                                    "gptoss-stager does not have storage.objects.create access"])
    assert "may not write to the bucket" in problem and "Workload Identity" in fix
    assert "quota" in explain_failure(["Quota exceeded for quota metric 'Requests'"])[0]


def test_inv_deploy_ironwood_stages_in_the_cluster_end_to_end(deploy_world, hf_hub):
    from tests.deploy_world import NS
    from tests.envfiles import merged, write_env
    from tests.registry import publish

    w = deploy_world
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=4 * MiB, n_shards=2, copy_size=MiB)
    publish(w.src, "vllm/vllm-tpu", "nightly", w.tmp)
    python = publish(w.src, TOOLS_PATH, "3.12-slim", w.tmp)  # the stager image (single-platform)
    write_env(w.tmp, merged(w.settings, {
        "models": {"stage_in": "cluster", "stage_pods": 2, "chunk_mib": 8, "workers": 2,
                   "stager_image": f"{w.src.host}/{TOOLS_PATH}:3.12-slim"},
        "targets": {"ironwood": {"image": f"{w.src.host}/vllm/vllm-tpu:nightly", "model_revision": sha}}}))
    w.kube.script_pods("gptoss-ironwood", "ready", ticks=2)
    w.gcs.project_number = w.gcp.state.projects["test-project"]["projectNumber"]  # the bucket is this project's
    proc = w.inv("deploy", "--target=ironwood", "--skip-smoke", env={"HF_ENDPOINT": hf_hub.url})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    name = f"stage-ironwood-{sha[:12]}"
    assert f"changed: stage in the cluster: 9 of 9 files" in out, out
    assert "pods running 0, finished 2" in out
    assert out.index("stage openai/gpt-oss-120b (ironwood) in the cluster") < out.index("TASK [kubernetes : Deployment")
    job = w.kube.get("Job", NS, name)
    assert job["status"]["completedIndexes"] == "0-1"
    # Its image: the stager image mirrored into the repository, pinned by the source's digest.
    dest = f"test-project/gptoss/{TOOLS_PATH}"
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == f"{w.dst.host}/{dest}@{python.digest}"
    assert w.dst.manifest_digest(dest, "3.12-slim") == python.digest
    assert out.index("TASK [images : tools image") < out.index("stage openai/gpt-oss-120b (ironwood) in the cluster")
    bucket = "test-project-models"
    folder = f"models/{REPO_ID}/{sha}/"
    names = {b.name for b in w.gcs.backend.client().list_blobs(bucket, prefix=folder)}
    assert folder + MANIFEST_NAME in names and len(names) == 10

    again = w.inv("deploy", "--target=ironwood", "--skip-smoke", env={"HF_ENDPOINT": hf_hub.url})
    assert again.returncode == 0 and "(manifest verified)" in again.stdout, again.stdout


# ---------------------------------------------------------------------------------------------
# The pods' requirements: hash-locked, checked against what the code needs, installed only as locked


def _lock() -> dict[str, tuple[str, list[str]]]:
    """The lock as {canonical name: (version, sha256 hashes)}."""
    from packaging.utils import canonicalize_name

    text = REQUIREMENTS_LOCK.read_text().replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        pin, *options = line.split()
        name, _, ver = pin.partition("==")
        assert ver and ";" not in pin, f"not an exact pin: {line}"
        out[canonicalize_name(name)] = (ver, [o.split(":", 1)[1] for o in options if o.startswith("--hash=sha256:")])
    return out


def test_the_lock_covers_the_staging_code_and_satisfies_pyproject():
    from importlib.metadata import requires

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    from gptoss_gke.remote.steps import STAGING_MODULES

    lock = _lock()
    assert all(len(h) >= 1 and all(len(x) == 64 for x in h) for _, h in lock.values()), "a pin without its hashes"
    # What the staging distributions need, transitively, as their installed metadata declares it, on the pods'
    # Python (3.12) on linux, x86_64 and arm64.
    pods = [{**default_environment(), "python_version": "3.12", "python_full_version": "3.12.0",
             "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": m,
             "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
            for m in ("x86_64", "aarch64")]
    needed, todo = set(), [canonicalize_name(d) for d in STAGING_MODULES.values()]
    while todo:
        dist = todo.pop()
        if dist in needed:
            continue
        needed.add(dist)
        for spec in requires(dist) or []:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate(env) for env in pods):
                todo.append(canonicalize_name(req.name))
    assert needed - set(lock) == set(), "regenerate the lock: scripts/lock_stager_requirements.py"
    # pyproject.toml's constraints on the staging distributions (as the installed project declares them: the
    # suite reinstalls it) hold for the locked versions: a constraint moved without the lock fails here, so the
    # lock cannot silently rot.
    declared = [spec for spec in requires("gptoss-gke") if "extra ==" not in spec]
    assert len(declared) >= len(set(STAGING_MODULES.values()))
    for spec in declared:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name in lock:  # (the staging distributions, and what they reach that we constrain too)
            assert req.specifier.contains(Version(lock[name][0])), (
                f"pyproject.toml wants {spec}, the lock pins {lock[name][0]}: "
                f"regenerate it (scripts/lock_stager_requirements.py)")


def _wheel(name: str, version: str, main: str) -> bytes:
    """A tiny pure-Python wheel whose ``python -m <name>`` prints ``main``."""
    import base64
    import io
    import zipfile

    files = {f"{name}/__init__.py": b"", f"{name}/__main__.py": f"print({main!r})\n".encode(),
             f"{name}-{version}.dist-info/METADATA":
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = "".join(f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},"
                     f"{len(d)}\n" for p, d in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p, d in {**files, f"{name}-{version}.dist-info/RECORD": record.encode()}.items():
            z.writestr(p, d)
    return buf.getvalue()


def test_the_bootstrap_installs_only_wheels_whose_hash_the_lock_names(tmp_path):
    """The pod's own program (BOOTSTRAP) against a loopback simple index serving one tiny wheel: the locked hash
    installs it and runs it; any other hash is refused before anything is installed or run."""
    import functools
    import http.server
    import subprocess
    import sys

    from gptoss_gke.k8s.podcode import BOOTSTRAP
    from gptoss_gke.remote.shipping import code_bundle

    wheel = _wheel("tinypkg", "1.0", "tinypkg ran")
    index = tmp_path / "index"
    (index / "simple" / "tinypkg").mkdir(parents=True)
    (index / "tinypkg-1.0-py3-none-any.whl").write_bytes(wheel)
    (index / "simple" / "tinypkg" / "index.html").write_text(
        '<a href="../../tinypkg-1.0-py3-none-any.whl">tinypkg-1.0-py3-none-any.whl</a>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(index))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bundle = code_bundle()
    try:
        def boot(name: str, digest: str):
            code, work = tmp_path / name / "code", tmp_path / name / "work"
            code.mkdir(parents=True)
            work.mkdir()
            (code / "code.tar.gz").write_bytes(bundle.data)
            (code / "requirements.txt").write_text(f"tinypkg==1.0 \\\n    --hash=sha256:{digest}\n")
            env = {"PATH": "/usr/bin:/bin", "GPTOSS_CODE_DIR": str(code), "GPTOSS_WORK_DIR": str(work),
                   "GPTOSS_CODE_SHA256": hashlib.sha256(bundle.data).hexdigest(), "GPTOSS_MODULES": "tinypkg",
                   "GPTOSS_MAIN": "tinypkg", "HOME": str(work), "PIP_CONFIG_FILE": "/dev/null",
                   "PIP_INDEX_URL": f"http://127.0.0.1:{server.server_address[1]}/simple/"}
            proc = subprocess.run([sys.executable, "-c", BOOTSTRAP], env=env, capture_output=True, text=True,
                                  timeout=120)
            return proc, work

        ok, work = boot("locked", hashlib.sha256(wheel).hexdigest())
        assert ok.returncode == 0 and "tinypkg ran" in ok.stdout, ok.stdout + ok.stderr
        assert (work / "deps" / "tinypkg" / "__main__.py").is_file()

        bad, work = boot("tampered", hashlib.sha256(b"another file").hexdigest())
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "DO NOT MATCH THE HASHES" in bad.stdout + bad.stderr
        assert "tinypkg ran" not in bad.stdout and not (work / "deps" / "tinypkg").exists()
    finally:
        server.shutdown()
        server.server_close()
