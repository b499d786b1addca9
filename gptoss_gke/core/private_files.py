"""Temp files that may hold a secret (a registry auth file, say): private, short-lived, never left behind.

Each lives alone in a 0700 directory ``gptoss-gke-secret-<pid>-<random>`` under the system temp folder,
is created 0600 before a byte is written, and is removed when its block ends, however it ends: an
error, Ctrl-C or SIGTERM (they end the run through the normal path, see ``core/interrupt.py``). A run
killed outright (SIGKILL, a power cut, a second Ctrl-C) cannot clean up; the next run removes every such
directory whose process is gone (:func:`sweep_stale`, called at the start of every playbook).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

PREFIX = "gptoss-gke-secret-"


@contextmanager
def private_file(name: str, content: str) -> Iterator[str]:
    """A 0600 file holding ``content`` in a fresh 0700 directory; both removed when the block ends."""
    folder = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")  # 0700, owned by us
    try:
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine (the owner of a temp folder, a marker)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process (so the folder is not its, but it is running)
        return True
    return True


def sweep_stale(root: str | None = None) -> list[str]:
    """Remove our secret folders whose process no longer runs (a run that was killed); returns them."""
    root = root or tempfile.gettempdir()
    swept = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return swept
    me = os.getuid()
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        try:
            pid = int(entry.name[len(PREFIX):].split("-", 1)[0])
            info = entry.stat(follow_symlinks=False)
        except (ValueError, OSError):
            continue
        if not entry.is_dir(follow_symlinks=False) or info.st_uid != me or pid == os.getpid() or process_alive(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        swept.append(entry.path)
    return swept
