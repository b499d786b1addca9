"""Where chunks wait between download and upload: the temp-space budget, the buffers, and progress.

A chunk holds its bytes (in memory, or in a file under ``models.temp_dir`` when set) from download
until GCS has confirmed its upload. A byte budget — ``min(max_temp_gib, 2 × workers × chunk)`` — gates
each new download, so no more than that is ever held. The plan checks it against free memory (or the
temp dir's free disk) before a byte moves.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass

from gptoss_gke.core.report import format_duration, format_size
from gptoss_gke.errors import StepError

PROGRESS_KEY = "gptoss-progress"  # marks a pod's progress line in its log


@dataclass
class Tuning:
    chunk: int
    workers: int
    budget: int
    temp_dir: str | None

    @classmethod
    def from_settings(cls, s) -> "Tuning":
        m = s.models
        chunk = m.chunk_mib * 1024 * 1024
        cap = int(m.max_temp_gib * 1024 ** 3)
        if cap < chunk:
            raise StepError(f"models.max_temp_gib ({m.max_temp_gib}) is smaller than one chunk "
                            f"(models.chunk_mib = {m.chunk_mib})",
                            "raise models.max_temp_gib or lower models.chunk_mib")
        temp_dir = os.path.expanduser(m.temp_dir) if m.temp_dir else None
        return cls(chunk, m.workers, min(cap, 2 * m.workers * chunk), temp_dir)

    def check_space(self, to_move: int) -> None:
        """Before a byte moves: the budget must fit where chunks are held."""
        need = min(self.budget, max(to_move, 0))
        if self.temp_dir:
            try:
                os.makedirs(self.temp_dir, exist_ok=True)
                free = shutil.disk_usage(self.temp_dir).free
            except OSError as exc:
                raise StepError(f"models.temp_dir {self.temp_dir} is not usable: {exc}",
                                "point models.temp_dir at a writable directory") from None
            where = f"{self.temp_dir} (disk)"
        else:
            free = _available_memory()
            where = "memory"
            if free is None:
                return
        if need > free:
            raise StepError(
                f"not enough temp space: staging holds up to {format_size(need)} in flight (2 × models.workers × "
                f"models.chunk_mib, at most models.max_temp_gib) but {where} has {format_size(free)} free",
                "lower models.workers, models.chunk_mib or models.max_temp_gib, or set models.temp_dir to a "
                "disk with more room")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None



class Buffer:
    """One chunk's bytes: in memory (the pieces as they came off the socket), or in a file under
    models.temp_dir.

    In memory the chunk exists once: the hashes read the pieces, and the upload sends them as they are
    (:meth:`body`), with no joined copy and no 8 KiB re-reads of a file object on the way out.
    """

    def __init__(self, temp_dir: str | None):
        self._parts: list[bytes] = []
        self._file = tempfile.TemporaryFile(dir=temp_dir, prefix="gptoss-chunk-") if temp_dir else None
        self.size = 0

    def write(self, data: bytes) -> None:
        if self._file is not None:
            try:
                self._file.write(data)
            except OSError as exc:
                raise StepError(f"out of temp space in models.temp_dir ({exc.strerror})",
                                "free space there, lower models.max_temp_gib/workers, or point models.temp_dir "
                                "at a bigger disk") from None
        else:
            self._parts.append(data)
        self.size += len(data)

    def reset(self) -> None:
        self._parts = []
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
        self.size = 0

    def pieces(self, piece: int = 8 * 1024 * 1024):
        if self._file is None:
            yield from self._parts
            return
        self._file.seek(0)
        while True:
            data = self._file.read(piece)
            if not data:
                return
            yield data

    def body(self):
        """An upload body: the pieces themselves (a sized iterable: sent with a Content-Length, piece by
        piece, each as one write), or the file at its start (on disk)."""
        if self._file is not None:
            self._file.seek(0)
            return self._file
        return _Pieces(self._parts, self.size)

    def reader(self):
        """A file object (the storage client's uploads want one)."""
        import io

        if self._file is not None:
            self._file.seek(0)
            return self._file
        return io.BytesIO(b"".join(self._parts))

    def close(self) -> None:
        self._parts = []
        if self._file is not None:
            self._file.close()
            self._file = None


class _Pieces:
    """Bytes pieces as one request body: ``len`` gives requests the Content-Length, each iteration (a retry
    sends it again) yields the pieces in order."""

    def __init__(self, parts: list[bytes], size: int):
        self.parts, self.size = parts, size

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        return iter(list(self.parts))


class Budget:
    """Bytes held locally, at most ``limit`` (one chunk always fits)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()
        self.aborted = False

    def acquire(self, n: int) -> bool:
        with self.cond:
            while not self.aborted and self.used and self.used + n > self.limit:
                self.cond.wait(0.5)
            if self.aborted:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()


class Progress:
    """Bytes staged, rate and ETA: a live bar on a terminal, a line every few seconds otherwise."""

    def __init__(self, ctx, total: int, files: int, interval: float = 10.0):
        self.ctx = ctx
        self.total = total
        self.files = files
        self.done_bytes = 0
        self.done_files = 0
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        stream = ctx.printer.stream
        self.bar = None
        # In a pod of the in-cluster Job: one JSON line every 2 s, which the local run reads from the
        # pods' logs and sums into its one progress line (staging/incluster.py).
        self.json = ctx.fact("staging.progress", lambda: "text") == "json"
        if self.json:
            interval = 2.0
        elif hasattr(stream, "isatty") and stream.isatty() and shutil.get_terminal_size((0, 0)).columns >= 40:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc="    staging",
                            file=stream, dynamic_ncols=True, leave=False, mininterval=0.5)
        self.interval = interval
        self.thread = None
        if self.bar is None:
            self.thread = threading.Thread(target=self._ticker, daemon=True, name="stage-progress")
            self.thread.start()

    def add(self, n: int) -> None:
        with self.lock:
            self.done_bytes += n
        if self.bar is not None:
            self.bar.update(n)

    def file_done(self) -> None:
        with self.lock:
            self.done_files += 1

    def line(self) -> str:
        with self.lock:
            done, files = self.done_bytes, self.done_files
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        pct = 100.0 * done / self.total if self.total else 100.0
        eta = format_duration((self.total - done) / rate) if rate > 0 else "?"
        return (f"    staged {format_size(done)} of {format_size(self.total)} ({pct:.0f}%), {format_size(rate)}/s, ETA {eta}, "
                f"files {files}/{self.files}")

    def record(self) -> str:
        with self.lock:
            done, files = self.done_bytes, self.done_files
        return json.dumps({PROGRESS_KEY: 1, "bytes": done, "total": self.total, "files": files, "of": self.files,
                           "seconds": round(time.monotonic() - self.started, 1)})

    def _ticker(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.ctx.printer.line(self.record() if self.json else self.line(), None if self.json else "dim")

    def close(self) -> None:
        if self.json:
            self.ctx.printer.line(self.record(), None)  # the last word: what this pod moved
        self.stop_event.set()
        if self.bar is not None:
            self.bar.close()
        if self.thread is not None:
            self.thread.join(timeout=1)
