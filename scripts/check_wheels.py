"""Can every supported Python install us from binary wheels alone, on the platforms users have?

For each minor version from the oldest `requires-python` allows up to --newest, and for Linux x86_64,
Linux arm64 and macOS arm64, resolve the project's declared dependencies (pyproject.toml, plus the
`test` extra with --with-test) with `uv pip compile --only-binary :all:` for that interpreter and
platform. uv evaluates environment markers and wheel tags for the *target*, not for this machine,
which `pip download --platform` does not. Nothing is installed or downloaded beyond index metadata.

    .venv/bin/pip install uv && .venv/bin/python scripts/check_wheels.py [--newest 3.14] [--with-test]

Prints one line per version × platform and exits 1 if any combination has no wheel for something.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLATFORMS = {
    "linux x86_64": "x86_64-unknown-linux-gnu",
    "linux arm64": "aarch64-unknown-linux-gnu",
    "macOS arm64": "aarch64-apple-darwin",
}


def oldest_supported() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'requires-python\s*=\s*">=\s*(\d+)\.(\d+)', text)
    if not m:
        sys.exit("pyproject.toml: requires-python has no lower bound (>=X.Y) to start from")
    return int(m.group(1)), int(m.group(2))


def uv_command() -> list[str]:
    found = shutil.which("uv") or (Path(sys.executable).with_name("uv") if Path(sys.executable).with_name("uv")
                                   .exists() else None)
    if not found:
        sys.exit("uv is not installed: `.venv/bin/pip install uv` (it resolves for another platform and Python "
                 "than this one)")
    return [str(found)]


def resolve(uv: list[str], version: str, platform: str, with_test: bool) -> tuple[bool, str]:
    argv = [*uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--quiet", "--no-header", "--no-annotate",
            "--python-version", version, "--python-platform", platform, "--only-binary", ":all:", "--native-tls"]
    if with_test:
        argv += ["--extra", "test"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if proc.returncode == 0:
        pins = [ln for ln in proc.stdout.splitlines() if ln and not ln.startswith("#")]
        return True, f"{len(pins)} packages, all as wheels"
    # uv explains the first package without a wheel in its last lines.
    reason = " ".join(ln.strip() for ln in proc.stderr.strip().splitlines() if ln.strip())
    return False, reason[-400:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--newest", default="3.14", help="the newest minor version to check (default 3.14)")
    parser.add_argument("--with-test", action="store_true", help="also resolve the `test` extra")
    args = parser.parse_args()
    major, oldest = oldest_supported()
    newest = int(args.newest.split(".")[1])
    versions = [f"{major}.{minor}" for minor in range(oldest, newest + 1)]
    uv = uv_command()
    combos = [(v, label, plat) for v in versions for label, plat in PLATFORMS.items()]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: resolve(uv, c[0], c[2], args.with_test), combos))
    missing = 0
    scope = "dependencies + test extra" if args.with_test else "dependencies"
    print(f"binary wheels for the declared {scope}, Python {versions[0]} … {versions[-1]}:")
    for (version, label, _), (ok, detail) in zip(combos, results):
        missing += not ok
        print(f"  {'ok  ' if ok else 'MISS'} Python {version:<5} {label:<13} {detail}")
    print(f"{len(combos) - missing}/{len(combos)} combinations resolve from wheels alone")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
