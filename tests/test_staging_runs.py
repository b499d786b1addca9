"""One staging run per folder: an interrupted `stage-model --on HOST` stops the transfer on that host too,
and a second run on a folder another run is writing is refused (a stale claim is taken over)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import time
import uuid
from pathlib import Path

from tests.conftest import run_inv
from tests.emulators.gcp import gcloud_env
from tests.emulators.hfhub import make_gptoss_like_repo
from tests import envfiles
from tests.gcs import PROJECT_NUMBER
from tests.test_files_written import files_holding
from tests.test_interrupts import start_inv
from tests.test_remote import _workdirs

MiB = 1024 * 1024
REPO_ID = "openai/gpt-oss-120b"
BUCKET = envfiles.MODELS_BUCKET


def staging_env(tmp_path, hub, gcs, gcp, revision: str, server=None) -> dict:
    gcp.add_project("test-project", PROJECT_NUMBER)  # the number the bucket reports as its owner
    env = gcloud_env(gcp, tmp_path, "test-project")
    env.update(GPTOSS_ENV_DIR=envfiles.staging_env(tmp_path, revision, server=server), HF_ENDPOINT=hub.url,
               HF_TOKEN=hub.token, STORAGE_EMULATOR_HOST=gcs.url, HF_HUB_DISABLE_TELEMETRY="1", NO_COLOR="1")
    return env


def names(fake_gcs) -> set[str]:
    client = fake_gcs.client()
    return {b.name for b in client.list_blobs(BUCKET)} if client.lookup_bucket(BUCKET) else set()


def remote_runs(server) -> list[int]:
    """Processes under this test's sshd that run the shipped staging code."""
    children: dict[int, list[int]] = {}
    cmdlines: dict[int, bytes] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdlines[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if stat[0] != "Z":
            children.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = [], [server.proc.pid]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            if b"gptoss_gke.remote.entry" in cmdlines.get(child, b""):
                found.append(child)
    return found


def test_interrupting_stage_model_on_a_host_stops_the_transfer_there(sshd_server, tmp_path, hf_hub, gcs_front,
                                                                     fake_gcs, gcp_emulator):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=16 * MiB, n_shards=2, copy_size=MiB)
    access_token = f"ya29.interrupted-{uuid.uuid4().hex}"  # ours alone: found only where this run put it
    (tmp_path / "gcloud-token").write_text(access_token + "\n")
    env = staging_env(tmp_path, hf_hub, gcs_front, gcp_emulator, sha, sshd_server)
    local_tmp = tmp_path / "run-tmp"  # the local run's TMPDIR
    local_tmp.mkdir()
    env["TMPDIR"] = str(local_tmp)
    remote_before = _workdirs(sshd_server)
    marker = f"models/{REPO_ID}/{sha}.partial/.in-progress"
    report = tmp_path / "report.json"
    hf_hub.slow(4 * MiB)  # per response: the transfer takes long enough to be interrupted mid-way
    proc = start_inv(["stage-model", "--target=ironwood", "--on", f"--report={report}"], env)
    try:
        deadline = time.monotonic() + 120
        while not (marker in names(fake_gcs) and hf_hub.bytes_served > 0 and remote_runs(sshd_server)):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the remote transfer did not start"
            time.sleep(0.1)
        assert _workdirs(sshd_server) - remote_before, "precondition: the run has its folder on the host"
        os.kill(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
        deadline = time.monotonic() + 30  # generous: the remote process exits right after its report
        while remote_runs(sshd_server) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = remote_runs(sshd_server)
    finally:
        hf_hub.slow(None)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in remote_runs(sshd_server):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, out
    assert left == [], "the transfer kept running on the host"
    staged = names(fake_gcs)
    assert marker not in staged and f"models/{REPO_ID}/{sha}/.gptoss-gke-manifest.json" not in staged
    served = hf_hub.bytes_served
    assert 0 < served < 2 * 16 * MiB
    doc = json.loads(report.read_text())
    assert doc["outcome"] == "interrupted" and doc["interrupted"]["signal"] == "SIGINT"
    [stage] = [s for s in doc["steps"] if s["name"] == f"stage {REPO_ID} (ironwood)"]
    assert stage["interrupted"] and stage["facts"]["ran_on"].endswith(f"@127.0.0.1:{sshd_server.port}")
    assert "RECAP INTERRUPTED by SIGINT" in out and hf_hub.token not in out
    # Nothing holding a secret outlives the interrupted run, on the host or here: the host's private
    # folders (the shipped code, the env files of remote commands) are gone, and no file holds a token.
    assert _workdirs(sshd_server) == remote_before
    assert files_holding(sshd_server.tmp, hf_hub.token, access_token) == []
    assert files_holding(local_tmp, hf_hub.token, access_token) == []
    assert access_token not in out


def _seed_marker(fake_gcs, sha: str, **doc) -> str:
    client = fake_gcs.client()
    bucket = client.lookup_bucket(BUCKET) or client.create_bucket(BUCKET)
    name = f"models/{REPO_ID}/{sha}.partial/.in-progress"
    bucket.blob(name).upload_from_string(json.dumps(doc).encode(), content_type="application/json")
    return name


def test_a_folder_another_run_is_writing_is_refused_and_a_stale_claim_taken_over(tmp_path, hf_hub, gcs_front,
                                                                                 fake_gcs, gcp_emulator):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=MiB, n_shards=2, copy_size=MiB)
    env = staging_env(tmp_path, hf_hub, gcs_front, gcp_emulator, sha)
    now = dt.datetime.now(dt.timezone.utc)
    marker = _seed_marker(fake_gcs, sha, host="staging-vm-7", pid=4242,
                          started=(now - dt.timedelta(minutes=3)).isoformat(),
                          heartbeat=(now - dt.timedelta(seconds=20)).isoformat())
    before = names(fake_gcs)

    busy = run_inv(["stage-model", "--target=ironwood"], env)
    assert busy.returncode == 1, busy.stdout + busy.stderr
    out = busy.stdout
    assert f"another stage-model run is writing gs://{BUCKET}/models/{REPO_ID}/{sha}/: started 3m" in out
    # 20 s when seeded, plus however long this run took to get there on a loaded machine (not a timing test)
    heard = re.search(r"on staging-vm-7 \(pid 4242\), last heard from (?:(\d+)m)?(\d+(?:\.\d)?)s ago", out)
    assert heard and 20 <= 60 * int(heard.group(1) or 0) + float(heard.group(2)) < 600, out
    assert f"clear its marker now: gcloud storage rm gs://{BUCKET}/{marker}" in out
    assert hf_hub.bytes_served == 0 and names(fake_gcs) == before  # not a byte moved, nothing written

    # The same claim from a run whose process is gone (this host, a PID that no longer runs): taken over.
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    _seed_marker(fake_gcs, sha, host=socket.gethostname(), pid=dead, started=now.isoformat(),
                 heartbeat=now.isoformat())
    proc = run_inv(["stage-model", "--target=ironwood"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"taking over from an earlier run that stopped (its process (pid {dead} on " in proc.stdout
    staged = names(fake_gcs)
    assert marker not in staged and f"models/{REPO_ID}/{sha}/.gptoss-gke-manifest.json" in staged
