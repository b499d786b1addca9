"""Shipping this checkout to a host: the package as a deterministic tarball, unpacked in a private dir.

The remote side checks the digest of what it imported against the one computed here
(``entry.tree_digest``), so it runs exactly this checkout, never an installed copy.
"""

from __future__ import annotations

import io
import json
import posixpath
import shlex
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from gptoss_gke.errors import StepError
from gptoss_gke.remote.entry import package_files, tree_digest
from gptoss_gke.remote.session import RemoteSession, remote_cmd_path

_UNPACK = r"""
import sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    if hasattr(tarfile, "data_filter"):
        t.extractall(sys.argv[2], filter="data")
    else:
        t.extractall(sys.argv[2])
"""


@dataclass
class Bundle:
    data: bytes  # tar.gz of gptoss_gke/ (+ SHIPPED.json)
    marker: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return self.marker["sha256"]

    def describe(self) -> str:
        commit = self.marker.get("commit")
        rev = f" @ {commit[:12]}{'+local changes' if self.marker.get('dirty') else ''}" if commit else ""
        return f"gptoss-gke {self.marker['version']}{rev} (code sha256 {self.sha256[:12]})"


def _git_state(root: Path) -> tuple[str | None, bool]:
    """(HEAD commit, package files differ from it) — read-only git calls; (None, False) outside git."""
    if not (root / ".git").exists():
        return None, False
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        status = subprocess.run(["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain", "--",
                                 "gptoss_gke"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None, False
    if head.returncode != 0:
        return None, False
    return head.stdout.strip(), bool(status.stdout.strip())


def code_bundle() -> Bundle:
    """This very checkout's package as a deterministic tarball, with a version marker."""
    import gptoss_gke

    package = Path(gptoss_gke.__file__).resolve().parent
    commit, dirty = _git_state(package.parent)
    files = package_files(package)
    marker = {"tool": gptoss_gke.TOOL_NAME, "version": gptoss_gke.__version__, "commit": commit, "dirty": dirty,
              "sha256": tree_digest(package), "files": len(files)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            tar.addfile(info, io.BytesIO(data))

        for path in files:
            add("gptoss_gke/" + path.relative_to(package).as_posix(), path.read_bytes())
        add("SHIPPED.json", json.dumps(marker, indent=2).encode())
    return Bundle(buf.getvalue(), marker)



def ship(session: RemoteSession, bundle: Bundle, workdir: str) -> str:
    """Upload and unpack ``bundle`` into ``workdir`` on the host; returns where the code is."""
    py = remote_cmd_path(session.settings.python)
    archive = session.put_private(bundle.data, "code.tar.gz", directory=workdir)
    code = posixpath.join(workdir, "code")
    res = session.run_plain(f"{py} -c {shlex.quote(_UNPACK)} {shlex.quote(archive)} {shlex.quote(code)} && "
                            f"rm -f {shlex.quote(archive)}", doing="unpacking the code")
    if res.exited != 0:
        raise StepError(f"cannot unpack the code on {session.label}: {(res.stderr or res.stdout).strip()[-300:]}",
                        "check free space in /tmp (or $TMPDIR) there")
    return code
