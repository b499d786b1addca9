"""Model staging against real servers on loopback: the HF hub emulator and fake-gcs-server.

A synthetic repo shaped like openai/gpt-oss-120b (root shards + original/ + metal/ copies, configs,
tokenizer, chat template) is served by the hub emulator; objects land in fake-gcs-server behind the
GcsFront (bucket IAM and fields, XML API multipart uploads, the soft-delete bill). Shards are 20 MiB and
chunks 8 MiB, so every shard is transferred as a multipart upload of three parallel parts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import time

import invoke
import pytest

from gptoss_gke.config import load_settings
from gptoss_gke.core import Context, Redactor, Runner
from gptoss_gke.core.report import Printer, write_report
from gptoss_gke.core.retry import RetryPolicy
from gptoss_gke.core.shell import Shell
from gptoss_gke.staging.hub import select_files
from gptoss_gke.staging.state import MANIFEST_NAME
from gptoss_gke.staging.steps import model_folder, stage_model_steps
from gptoss_gke.targets import GPTOSS_ALLOW, GPTOSS_IGNORE
from tests.conftest import INV, REPO
from tests.emulators.gcp import gcloud_env
from tests.emulators.hfhub import make_gptoss_like_repo
from tests.envfiles import CHUNK_MIB, MODELS_BUCKET, staging_env
from tests.gcs import PROJECT_NUMBER

REPO_ID = "openai/gpt-oss-120b"  # the ironwood target's model
BUCKET = MODELS_BUCKET
MiB = 1024 * 1024
SHARD = 20 * MiB

# The root of openai/gpt-oss-20b as the hub lists it (the 120b repo has the same shape, 15 shards).
GPTOSS_20B_PATHS = [
    ".gitattributes", "LICENSE", "README.md", "USAGE_POLICY", "chat_template.jinja", "config.json",
    "generation_config.json", "metal/model.bin", "model-00000-of-00002.safetensors",
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "original/config.json", "original/dtypes.json", "original/model.safetensors", "special_tokens_map.json",
    "tokenizer.json", "tokenizer_config.json",
]
VLLM_LOADS = {
    "chat_template.jinja", "config.json", "generation_config.json", "model-00000-of-00002.safetensors",
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
}


# ---------------------------------------------------------------------------------------------
# helpers


def settings_for(tmp_path, hub, revision: str, **environ):
    return load_settings(environ={"GPTOSS_ENV_DIR": staging_env(tmp_path, revision), "HF_ENDPOINT": hub.url,
                                  **environ})


def run_steps(settings, *, dry_run=False):
    """The real steps through the real runner, as `inv stage-model` runs them (minus the gcloud gates)."""
    redactor = Redactor()
    if settings.hf_token:
        redactor.add(settings.hf_token.get_secret_value())
    out = io.StringIO()
    printer = Printer(redactor, stream=out, color=False)
    shell = Shell(invoke.Context(), redactor, dry_run=dry_run, retry=RetryPolicy(4, 0.01, 0.05), emit=printer.line)
    ctx = Context(settings, shell, printer, redactor, dry_run=dry_run, interactive=False)
    ctx.fact("gcp.project", lambda: {"projectNumber": PROJECT_NUMBER, "lifecycleState": "ACTIVE"})  # what the Project step observes via gcloud
    results = Runner(ctx).run(stage_model_steps(settings, ["ironwood"]))
    return results, out.getvalue(), ctx


def by_name(results):
    return {r.name.split(" ")[0] + (" iam" if "IAM" in r.name else ""): r for r in results}


def listing(gcs, prefix=""):
    client = gcs.client()
    return {b.name: b for b in client.list_blobs(BUCKET, prefix=prefix)} if client.lookup_bucket(BUCKET) else {}


def folder_of(settings, sha):
    return model_folder(settings, settings.target("ironwood"), sha)


def selected_bytes(hub, sha):
    return sum(hub.file_info(REPO_ID, p, sha)["size"] for p in VLLM_LOADS)


# ---------------------------------------------------------------------------------------------
# selection


def test_selection_is_what_vllm_loads_and_star_crosses_slashes():
    assert set(select_files(GPTOSS_20B_PATHS, GPTOSS_ALLOW, GPTOSS_IGNORE)) == VLLM_LOADS
    # The tutorial trap: an allow-list alone pulls the second copy of the weights from original/.
    naive = select_files(GPTOSS_20B_PATHS, ["*.safetensors"], [])
    assert "original/model.safetensors" in naive


# ---------------------------------------------------------------------------------------------
# first run, no-op re-run, IAM once


def test_first_run_stages_exactly_the_selection_verified_and_rerun_moves_nothing(tmp_path, hf_hub, gcs_front,
                                                                                fake_gcs):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=SHARD, n_shards=3, copy_size=4 * MiB)
    s = settings_for(tmp_path, hf_hub, sha)
    folder = folder_of(s, sha)
    assert folder == f"models/{REPO_ID}/{sha}/"

    results, out, _ = run_steps(s)
    assert [r.status for r in results] == ["changed", "changed", "changed"], out
    objects = listing(fake_gcs)
    assert set(objects) == {folder + p for p in VLLM_LOADS} | {folder + MANIFEST_NAME}  # no .partial leftovers
    # No week of billed garbage: nothing soft-deleted but the run's tiny in-progress marker and its zero-byte
    # resume records (composing chunk objects left all 60 MiB of shards soft-deleted), no upload left open.
    assert gcs_front.soft_deleted_bytes < 1024, gcs_front.soft_deleted_bytes
    assert gcs_front.uploads == {} and gcs_front.pending_part_bytes() == 0
    # Only the selection crossed the wire: not one byte of original/ or metal/.
    assert hf_hub.bytes_served == selected_bytes(hf_hub, sha)
    assert hf_hub.bytes_served_for(REPO_ID, "original/model.safetensors") == 0
    assert hf_hub.bytes_served_for(REPO_ID, "metal/model.bin") == 0
    # Every object holds the hub's bytes, and says so in x-goog-meta-sha256.
    for path in VLLM_LOADS:
        blob = objects[folder + path]
        data = blob.download_as_bytes()
        assert hashlib.sha256(data).hexdigest() == blob.metadata["sha256"]
        assert data == hf_hub.content(REPO_ID, path, sha)
    manifest = json.loads(objects[folder + MANIFEST_NAME].download_as_bytes())
    assert manifest["revision"] == sha and {f["path"] for f in manifest["files"]} == VLLM_LOADS
    shard = next(f for f in manifest["files"] if f["path"] == "model-00001-of-00002.safetensors")
    assert shard["size"] == SHARD and shard["sha256"] == hf_hub.file_info(REPO_ID, shard["path"], sha)["sha256"]
    # The bucket: created where configured, uniform access, our labels; the grant: once.
    bucket = gcs_front.buckets[BUCKET]
    assert bucket["location"] == "US-CENTRAL1" and bucket["labels"]["managed-by"] == "gptoss-gke"
    assert bucket["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"] is True
    member = (f"principal://iam.googleapis.com/projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/"
              f"test-project.svc.id.goog/subject/ns/gptoss/sa/vllm")
    viewers = [b for b in gcs_front.policy(BUCKET)["bindings"] if b["role"] == "roles/storage.objectViewer"]
    assert viewers == [{"role": "roles/storage.objectViewer", "members": [member]}]

    generations = {n: b.generation for n, b in objects.items()}
    served, uploaded = hf_hub.bytes_served, gcs_front.upload_bytes
    results, out, _ = run_steps(s)
    assert [r.status for r in results] == ["ok", "ok", "ok"], out
    assert hf_hub.bytes_served == served  # zero bytes from the hub
    assert gcs_front.upload_bytes == uploaded  # zero bytes to the bucket
    assert {n: b.generation for n, b in listing(fake_gcs).items()} == generations
    assert f"10 files, 62.9 MB already staged at gs://{BUCKET}/{folder} (manifest verified)" in out
    assert len(gcs_front.iam_sets) == 1


def test_branch_is_resolved_to_its_commit_and_the_folder_names_the_commit(tmp_path, hf_hub, gcs_front, fake_gcs):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=2 * MiB, n_shards=3, copy_size=MiB)
    s = settings_for(tmp_path, hf_hub, "main")
    results, out, ctx = _run_only_stage(s, fake_gcs)
    [r] = results
    assert r.status == "changed", out
    assert r.facts["revision"] == sha and r.facts["resolved"] == f"main → {sha}"
    assert f"(main → {sha[:12]})" in out
    assert any(n.startswith(f"models/{REPO_ID}/{sha}/") for n in listing(fake_gcs))
    assert ctx.fact("models.revision.ironwood", lambda: None) == sha  # for the manifests that mount it


def _run_only_stage(settings, gcs):
    """StageModel alone on raw fake-gcs-server (the bucket made by hand, as someone else would)."""
    from gptoss_gke.staging.steps import StageModel

    client = gcs.client()
    if not client.lookup_bucket(BUCKET):
        client.create_bucket(BUCKET)
    redactor = Redactor()
    out = io.StringIO()
    printer = Printer(redactor, stream=out, color=False)
    shell = Shell(invoke.Context(), redactor, dry_run=False, retry=RetryPolicy(4, 0.01, 0.05), emit=printer.line)
    ctx = Context(settings, shell, printer, redactor, interactive=False)
    return Runner(ctx).run([StageModel(settings, "ironwood")]), out.getvalue(), ctx


def test_iam_binding_is_added_once_with_an_etag_precondition(tmp_path, hf_hub, gcs_front, fake_gcs):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=MiB, n_shards=2, copy_size=MiB)
    s = settings_for(tmp_path, hf_hub, sha)
    other = "serviceAccount:someone-else@test-project.iam.gserviceaccount.com"
    fake_gcs.client().create_bucket(BUCKET)  # exists already; someone edits its policy while we do
    gcs_front.race(BUCKET, "roles/storage.objectViewer", other)
    results, out, _ = run_steps(s)
    assert by_name(results)["bucket iam"].status == "changed", out
    assert gcs_front.iam_rejected == 1  # our first write carried the etag we read: refused, not overwritten
    assert "policy changed while we edited it" in out
    members = [m for b in gcs_front.policy(BUCKET)["bindings"] if b["role"] == "roles/storage.objectViewer"
               for m in b["members"]]
    assert other in members and sum(m.startswith("principal://") for m in members) == 1
    results, out, _ = run_steps(s)
    assert by_name(results)["bucket iam"].status == "ok" and len(gcs_front.iam_sets) == 1
    # A bucket we did not create: uniform access off is reported, not changed, and never relabelled.
    assert "drift: uniform bucket-level access is off" in out
    assert "labels" not in gcs_front.buckets[BUCKET]


# ---------------------------------------------------------------------------------------------
# failures


def test_corrupted_upstream_byte_fails_and_leaves_nothing_under_the_final_name(tmp_path, hf_hub, gcs_front, fake_gcs):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=SHARD, n_shards=3, copy_size=MiB)
    bad = "model-00001-of-00002.safetensors"
    hf_hub.corrupt(REPO_ID, bad, offset=CHUNK_MIB * MiB + 12345)  # in the second chunk
    s = settings_for(tmp_path, hf_hub, sha)
    folder = folder_of(s, sha)
    [r], out, _ = _run_only_stage(s, fake_gcs)
    assert r.status == "failed"
    assert bad in r.error and "sha256" in r.error
    names = set(listing(fake_gcs))
    assert folder + bad not in names
    assert not [n for n in names if bad in n]  # no chunk left to resume corrupt bytes from
    assert folder + MANIFEST_NAME not in names  # the manifest is written last, only when all is verified
    assert folder + "model-00000-of-00002.safetensors" in names  # the good files are kept
    assert gcs_front.uploads == {}  # the bad file's upload was aborted: no parts left billed

    hf_hub.clear_faults()
    before = hf_hub.bytes_served
    [r], out, _ = _run_only_stage(s, fake_gcs)
    assert r.status == "changed", out
    assert hf_hub.bytes_served - before == SHARD  # only the file that failed moves again
    assert folder + MANIFEST_NAME in listing(fake_gcs)


def test_dropped_connection_is_retried_for_that_chunk_only(tmp_path, hf_hub, gcs_front, fake_gcs):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=SHARD, n_shards=3, copy_size=MiB)
    shard = "model-00002-of-00002.safetensors"
    hf_hub.drop_after(REPO_ID, shard, nbytes=3 * MiB, times=1, mode="rst")
    gcs_front.fail_next("PUT", "partNumber=2", 503)  # and GCS is briefly unavailable for one part
    # Chunks held in files under temp_dir this time (the other tests hold them in memory).
    s = settings_for(tmp_path, hf_hub, sha, GPTOSS_MODELS__TEMP_DIR=str(tmp_path / "spool"))
    [r], out, _ = _run_only_stage(s, fake_gcs)
    assert r.status == "changed", out
    assert "retrying downloading" in out and "retrying uploading part 2 of" in out
    served = hf_hub.bytes_served_for(REPO_ID, shard)
    assert SHARD < served <= SHARD + CHUNK_MIB * MiB  # the cut chunk again, not the file
    blob = fake_gcs.client().bucket(BUCKET).get_blob(folder_of(s, sha) + shard)
    assert blob.metadata["sha256"] == hf_hub.file_info(REPO_ID, shard, sha)["sha256"]
    assert blob.download_as_bytes() == hf_hub.content(REPO_ID, shard, sha)
    assert not [n for n in listing(fake_gcs) if ".partial/" in n]
    assert not os.listdir(tmp_path / "spool")  # temp files are gone


def test_a_slow_range_is_cut_and_the_rest_asked_for_again_on_a_new_connection(tmp_path, hf_hub, gcs_front, fake_gcs):
    """One CDN edge crawling must not set the pace: the range is cut once the others show it is far slower,
    and only what it still lacked is asked for again; the file is verified as always."""
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=SHARD, n_shards=3, copy_size=MiB)
    slow = "model-00001-of-00002.safetensors"
    hf_hub.slow_edge(REPO_ID, slow, 256 * 1024)  # its first GET: 8 MiB would take half a minute
    s = settings_for(tmp_path, hf_hub, sha)
    folder = folder_of(s, sha)
    [r], out, _ = _run_only_stage(s, fake_gcs)
    assert r.status == "changed", out
    assert f"{slow}: a range came at" in out and "asked for the rest of it again on a new connection" in out
    ranges = [q.range for q in hf_hub.find_requests("GET", r"/resolve/") if q.file == slow and q.range]
    starts = sorted(int(x.split("=")[1].split("-")[0]) for x in ranges)
    chunk = CHUNK_MIB * MiB
    assert len(starts) == 4 and [x for x in starts if x % chunk], starts  # 3 chunks + the rest of the cut one
    blob = fake_gcs.client().bucket(BUCKET).blob(folder + slow)
    assert blob.download_as_bytes() == hf_hub.content(REPO_ID, slow, sha)


def test_ranges_in_flight_grow_while_each_one_more_brings_more(tmp_path, hf_hub, gcs_front, fake_gcs):
    """A CDN edge caps each connection (the emulator paces every response on its own, 4 MB/s), so one more
    range of a file in flight brings more: the file's count grows past where it started (half of
    models.workers) instead of staying fixed, and the file is verified as always."""
    shard = "model-00000-of-00000.safetensors"
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=10 * CHUNK_MIB * MiB, n_shards=1, copy_size=MiB)
    hf_hub.slow(4_000_000)
    s = settings_for(tmp_path, hf_hub, sha)
    assert s.models.workers == 4
    folder = folder_of(s, sha)
    [r], out, _ = _run_only_stage(s, fake_gcs)
    assert r.status == "changed", out
    streams = r.facts["transfer"]["streams"][shard]
    assert streams["start"] == 2 and streams["end"] > 2, (streams, out)
    assert f"ranges in flight per file, adapted to the hub: {shard} 2 → {streams['end']}" in out
    assert hf_hub.peak_concurrent_for(REPO_ID, shard) > 2  # the hub saw it: more of the file's ranges at once
    assert hf_hub.peak_concurrent_for(REPO_ID, shard) <= s.models.workers
    # A range read to its end leaves its connection to the next one (no new handshake per chunk).
    content_gets = [q for q in hf_hub.find_requests("GET", r"/resolve/") if q.bytes_sent]
    assert hf_hub.connections_accepted < len(content_gets), (hf_hub.connections_accepted, len(content_gets))
    blob = fake_gcs.client().bucket(BUCKET).get_blob(folder + shard)
    assert blob.metadata["sha256"] == hf_hub.file_info(REPO_ID, shard, sha)["sha256"]
    assert blob.download_as_bytes() == hf_hub.content(REPO_ID, shard, sha)


@pytest.mark.parametrize("case", ["revision", "repo"])
def test_missing_repo_or_revision_fails_clearly_before_any_byte_moves(tmp_path, hf_hub, gcs_front, fake_gcs, case):
    if case == "revision":
        make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=MiB, n_shards=2, copy_size=MiB)
    s = settings_for(tmp_path, hf_hub, "0123456789abcdef0123456789abcdef01234567")
    results, out, _ = run_steps(s)
    stage = by_name(results)["stage"]
    assert stage.status == "failed"
    if case == "revision":
        assert "revision 0123456789abcdef0123456789abcdef01234567 not found in openai/gpt-oss-120b" in stage.error
        assert "targets.ironwood.model_revision" in stage.fix
    else:
        assert "repository openai/gpt-oss-120b not found" in stage.error and "HF_TOKEN" in stage.fix
    assert hf_hub.bytes_served == 0 and not listing(fake_gcs)


def test_gated_repo_token_required_refused_then_used_and_never_shown(tmp_path, hf_hub, gcs_front, fake_gcs):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=MiB, n_shards=2, copy_size=MiB, gated="manual")
    [r], out, _ = _run_only_stage(settings_for(tmp_path, hf_hub, sha), fake_gcs)
    assert r.status == "failed" and "gated: downloading it needs a token" in r.error and "HF_TOKEN" in r.fix
    bogus = "hf_" + "Z" * 34
    [r], out, _ = _run_only_stage(settings_for(tmp_path, hf_hub, sha, HF_TOKEN=bogus), fake_gcs)
    assert r.status == "failed" and "refused the HF token" in r.error
    assert bogus not in out and bogus not in (r.error + (r.fix or ""))
    assert hf_hub.bytes_served == 0 and not listing(fake_gcs, "models/")

    hf_hub.lfs_redirect = True  # LFS files answer 302 to a CDN on another port, as the hub does
    token_file = tmp_path / "hf-token"
    token_file.write_text(hf_hub.token + "\n")
    s = settings_for(tmp_path, hf_hub, sha, GPTOSS_MODELS__HF_TOKEN_FILE=str(token_file))
    results, out, ctx = _run_only_stage(s, fake_gcs)
    assert results[0].status == "changed", out
    report = tmp_path / "report.json"
    write_report(str(report), results, ctx.redact, task="stage-model", dry_run=False)
    assert hf_hub.token not in out and hf_hub.token not in report.read_text()
    assert all(r.had_token for r in hf_hub.find_requests("GET", r"/resolve/"))
    cdn = hf_hub.find_requests("GET", server="cdn")
    assert cdn and not any(r.had_token for r in cdn)  # the token never leaves the hub's own host


def test_bucket_of_another_project_or_not_writable_fails_before_bytes_move(tmp_path, hf_hub, gcs_front, fake_gcs):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=MiB, n_shards=2, copy_size=MiB)
    s = settings_for(tmp_path, hf_hub, sha)
    fake_gcs.client().create_bucket(BUCKET)
    gcs_front.foreign(BUCKET)
    results, out, _ = run_steps(s)
    bucket = by_name(results)["bucket"]
    assert bucket.status == "failed" and "permission denied" in bucket.error
    assert "models.bucket" in bucket.fix
    assert [r.status for r in results[1:]] == ["skipped", "skipped"]
    assert hf_hub.bytes_served == 0

    gcs_front._foreign.clear()
    gcs_front.set_bucket_fields(BUCKET, projectNumber="999999999999")
    results, out, _ = run_steps(s)
    assert "belongs to project number 999999999999" in by_name(results)["bucket"].error

    gcs_front.set_bucket_fields(BUCKET, projectNumber=PROJECT_NUMBER)
    gcs_front.read_only(BUCKET)
    results, out, _ = run_steps(s)
    stage = by_name(results)["stage"]
    assert stage.status == "failed" and "not writable" in stage.error and "objectAdmin" in stage.fix
    assert hf_hub.bytes_served == 0


def test_not_enough_temp_space_is_refused_before_bytes_move(tmp_path, hf_hub, gcs_front, fake_gcs, monkeypatch):
    import shutil
    from collections import namedtuple

    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=SHARD, n_shards=3, copy_size=MiB)
    spool = tmp_path / "spool"
    s = settings_for(tmp_path, hf_hub, sha, GPTOSS_MODELS__TEMP_DIR=str(spool))
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: usage(10 * MiB, 9 * MiB, MiB) if str(p) == str(spool) else real(p))
    [r], out, _ = _run_only_stage(s, fake_gcs)
    assert r.status == "failed" and "not enough temp space" in r.error and "models.temp_dir" in r.fix
    assert hf_hub.bytes_served == 0


def test_dry_run_reads_everything_and_writes_nothing(tmp_path, hf_hub, gcs_front, fake_gcs):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=2 * MiB, n_shards=3, copy_size=MiB)
    results, out, _ = run_steps(settings_for(tmp_path, hf_hub, sha), dry_run=True)
    assert [r.status for r in results] == ["changed", "changed", "changed"]
    assert "would stage 10 of 10 files" in out and "model-00001-of-00002.safetensors" in out
    assert hf_hub.bytes_served == 0 and not fake_gcs.client().lookup_bucket(BUCKET)


# ---------------------------------------------------------------------------------------------
# end to end through `inv`, killed mid-transfer and resumed


def test_inv_stage_model_killed_mid_transfer_resumes_with_only_what_is_missing(tmp_path, hf_hub, gcs_front,
                                                                              fake_gcs, gcp_emulator):
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=SHARD, n_shards=3, copy_size=MiB)
    token = hf_hub.token
    gcp_emulator.add_project("test-project", PROJECT_NUMBER)  # the number the bucket reports as its owner
    env = gcloud_env(gcp_emulator, tmp_path, "test-project")
    env.update(GPTOSS_ENV_DIR=staging_env(tmp_path, sha), HF_ENDPOINT=hf_hub.url, HF_TOKEN=token,
               STORAGE_EMULATOR_HOST=gcs_front.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               NO_COLOR="1", GPTOSS_MODELS__WORKERS="2")
    folder = f"models/{REPO_ID}/{sha}/"
    partial = folder.rstrip("/") + ".partial/"
    hf_hub.slow(6 * MiB)  # per response: a few seconds in all, so the kill lands mid-transfer

    proc = subprocess.Popen([INV, "stage-model", "--target=ironwood"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            chunks = [n for n in listing(fake_gcs, partial) if n[-6:].isdigit()]
            if len(chunks) >= 2:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        else:
            pytest.fail("no chunk was uploaded in time")
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # as if the machine went away: no cleanup runs
        first_out = proc.communicate(timeout=10)[0]
    assert folder + MANIFEST_NAME not in listing(fake_gcs)
    first = hf_hub.bytes_served
    total = selected_bytes(hf_hub, sha)
    assert 0 < first < total, first_out

    hf_hub.slow(None)
    report = tmp_path / "report.json"
    done = subprocess.run([INV, "stage-model", "--target=ironwood", f"--report={report}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "taking over from an earlier run that stopped (its process (pid " in done.stdout  # its marker
    second = hf_hub.bytes_served - first
    doc = json.loads(report.read_text())
    stage = doc["steps"][-1]
    assert stage["status"] == "changed" and stage["facts"]["resumed_bytes"] >= CHUNK_MIB * MiB, done.stdout
    facts = stage["facts"]
    assert second == facts["bytes_to_move"]  # the unfinished files (their uploaded parts re-hashed), nothing more
    assert second < total  # finished files stayed put
    assert facts["bytes_to_upload"] == facts["bytes_to_move"] - facts["resumed_bytes"]  # uploaded parts stayed put
    assert first + second <= total + 4 * CHUNK_MIB * MiB  # waste bounded by the chunks in flight at the kill
    names = set(listing(fake_gcs))
    assert {folder + p for p in VLLM_LOADS} | {folder + MANIFEST_NAME} == names  # .partial/ is gone
    # The killed run's uploads were continued or aborted: no parts left billed, nothing big soft-deleted.
    assert gcs_front.uploads == {} and gcs_front.soft_deleted_bytes < 4096
    for p in ("model-00000-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        data = fake_gcs.client().bucket(BUCKET).blob(folder + p).download_as_bytes()
        assert hashlib.sha256(data).hexdigest() == hf_hub.file_info(REPO_ID, p, sha)["sha256"]
    assert token not in done.stdout + done.stderr + first_out and token not in report.read_text()
    assert "RECAP ok=4 changed=1 skipped=0 failed=0" in done.stdout

    again = subprocess.run([INV, "stage-model", "--target=ironwood"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "(manifest verified)" in again.stdout
    assert hf_hub.bytes_served == first + second


def _killed_run_state(gcs_front, fake_gcs, hub, sha, folder, path, parts: dict[int, bytes]):
    """What a run killed mid-file leaves, written with our own multipart client: ``path``'s upload open
    with ``parts`` (part number → the bytes that run sent) and a resume record per part."""
    import google_crc32c

    from gptoss_gke.gcp.storage import MultipartUploads
    from gptoss_gke.staging.chunks import Buffer
    from gptoss_gke.staging.hub import RepoFile
    from gptoss_gke.staging.state import CRC_KEY, ETAG_KEY, SHA_KEY, UPLOAD_KEY, chunk_name, partial_dir

    info = hub.file_info(REPO_ID, path, sha)
    f = RepoFile(path, info["size"], info["sha256"], info["git_oid"])
    bucket = fake_gcs.client(gcs_front.url).bucket(BUCKET)
    mpu = MultipartUploads(bucket)
    upload = mpu.start(folder + path, {SHA_KEY: f.sha256, "hf-revision": sha})
    crc = 0
    for number in sorted(parts):
        buf = Buffer(None, len(parts[number]))
        buf.write(parts[number])
        part_crc = google_crc32c.value(parts[number])
        etag = mpu.put_part(folder + path, upload, number, buf, part_crc)
        crc = google_crc32c.extend(crc, parts[number])
        record = bucket.blob(chunk_name(partial_dir(folder, f, CHUNK_MIB * MiB), number - 1))
        record.metadata = {CRC_KEY: str(crc), UPLOAD_KEY: upload, ETAG_KEY: etag}
        record.upload_from_string(b"")
    return upload


def test_resume_reads_nothing_back_from_gcs_and_uploads_a_corrupt_part_again(tmp_path, hf_hub, gcs_front, fake_gcs):
    """Resuming verifies the parts already uploaded against the hub's bytes (free egress), never by reading
    the object back from GCS (billed egress from a laptop); a part the killed run sent wrong is sent again."""
    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=SHARD, n_shards=3, copy_size=MiB)
    s = settings_for(tmp_path, hf_hub, sha)
    folder = folder_of(s, sha)
    shard = "model-00001-of-00002.safetensors"
    good = hf_hub.content(REPO_ID, shard, sha)
    chunk = CHUNK_MIB * MiB
    bad = bytearray(good[:chunk])
    bad[4242] ^= 0xFF  # the killed run got (and GCS faithfully stored) one flipped byte in part 1
    fake_gcs.client().create_bucket(BUCKET)
    upload = _killed_run_state(gcs_front, fake_gcs, hf_hub, sha, folder, shard,
                               {1: bytes(bad), 2: good[chunk:2 * chunk]})
    gcs_front.requests.clear()

    [r], out, _ = _run_only_stage(s, fake_gcs)
    assert r.status == "changed", out
    assert r.facts["resumed_bytes"] == 2 * chunk
    assert "part(s) 1 left by an earlier run differed from the hub's bytes and were uploaded again" in out
    assert fake_gcs.client().bucket(BUCKET).blob(folder + shard).download_as_bytes() == good
    # Nothing was read back from GCS: no object media, no XML GET of an object (only listings and parts).
    reads = [(m, p) for m, p in gcs_front.requests
             if m == "GET" and ("alt=media" in p or p.startswith("/download/")
                                or (not p.startswith("/storage/") and "uploadId" not in p and "uploads" not in p))]
    assert reads == [(m, p) for m, p in reads if MANIFEST_NAME in p or ".partial/" in p], reads
    # Part 1 was sent again, part 2 (right bytes) was not; part 3 is the first new one.
    puts = [p for m, p in gcs_front.requests if m == "PUT" and f"uploadId={upload}" in p]
    assert sorted(p.split("partNumber=")[1].split("&")[0] for p in puts) == ["1", "3"], puts


def test_teardown_purge_deletes_only_what_we_staged_and_revokes_the_grant(tmp_path, hf_hub, gcs_front, fake_gcs):
    from gptoss_gke.staging.steps import purge_model_steps

    sha = make_gptoss_like_repo(hf_hub, REPO_ID, shard_size=MiB, n_shards=2, copy_size=MiB)
    s = settings_for(tmp_path, hf_hub, sha)
    results, out, _ = run_steps(s)
    assert all(r.status == "changed" for r in results), out
    bucket = fake_gcs.client().bucket(BUCKET)
    bucket.blob(f"models/{REPO_ID}/notes.txt").upload_from_string(b"someone else's")
    bucket.blob("elsewhere/model.safetensors").upload_from_string(b"not ours either")
    # A staging run killed mid-upload leaves an upload open (its parts billed until aborted); someone
    # else's upload elsewhere in the bucket is not ours to abort.
    from gptoss_gke.gcp.storage import MultipartUploads

    mpu = MultipartUploads(fake_gcs.client(gcs_front.url).bucket(BUCKET))
    ours = mpu.start(f"models/{REPO_ID}/{sha}/model-00001-of-00002.safetensors", {})
    theirs = mpu.start("elsewhere/big.bin", {})

    redactor = Redactor()
    printer = Printer(redactor, stream=io.StringIO(), color=False)
    shell = Shell(invoke.Context(), redactor, dry_run=False, retry=RetryPolicy(4, 0.01, 0.05), emit=printer.line)
    ctx = Context(s, shell, printer, redactor, interactive=False)
    ctx.fact("gcp.project", lambda: {"projectNumber": PROJECT_NUMBER, "lifecycleState": "ACTIVE"})
    results = Runner(ctx).run(purge_model_steps(s, ["l4", "ironwood"]))
    # the weights, the serving grant; no staging Job ran, so its account holds no grant to revoke
    assert [r.status for r in results] == ["changed", "changed", "ok"]
    assert set(listing(fake_gcs)) == {f"models/{REPO_ID}/notes.txt", "elsewhere/model.safetensors"}
    assert set(gcs_front.uploads) == {theirs} and ours not in gcs_front.uploads
    assert not [b for b in gcs_front.policy(BUCKET)["bindings"] if b["role"] == "roles/storage.objectViewer"]
