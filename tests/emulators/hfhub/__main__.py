"""Standalone emulator: ``python -m tests.emulators.hfhub``."""

from __future__ import annotations

import time

from .repos import make_gptoss_like_repo
from .server import HubEmulator


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - manual use
    """Run a standalone emulator with a gpt-oss-like repo: ``python -m tests.emulators.hfhub``."""
    import argparse
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--repo", default="openai/gpt-oss-mini")
    ap.add_argument("--shard-size", type=int, default=8 * 1024 * 1024)
    ap.add_argument("--lfs-redirect", action="store_true")
    args = ap.parse_args(argv)
    with HubEmulator(lfs_redirect=args.lfs_redirect) as hub:
        sha = make_gptoss_like_repo(hub, args.repo, shard_size=args.shard_size)
        print(f"HF_ENDPOINT={hub.url}  repo={args.repo}@{sha}  token={hub.token}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()
