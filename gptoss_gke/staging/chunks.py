"""Where chunks wait between download and upload: the temp-space budget, the buffers, and progress.

A chunk holds its bytes (in memory, or in a file under ``models.temp_dir`` when set) from download
until GCS has confirmed its upload. A byte budget — ``min(max_temp_gib, 2 × workers × chunk)`` — gates
each new download, so no more than that is ever held. The plan checks it against free memory (or the
temp dir's free disk) before a byte moves.
"""

from __future__ import annotations

import functools
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
SCRATCH = 1024 * 1024  # on disk: what one socket read fills before it is written to the file


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



class ChunkMemory:
    """Chunk-sized memory, kept for the next chunk once a chunk is uploaded.

    A chunk's bytes are read from the socket straight into one of these (``readinto``): no bytes object per
    socket read, and no fresh memory for every chunk. Fresh memory is what cost most: the allocator hands
    freed megabytes back to the kernel, and every new 4 KiB page is then faulted in and zeroed again (one
    page fault per 4 KiB moved before, ~0.5 CPU-s per GB). A new one is an anonymous ``mmap`` (zeroed by the
    kernel, populated in one call where the system can: ``bytearray(n)`` would zero it in Python, holding the
    GIL the other threads need). At most ``budget / chunk`` full-size ones are in use at once (the budget
    gates every chunk), so that is all this ever holds; shorter chunks (a file's last, a small file) get
    memory of their own size.
    """

    def __init__(self, chunk: int):
        self.chunk = chunk
        self._free: list = []
        self._lock = threading.Lock()

    def take(self, length: int):
        if length == self.chunk:
            with self._lock:
                if self._free:
                    return self._free.pop()
        return new_memory(length)

    def give(self, data) -> None:
        if len(data) == self.chunk:
            with self._lock:
                self._free.append(data)


def new_memory(length: int):
    """``length`` writable zero bytes: an anonymous mapping when big (see :class:`ChunkMemory`)."""
    if length < SCRATCH or os.name != "posix":
        return bytearray(length)
    import mmap

    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(-1, length, flags=flags)


class Buffer:
    """One chunk's bytes: in memory (one block the socket reads into), or in a file under models.temp_dir.

    Filled through :meth:`space` (where the next bytes go: read into it) and :meth:`commit` (how many came),
    or :meth:`write` (a copy, for bytes that arrived as an object). In memory the chunk exists once: the
    hashes read it and the upload sends it (:meth:`body`) as one view of that block.
    """

    def __init__(self, temp_dir: str | None, length: int = 0, memory: ChunkMemory | None = None):
        self.size = 0
        self._memory = memory
        self._file = tempfile.TemporaryFile(dir=temp_dir, prefix="gptoss-chunk-") if temp_dir else None
        if self._file is None:
            self._data = memory.take(length) if memory is not None else new_memory(length)
        else:
            self._data = bytearray(min(max(length, 1), SCRATCH))  # a window the socket reads into, then written out
        self._view = memoryview(self._data)

    def space(self, n: int) -> memoryview:
        """Where the next ``n`` bytes go (read into it, then :meth:`commit`)."""
        if self._file is not None:
            return self._view[:min(n, len(self._data))]
        if self.size + n > len(self._data):  # more than announced (a caller that did not say): grow
            grown = bytearray(self._view[:self.size])
            grown.extend(bytes(n))
            self._view.release()
            self._data, self._view, self._memory = grown, memoryview(grown), None
        return self._view[self.size:self.size + n]

    def commit(self, n: int) -> None:
        if self._file is not None:
            self._write_file(self._view[:n])
        self.size += n

    def write(self, data) -> None:
        if self._file is not None:
            self._write_file(data)
            self.size += len(data)
            return
        self.space(len(data))[:] = data
        self.size += len(data)

    def _write_file(self, data) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise StepError(f"out of temp space in models.temp_dir ({exc.strerror})",
                            "free space there, lower models.max_temp_gib/workers, or point models.temp_dir "
                            "at a bigger disk") from None

    def reset(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
        self.size = 0

    def pieces(self, piece: int = 8 * 1024 * 1024):
        """The bytes in order: in memory one view of them all, on disk ``piece`` bytes at a time."""
        if self._file is None:
            yield self._view[:self.size]
            return
        self._file.seek(0)
        while True:
            data = self._file.read(piece)
            if not data:
                return
            yield data

    def body(self):
        """An upload body: a view of the bytes (sent with one ``sendall``, again as it is on a retry), or the
        file at its start (on disk)."""
        if self._file is not None:
            self._file.seek(0)
            return self._file
        return self._view[:self.size]

    def reader(self):
        """A file object (the storage client's single-request uploads want one; only files of one chunk)."""
        import io

        if self._file is not None:
            self._file.seek(0)
            return self._file
        return io.BytesIO(self._view[:self.size])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._memory is not None and self._data:
            self._memory.give(self._data)  # nothing reads it any more: the upload is confirmed or abandoned
        self._data = bytearray()
        self._view = memoryview(self._data)


def extend_crc32c(crc: int, data) -> int:
    """crc32c of ``data`` appended to bytes whose crc32c is ``crc``, with no copy of ``data``.

    google_crc32c's ``extend`` takes only ``bytes``: a view of a bytearray would have to be copied first.
    The C library it wraps (google/crc32c, whose public ``crc32c_extend`` takes a pointer and a length) is
    called directly on the view's memory instead; ctypes lets go of the GIL meanwhile. If that library cannot
    be reached (a build of google_crc32c without it), the bytes are copied and given to ``extend``.
    """
    import google_crc32c

    extend = _native_crc32c_extend()
    if extend is None or isinstance(data, bytes) or not len(data):
        return google_crc32c.extend(crc, bytes(data))
    import ctypes

    memory = (ctypes.c_char * len(data)).from_buffer(data)
    return extend(crc, ctypes.addressof(memory), len(data))


def combine_crc32c(crc_a: int, crc_b: int, length_b: int) -> int:
    """crc32c of A followed by B, from the crc32c of each and B's length (zlib's crc32_combine, for the
    crc32c polynomial): the file's crc32c follows from its parts' without reading the bytes a second time."""
    if length_b <= 0:
        return crc_a
    return _gf2_times(_zeros_operator(length_b), crc_a) ^ crc_b


_CRC32C_REFLECTED = 0x82F63B78


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, column) for column in matrix]


@functools.lru_cache(maxsize=16)
def _zeros_operator(nbytes: int) -> list[int]:
    """The matrix that moves a crc32c register past ``nbytes`` zero bytes (cached: parts share a length)."""
    step = [_CRC32C_REFLECTED] + [1 << n for n in range(31)]  # past one zero bit
    for _ in range(3):
        step = _gf2_square(step)  # 2, 4, 8 bits: one byte
    result = [1 << n for n in range(32)]
    while nbytes:
        if nbytes & 1:
            result = [_gf2_times(step, column) for column in result]
        nbytes >>= 1
        if nbytes:
            step = _gf2_square(step)
    return result


@functools.lru_cache(maxsize=1)
def _native_crc32c_extend():
    try:
        import ctypes

        from google_crc32c import _crc32c

        fn = ctypes.CDLL(_crc32c.__file__).crc32c_extend  # resolved through the extension's own library
        fn.restype, fn.argtypes = ctypes.c_uint32, [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        return fn
    except (ImportError, OSError, AttributeError):
        return None


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
