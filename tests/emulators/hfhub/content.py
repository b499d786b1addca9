"""Content model of the hub emulator: constants, file sources (:class:`Synthetic`, bytes), hashing,
file entries, commits, repos and ``.gitattributes`` LFS patterns."""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import random
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator, Mapping


DEFAULT_TOKEN = "hf_emulator_0123456789abcdefghijklmnopqrstuv"
LOOPBACK = "127.0.0.1"
_BLOCK = 1 << 20  # synthetic content is generated per 1 MiB block
_SEND_CHUNK = 1 << 20
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API_TAILS = {"revision", "tree", "paths-info", "refs", "commits", "resolve"}
_BASE_DATE = _dt.datetime(2025, 8, 5, 0, 0, 0, tzinfo=_dt.timezone.utc)

# Patterns the hub's default .gitattributes tracks with LFS (a subset, written for this emulator).
DEFAULT_LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5", "*.joblib",
    "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet",
    "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tflite",
    "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)


def _default_gitattributes(extra: tuple[str, ...] = ()) -> bytes:
    lines = [f"{p} filter=lfs diff=lfs merge=lfs -text" for p in (*DEFAULT_LFS_PATTERNS, *extra)]
    return ("\n".join(lines) + "\n").encode()


def _iso(d: _dt.datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%S.000Z")


# --------------------------------------------------------------------------------------------------
# File content
# --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=16)
def _base_block(seed: str) -> bytes:
    return random.Random(f"hfhub-emulator:{seed}").randbytes(_BLOCK)


class Synthetic:
    """Deterministic pseudo-random content of ``size`` bytes, never materialised as a whole.

    Block ``i`` (1 MiB) is a rotation of a per-seed random block, so any byte range can be produced
    directly (Range requests, resumes) and generation runs at memory-copy speed. ``prefix`` overlays the
    first bytes (e.g. a safetensors header) on top of the generated stream.
    """

    def __init__(self, size: int, seed: Any = 0, prefix: bytes = b""):
        if size < 0 or len(prefix) > size:
            raise ValueError("size must be >= 0 and >= len(prefix)")
        self.size = int(size)
        self.seed = str(seed)
        self.prefix = bytes(prefix)

    @property
    def identity(self) -> tuple:
        return ("synthetic", self.size, self.seed, hashlib.sha1(self.prefix).hexdigest())

    def _block(self, index: int) -> bytes:
        base = _base_block(self.seed)
        r = (index * 0x9E3779B1 + 0x51ED) % _BLOCK
        return base[r:] + base[:r]

    def iter_range(self, start: int = 0, end: int | None = None, chunk: int = _SEND_CHUNK) -> Iterator[bytes]:
        end = self.size if end is None else min(end, self.size)
        pos = start
        cached_index, cached = -1, b""
        plen = len(self.prefix)
        while pos < end:
            index, off = divmod(pos, _BLOCK)
            if index != cached_index:
                cached_index, cached = index, self._block(index)
            take = min(_BLOCK - off, end - pos, chunk)
            data = cached[off:off + take]
            if pos < plen:
                head = self.prefix[pos:pos + take]
                data = head + data[len(head):]
            yield data
            pos += take

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(self.iter_range(start, end))

    def __repr__(self) -> str:
        return f"Synthetic(size={self.size}, seed={self.seed!r}, prefix={len(self.prefix)}B)"


class _BytesSource:
    def __init__(self, data: bytes):
        self.data = bytes(data)
        self.size = len(self.data)
        self.identity = ("bytes", hashlib.sha1(self.data).hexdigest())

    def iter_range(self, start: int = 0, end: int | None = None, chunk: int = _SEND_CHUNK) -> Iterator[bytes]:
        end = self.size if end is None else min(end, self.size)
        view = memoryview(self.data)
        for pos in range(start, end, chunk):
            yield bytes(view[pos:min(pos + chunk, end)])

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        return self.data[start:end]


def _as_source(value: Any) -> Synthetic | _BytesSource:
    if isinstance(value, (Synthetic, _BytesSource)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _BytesSource(bytes(value))
    if isinstance(value, str):
        return _BytesSource(value.encode())
    if isinstance(value, tuple) and len(value) == 2:
        return Synthetic(int(value[0]), value[1])
    raise TypeError(f"file content must be bytes, str, (size, seed) or Synthetic, not {type(value).__name__}")


_HASH_CACHE: dict[tuple, dict[str, str]] = {}
_HASH_LOCK = threading.Lock()
_HASH_KEY_LOCKS: dict[tuple, threading.Lock] = defaultdict(threading.Lock)


def _content_hashes(source: Synthetic | _BytesSource) -> dict[str, str]:
    """sha256 and git blob sha1 of a source (streamed, cached process-wide by content identity)."""
    key = source.identity
    with _HASH_LOCK:
        if key in _HASH_CACHE:
            return _HASH_CACHE[key]
        key_lock = _HASH_KEY_LOCKS[key]
    with key_lock:
        with _HASH_LOCK:
            if key in _HASH_CACHE:
                return _HASH_CACHE[key]
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % source.size)
        for chunk in source.iter_range():
            sha256.update(chunk)
            sha1.update(chunk)
        result = {"sha256": sha256.hexdigest(), "git_sha1": sha1.hexdigest()}
        with _HASH_LOCK:
            _HASH_CACHE[key] = result
        return result


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _FileEntry:
    """One file version. Shared by every commit in which it is unchanged."""

    def __init__(self, path: str, source: Synthetic | _BytesSource, is_lfs: bool):
        self.path = path
        self.source = source
        self.size = source.size
        self.is_lfs = is_lfs
        self.commit: _Commit | None = None  # commit that introduced this version

    @property
    def sha256(self) -> str:
        return _content_hashes(self.source)["sha256"]

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n").encode()

    @property
    def git_oid(self) -> str:
        """The git blob id: of the LFS pointer for LFS files, of the content otherwise."""
        if self.is_lfs:
            return _git_blob_sha1(self.pointer)
        return _content_hashes(self.source)["git_sha1"]

    @property
    def etag(self) -> str:
        return self.sha256 if self.is_lfs else self.git_oid


@dataclass
class _Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    date: _dt.datetime
    files: dict[str, _FileEntry]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    gated: Any  # False | "auto" | "manual"
    authorized_tokens: set[str]
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    created_at: _dt.datetime = _BASE_DATE

    def resolve(self, rev: str) -> _Commit | None:
        for prefix, table in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if rev.startswith(prefix) and rev[len(prefix):] in table:
                return self.commits[table[rev[len(prefix):]]]
        if rev in self.branches:
            return self.commits[self.branches[rev]]
        if rev in self.tags:
            return self.commits[self.tags[rev]]
        if _HEX40.match(rev) and rev in self.commits:
            return self.commits[rev]
        return None


def _lfs_patterns(files: Mapping[str, _FileEntry] | Mapping[str, Any]) -> list[str]:
    ga = files.get(".gitattributes")
    if ga is None:
        return list(DEFAULT_LFS_PATTERNS)
    source = ga.source if isinstance(ga, _FileEntry) else _as_source(ga)
    patterns = []
    for line in source.read().decode("utf-8", "replace").splitlines():
        parts = line.strip().split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches_gitattributes(path: str, pattern: str) -> bool:
    if "/" in pattern.strip("/"):
        return fnmatch.fnmatchcase(path, pattern.lstrip("/"))
    return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern.strip("/"))
