"""How fast Ctrl-C stops a run: SIGINT to `inv setup-cluster` while gcloud waits on a node-pool create
(held RUNNING by the loopback GKE emulator), until `inv` has exited with gcloud terminated. Goal: well
inside the 5 s grace a child gets before SIGKILL (the exit needs no SIGKILL at all).

The real gcloud against tests/emulators/gcp.py; nothing leaves 127.0.0.1. From the repository root:

    python -m bench.bench_interrupt [--runs 3] [--signal INT|TERM]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import INV, REPO, env_folder
from tests.emulators.gcp import GcpEmulator, gcloud_env


def one(env: dict, emu: GcpEmulator, signum: int) -> tuple[float, int]:
    hold = emu.hold_operations(r"/nodePools$", method="POST")
    proc = subprocess.Popen([INV, "setup-cluster", "--target=l4"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if not hold.started.wait(120):
            raise SystemExit("the node-pool create never started")
        started = time.perf_counter()
        os.kill(proc.pid, signum)
        proc.wait(timeout=60)
        return time.perf_counter() - started, proc.returncode
    finally:
        hold.release()
        if proc.poll() is None:
            proc.kill()
        emu.finish_operations()
        emu.clear_faults()
        with emu.lock:  # start the next run from "no pool" again
            emu.state.nodepools.pop(("test-project", "us-central1", "gptoss", "l4-gptoss"), None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--signal", default="INT", choices=["INT", "TERM"])
    args = parser.parse_args()
    signum = getattr(signal, f"SIG{args.signal}")
    with tempfile.TemporaryDirectory() as tmp, GcpEmulator(op_polls_before_done=0) as emu:
        env = gcloud_env(emu, Path(tmp), "test-project")
        env["GPTOSS_ENV_DIR"] = env_folder(tmp, f"project: test-project\nregion: us-central1\nzone: us-central1-a\n"
                                                f"kube: {{kubeconfig: {tmp}/kubeconfig}}\n")
        times, codes = [], set()
        for _ in range(args.runs):
            elapsed, code = one(env, emu, signum)
            times.append(elapsed)
            codes.add(code)
    print(f"SIG{args.signal} to inv during a node-pool create → inv exited, median of {args.runs}")
    print(f"  signal → exit : {statistics.median(times):6.2f} s   (max {max(times):.2f} s; goal well under 5 s)")
    print(f"  exit statuses : {sorted(codes)}   (expected {128 + signum})")


if __name__ == "__main__":
    main()
