"""A no-op `inv setup-cluster` on a converged (emulated) cluster vs one `gcloud container clusters
describe`, same machine, one run. Goal (issue 3): <= 4x.

Both sides run the real gcloud against the loopback emulator in tests/emulators/gcp.py; nothing
leaves 127.0.0.1. Run from the repository root:

    python -m bench.bench_setup_cluster [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.common import INV, env_folder, timed
from tests.emulators.gcp import GcpEmulator, gcloud_env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, GcpEmulator(op_polls_before_done=0) as emu:
        env = gcloud_env(emu, Path(tmp), "test-project")
        env["GPTOSS_ENV_DIR"] = env_folder(tmp, f"project: test-project\nregion: us-central1\nzone: us-central1-a\n"
                                                f"models: {{bucket: test-project-models}}\n"
                                                f"kube: {{kubeconfig: {tmp}/kubeconfig}}\n")
        timed([INV, "setup-cluster"], env=env)  # converge once
        emu.clear_log()
        ours, describe = [], []
        for _ in range(args.runs):
            ours.append(timed([INV, "setup-cluster"], env=env))
            describe.append(timed(["gcloud", "container", "clusters", "describe", "gptoss",
                                   "--location=us-central1", "--format=json"], env=env))
        writes = emu.mutating_requests()
    o, d = statistics.median(ours), statistics.median(describe)
    print(f"no-op setup-cluster (2 targets) vs one clusters describe, median of {args.runs}")
    print(f"  gcloud clusters describe : {d:6.2f} s")
    print(f"  inv setup-cluster (no-op): {o:6.2f} s   mutating requests: {len(writes)}")
    print(f"  ratio                    : {o / d:6.2f}x   (goal <= 4x)")


if __name__ == "__main__":
    main()
