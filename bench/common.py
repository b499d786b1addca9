"""What the benchmarks share: where the repository and `inv` are, one way to time a command, the load."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).with_name("inv"))


def timed(argv: list[str], *, cwd: Path = REPO, env: dict | None = None, check: bool = True) -> float:
    """Seconds the command took; a failure (when checked) ends the benchmark with its output."""
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if check and proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def seconds(values: list[float], unit: float = 1.0, suffix: str = "s") -> str:
    """min / median / max, so one busy moment shows as what it is."""
    return "  ".join(f"{name} {f(values) * unit:7.1f} {suffix}" for name, f in
                     (("min", min), ("median", statistics.median), ("max", max)))


def load() -> float:
    """The 1-minute load average: a benchmark on a shared 2-core machine says what it ran beside."""
    return os.getloadavg()[0]


def env_folder(tmp: str | Path, text: str) -> str:
    """A throwaway env/dev.yaml; returns the folder for GPTOSS_ENV_DIR."""
    folder = Path(tmp, "env")
    folder.mkdir(exist_ok=True)
    folder.joinpath("dev.yaml").write_text(text)
    return str(folder)
