"""A no-op `inv setup-cluster` on a converged (emulated) cluster vs one `gcloud container clusters
describe`, same machine, one run. Goal (issue 3): <= 4x.

Both sides run the real gcloud against the loopback emulator in tests/emulators/gcp.py; nothing
leaves 127.0.0.1. Run from the repository root:

    python -m bench.bench_setup_cluster [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.emulators.gcp import GcpEmulator, gcloud_env

REPO = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).with_name("inv"))


def timed(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, GcpEmulator(op_polls_before_done=0) as emu:
        env = gcloud_env(emu, Path(tmp), "test-project")
        folder = Path(tmp, "env")
        folder.mkdir()
        folder.joinpath("dev.yaml").write_text(
            f"project: test-project\nregion: us-central1\nzone: us-central1-a\n"
            f"models: {{bucket: test-project-models}}\nkube: {{kubeconfig: {tmp}/kubeconfig}}\n")
        env["GPTOSS_ENV_DIR"] = str(folder)
        timed([INV, "setup-cluster"], env)  # converge once
        emu.clear_log()
        ours, describe = [], []
        for _ in range(args.runs):
            ours.append(timed([INV, "setup-cluster"], env))
            describe.append(timed(["gcloud", "container", "clusters", "describe", "gptoss",
                                   "--location=us-central1", "--format=json"], env))
        writes = emu.mutating_requests()
    o, d = statistics.median(ours), statistics.median(describe)
    print(f"no-op setup-cluster (2 targets) vs one clusters describe, median of {args.runs}")
    print(f"  gcloud clusters describe : {d:6.2f} s")
    print(f"  inv setup-cluster (no-op): {o:6.2f} s   mutating requests: {len(writes)}")
    print(f"  ratio                    : {o / d:6.2f}x   (goal <= 4x)")


if __name__ == "__main__":
    main()
