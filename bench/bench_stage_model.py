"""Model staging: our StageModel step vs the tutorial way, same loopback servers, one run.

A synthetic repo shaped like openai/gpt-oss-20b (root safetensors shards of ~2 GB in all, plus the
original/ and metal/ copies the real repos carry, configs, tokenizer, chat template) is served by the
loopback HF hub emulator (in its own process, so it does not share a GIL with the step); objects go to
fake-gcs-server behind tests/gcs.py's GcsFront (XML API multipart uploads, and the soft-delete bill: what
deleted or replaced objects keep costing for the bucket's 7 default days). Both ways start from an empty
folder of the same bucket.

* ours:      the StageModel step through the engine (default settings: 8 workers, 64 MiB chunks).
* tutorial:  ``hf download REPO --local-dir D --revision R`` (HF_ENDPOINT set), then
             ``gcloud storage rsync D gs://B/tutorial --recursive`` (storage API pointed at the emulator).
* tutorial, filtered: the same with ``--exclude 'original/*' --exclude 'metal/*'``, so the pipeline is
             compared on the same bytes and the gain from selection is visible separately.

Then each way runs again against the complete folder (re-run). Printed: wall times, bytes from the
hub and into the bucket, the bytes billed afterwards (stored + soft-deleted + parts of unfinished
uploads; goal: stored = the selection, nothing else), and the ratios (goal: first run <= 0.5x the
tutorial way, re-run <= 0.05x).

    . .venv/bin/activate && python -m bench.bench_stage_model [--shard-mib 680] [--shards 3]
        [--copies full|none] [--skip-filtered]

``--cpu N``: instead, the client's cost: our step alone (the hub and the GCS front each in their own
process, so this process's CPU time is the client's), N runs into an emptied folder; CPU-seconds per GB
moved (user + system of this process, and the system part and page faults alone) and MB/s, min/median/max,
with the machine's load before each run, beside this machine's limits: a plain ``curl`` of one shard from the
loopback hub, one single-stream upload of it to the GCS emulator, and the floor of each part of the work
every byte needs (sha256, crc32c, fresh memory), each measured alone. A run's CPU includes its fixed costs
(listing, claim, manifest: ~0.2 CPU-s; the first run also imports the SDKs), so small totals read higher.

Needs the ``hf`` CLI (huggingface_hub) in the virtualenv and gcloud on PATH. Everything listens on
127.0.0.1; gcloud gets a throwaway config, a dummy token and both switches that keep it off the network.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.common import REPO, load

REPO_ID = "openai/gpt-oss-120b"  # the ironwood target's model id (the only target staged to a bucket)
BUCKET = "bench-models"

_HUB_CHILD = """
import json, sys
from tests.emulators.hfhub import HubEmulator, make_gptoss_like_repo
hub = HubEmulator().start()
sha = make_gptoss_like_repo(hub, {repo_id!r}, shard_size={shard}, n_shards={shards}, copy_size={copy})
for path in hub.list_files({repo_id!r}, sha):  # hash every file now, not inside a timed run
    hub.file_info({repo_id!r}, path, sha)
print(json.dumps({{"url": hub.url, "sha": sha}}), flush=True)
for line in sys.stdin:
    if line.strip() == "stats":
        print(json.dumps({{"bytes": hub.bytes_served}}), flush=True)
hub.stop()
"""


class Hub:
    """The hub emulator in a child process; ``bytes_served`` asks it."""

    def __init__(self, shard: int, shards: int, copy: int):
        code = _HUB_CHILD.format(repo_id=REPO_ID, shard=shard, shards=shards, copy=copy)
        # `python -c` puts its working directory first on sys.path: run it from the repository root.
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=REPO)
        info = json.loads(self.proc.stdout.readline())
        self.url, self.sha = info["url"], info["sha"]

    @property
    def bytes_served(self) -> int:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["bytes"]

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, 9)


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def size(n: int) -> str:
    """Billed bytes: GB, but small amounts exactly (a zero must look like a zero)."""
    return gb(n) if n >= 10**7 else f"{n:,} B"


def bucket_bytes(client, prefix: str) -> int:
    return sum(b.size or 0 for b in client.list_blobs(BUCKET, prefix=prefix))


class Bill:
    """Bytes a way leaves billed: live objects under its prefix, and what it soft-deleted or left open."""

    def __init__(self, front, client, prefix: str):
        self.front, self.client, self.prefix = front, client, prefix
        self.deleted0, self.pending0 = front.soft_deleted_bytes, front.pending_part_bytes()

    def read(self) -> tuple[int, int, int]:
        return (bucket_bytes(self.client, self.prefix), self.front.soft_deleted_bytes - self.deleted0,
                self.front.pending_part_bytes() - self.pending0)


def run_ours(tmp: Path, hub: Hub, gcs_url: str) -> tuple[float, dict]:
    import invoke

    from gptoss_gke.config import load_settings
    from gptoss_gke.core import Context, Redactor, Runner
    from gptoss_gke.core.report import Printer
    from gptoss_gke.core.retry import RetryPolicy
    from gptoss_gke.core.shell import Shell
    from gptoss_gke.staging.steps import StageModel

    env_dir = tmp / "env"
    env_dir.mkdir(exist_ok=True)
    (env_dir / "dev.yaml").write_text(textwrap.dedent(f"""\
        project: bench-project
        models:
          bucket: {BUCKET}
        targets:
          ironwood:
            model_revision: {hub.sha}
        """))
    os.environ["STORAGE_EMULATOR_HOST"] = gcs_url
    settings = load_settings(environ={"GPTOSS_ENV_DIR": str(env_dir), "HF_ENDPOINT": hub.url})
    redactor = Redactor()
    out = io.StringIO()
    printer = Printer(redactor, stream=out, color=False)
    shell = Shell(invoke.Context(), redactor, dry_run=False, retry=RetryPolicy(), emit=printer.line)
    ctx = Context(settings, shell, printer, redactor, interactive=False)
    started = time.perf_counter()
    [result] = Runner(ctx).run([StageModel(settings, "ironwood")])
    elapsed = time.perf_counter() - started
    if result.status == "failed":
        sys.exit(f"our step failed: {result.error}\n{out.getvalue()}")
    return elapsed, result.facts.get("transfer") or {}


def tutorial_env(tmp: Path, hub: Hub, gcs_url: str) -> dict[str, str]:
    cfg = tmp / "gcloud-config"
    cfg.mkdir(exist_ok=True)
    token = tmp / "gcloud-token"
    token.write_text("bench-dummy-token\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSDK_", "HF_", "GOOGLE_"))}
    env.pop("STORAGE_EMULATOR_HOST", None)
    env.update(
        HF_ENDPOINT=hub.url, HF_HOME=str(tmp / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        CLOUDSDK_CONFIG=str(cfg), CLOUDSDK_AUTH_ACCESS_TOKEN_FILE=str(token), CLOUDSDK_CORE_PROJECT="bench-project",
        CLOUDSDK_CORE_CHECK_GCE_METADATA="False", CLOUDSDK_METRICS_ENVIRONMENT="tests",
        CLOUDSDK_CORE_DISABLE_PROMPTS="1", CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE=gcs_url + "/",
        CLOUDSDK_STORAGE_PARALLEL_COMPOSITE_UPLOAD_ENABLED="False",
    )
    return env


def run_tutorial(tmp: Path, hub: Hub, gcs_url: str, name: str, excludes: list[str]) -> tuple[float, float]:
    env = tutorial_env(tmp, hub, gcs_url)
    local = tmp / name
    hf = str(Path(sys.executable).with_name("hf"))
    cmd = [hf, "download", REPO_ID, "--local-dir", str(local), "--revision", hub.sha]
    for pattern in excludes:
        cmd += ["--exclude", pattern]
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    downloaded = time.perf_counter()
    subprocess.run(["gcloud", "storage", "rsync", str(local), f"gs://{BUCKET}/{name}", "--recursive"], env=env,
                   check=True, capture_output=True)
    done = time.perf_counter()
    return downloaded - started, done - downloaded


_GCS_CHILD = """
import json, sys, tempfile
from pathlib import Path
from tests.gcs import FakeGcs, GcsFront
root = tempfile.mkdtemp(prefix="bench-gcs-")
gcs = FakeGcs(Path(root) / "gcs").start()
front = GcsFront(gcs).start()
gcs.client().create_bucket({bucket!r})
print(json.dumps({{"front": front.url, "backend": gcs.url}}), flush=True)
sys.stdin.read()
front.stop()
gcs.stop()
"""


def cpu_mode(args) -> None:
    """Client CPU-seconds per GB and MB/s of our step, beside curl, a single-stream upload and the floor of
    each part of the work."""
    import resource
    import statistics

    shard = args.shard_mib * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-stage-cpu-") as tmpdir:
        tmp = Path(tmpdir)
        hub = Hub(shard, args.shards, 1024 * 1024)
        gcs_proc = subprocess.Popen([sys.executable, "-c", _GCS_CHILD.format(bucket=BUCKET)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            urls = json.loads(gcs_proc.stdout.readline())
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            client = storage.Client(project="bench", credentials=AnonymousCredentials(),
                                    client_options={"api_endpoint": urls["backend"]})
            cpu, system, faults, rates, loads = [], [], [], [], []
            moved, streams = 0, {}
            for _ in range(args.cpu):
                for blob in client.list_blobs(BUCKET, prefix="models/"):
                    blob.delete()
                loads.append(load())  # before the run: what the machine carried without us
                before = resource.getrusage(resource.RUSAGE_SELF)
                wall, transfer = run_ours(tmp, hub, urls["front"])
                after = resource.getrusage(resource.RUSAGE_SELF)
                moved = transfer.get("bytes_uploaded") or 0
                streams = transfer.get("streams") or {}
                per_gb = moved / 1e9
                cpu.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / per_gb)
                system.append((after.ru_stime - before.ru_stime) / per_gb)
                faults.append((after.ru_minflt - before.ru_minflt) / per_gb)
                rates.append(moved / wall / 1e6)
            shard_url = f"{hub.url}/{REPO_ID}/resolve/{hub.sha}/model-00000-of-{args.shards - 1:05d}.safetensors"
            curl = _curl(["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}", shard_url], shard)
            blob = tmp / "shard.bin"
            subprocess.run(["curl", "-sS", "-o", str(blob), shard_url], check=True)
            # -T streams the file (--data-binary @file would first read all of it into curl's memory).
            upload = _curl(["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_upload}", "-X", "POST",
                            "-H", "Content-Type: application/octet-stream", "-T", str(blob),
                            f"{urls['backend']}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=bench/one"],
                           shard)
        finally:
            hub.stop()
            gcs_proc.stdin.close()
            gcs_proc.wait(timeout=30)
    parts = _floors()

    def mmm(values, fmt):
        return "  ".join(f"{n} {fmt.format(f(values))}" for n, f in
                         (("min", min), ("median", statistics.median), ("max", max)))

    print(f"model staging client cost, {args.shards} shards x {args.shard_mib} MiB ({moved / 1e9:.2f} GB), "
          f"{args.cpu} runs, python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"  load   before each run (1-min average; the bench's hub and GCS processes add ~2 while it runs) "
          f"{mmm(loads, '{:.1f}')}")
    print(f"  ours   CPU-s/GB  {mmm(cpu, '{:5.2f}')}")
    print(f"  ours   MB/s      {mmm(rates, '{:6.0f}')}")
    print(f"  ours   of which system (kernel) CPU-s/GB {mmm(system, '{:5.2f}')};  page faults per GB "
          f"{mmm(faults, '{:,.0f}')}")
    if streams:
        print("  ours   ranges in flight per file (start → end, peak), last run: " + ", ".join(
            f"{path.split('-of-')[0]} {s['start']} → {s['end']} ({s['peak']})" for path, s in streams.items()))
    print(f"  limit  curl from the loopback hub (one stream)        : {curl[0]:6.0f} MB/s, {curl[1]:5.2f} CPU-s/GB")
    print(f"  limit  one single-stream upload to the GCS emulator   : {upload[0]:6.0f} MB/s, {upload[1]:5.2f} CPU-s/GB")
    for name, value in parts:
        print(f"  floor  {name:<47}: {value:5.2f} CPU-s/GB")


def _floors() -> list[tuple[str, float]]:
    """CPU-seconds per GB of the work every staged byte needs, each measured alone in this process."""
    import hashlib
    import resource

    from gptoss_gke.staging.chunks import extend_crc32c, new_memory

    def per_gb(fn, nbytes: int) -> float:
        before = resource.getrusage(resource.RUSAGE_SELF)
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF)
        return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / (nbytes / 1e9)

    block = bytearray(os.urandom(64 * 1024 * 1024))
    view = memoryview(block)
    rounds = 8

    def sha():
        h = hashlib.sha256()
        for _ in range(rounds):
            h.update(view)

    def crc():
        c = 0
        for _ in range(rounds):
            c = extend_crc32c(c, view)

    def fresh():  # a new block written once, as a chunk is when the memory is not reused
        for _ in range(rounds):
            m = new_memory(len(block))
            memoryview(m)[:] = view

    def copy():  # the same write into memory already there: what the page faults add is the difference
        m = memoryview(new_memory(len(block)))
        for _ in range(rounds):
            m[:] = view

    n = rounds * len(block)
    first_touch = per_gb(fresh, n) - per_gb(copy, n)
    return [("sha256 (the hub's hash of every LFS file)", per_gb(sha, n)),
            ("crc32c (each part; the file's is combined from them)", per_gb(crc, n)),
            ("fresh memory, first touch (up to the chunk budget)", max(first_touch, 0.0))]


def _curl(argv: list[str], size: int) -> tuple[float, float]:
    """(MB/s curl reports, curl's own CPU-seconds per GB)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return float(out) / 1e6, cpu / (size / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shard-mib", type=int, default=680, help="size of each root shard (default 680 MiB)")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--copies", choices=("full", "none"), default="full",
                        help="original/ and metal/ as big as the root shards (like the real repos) or tiny")
    parser.add_argument("--skip-filtered", action="store_true", help="skip the filtered tutorial variant")
    parser.add_argument("--cpu", type=int, default=0, metavar="N",
                        help="measure our client's CPU-s/GB and MB/s over N runs instead (see the docstring)")
    args = parser.parse_args()
    if args.cpu:
        return cpu_mode(args)

    from tests.gcs import FakeGcs, GcsFront

    shard = args.shard_mib * 1024 * 1024
    copy = args.shards * shard if args.copies == "full" else 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmpdir:
        tmp = Path(tmpdir)
        gcs = FakeGcs(tmp / "gcs-root").start()
        front = GcsFront(gcs).start()
        hub = Hub(shard, args.shards, copy)
        try:
            client = gcs.client()
            client.create_bucket(BUCKET)
            rows = []

            def measure(name, prefix, run):
                bill, b0 = Bill(front, client, prefix), hub.bytes_served
                wall, split = run()
                stored, deleted, pending = bill.read()
                rows.append((name, wall, split, hub.bytes_served - b0, stored, deleted, pending))
                return wall

            ours = measure("ours", "models/", lambda: (run_ours(tmp, hub, front.url)[0], None))
            ours_again = measure("ours, re-run", "models/", lambda: (run_ours(tmp, hub, front.url)[0], None))

            def tutorial_way(name, excludes):
                dl, up = run_tutorial(tmp, hub, front.url, name, excludes)
                return dl + up, (dl, up)

            tutorial = measure("tutorial", "tutorial/", lambda: tutorial_way("tutorial", []))
            tutorial_again = measure("tutorial, re-run", "tutorial/", lambda: tutorial_way("tutorial", []))
            filt = None
            if not args.skip_filtered:
                filt = measure("tutorial, filtered", "tutorial-filtered/",
                               lambda: tutorial_way("tutorial-filtered", ["original/*", "metal/*"]))
        finally:
            hub.stop()
            front.stop()
            gcs.stop()

    print(f"model staging, {args.shards} shards x {args.shard_mib} MiB, copies={args.copies}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cores, all on 127.0.0.1, one run")
    print(f"  {'way':<22}{'wall':>9}   {'(download + upload)':<22}{'from hub':>11}"
          f"{'billed: stored':>16}{'+ soft-deleted':>16}{'+ open parts':>14}")
    for name, wall, split, from_hub, stored, deleted, pending in rows:
        parts = f"({split[0]:.1f}s + {split[1]:.1f}s)" if split else ""
        print(f"  {name:<22}{wall:>8.1f}s   {parts:<22}{gb(from_hub):>11}{size(stored):>16}{size(deleted):>16}"
              f"{size(pending):>14}")
    print(f"  ratio first run  ours / tutorial          : {ours / tutorial:5.2f}x   (goal <= 0.50x)")
    if filt:
        print(f"  ratio first run  ours / tutorial filtered : {ours / filt:5.2f}x   (same bytes)")
    print(f"  ratio re-run     ours re-run / tutorial   : {ours_again / tutorial:5.3f}x   (goal <= 0.05x)")
    print(f"  ratio re-run     ours re-run / tutorial re-run: {ours_again / tutorial_again:5.3f}x")
    print("  billed: what the bucket charges for after the run (stored objects under the way's prefix, bytes it "
          "soft-deleted, kept 7 days by default, and parts of uploads it left open). Ours uploads each large file "
          "as one XML multipart upload, whose parts are never objects: nothing is left soft-deleted.")
    print(f"  note: GCS assembles a completed multipart upload by reference; the loopback front writes every byte "
          f"into fake-gcs-server again ({front.complete_seconds:.1f}s here, summed over files), so ours pays the "
          f"bucket writes twice.")


if __name__ == "__main__":
    main()
