"""`inv --list` on our collection vs invoke with an empty collection, same machine, one run.

Goal: ratio <= 1.3 (medians). Each side is timed over N runs, alternating, so a busy moment on the
machine hits both sides alike; min/median/max and the load average are printed beside the ratio.

    .venv/bin/python -m bench.bench_cli_startup [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import INV, REPO, load, seconds, timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    before = load()
    with tempfile.TemporaryDirectory() as empty:
        Path(empty, "tasks.py").write_text("from invoke import Collection\n\nns = Collection()\n")
        # invoke exits 1 on an empty collection ("No tasks found") after loading it fully: the
        # baseline's exit status is expected and ignored.
        timed([INV, "--list"]), timed([INV, "--list"], cwd=Path(empty), check=False)  # warm caches and .pyc files
        ours, base = [], []
        for _ in range(args.runs):
            ours.append(timed([INV, "--list"], cwd=REPO))
            base.append(timed([INV, "--list"], cwd=Path(empty), check=False))
    o, b = statistics.median(ours), statistics.median(base)
    print(f"inv --list, {args.runs} runs each (python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"load {before:.2f} → {load():.2f})")
    print(f"  empty collection : {seconds(base, 1000, 'ms')}")
    print(f"  gptoss-gke       : {seconds(ours, 1000, 'ms')}")
    print(f"  ratio of medians : {o / b:7.2f}x   (goal <= 1.30x)")


if __name__ == "__main__":
    main()
