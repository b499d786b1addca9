"""Loopback emulator of the Hugging Face Hub, enough for the real ``huggingface_hub`` 2.4 client.

One :class:`HubEmulator` runs a real HTTP/1.1 server on ``127.0.0.1`` (ephemeral port, background thread,
one thread per connection, keep-alive) and, optionally, a second "CDN" listener on another loopback port
that LFS files are redirected to (``lfs_redirect=True``), as the real hub redirects to signed storage URLs.
Nothing here opens a socket to anything but 127.0.0.1; the :func:`hf_hub` fixture also installs a socket
guard that refuses any non-loopback connection or DNS lookup for the duration of the test.

Endpoints (``{type}`` is ``models``, ``datasets`` or ``spaces``; revision segments are URL-encoded):

* ``GET /api/{type}/{repo}`` and ``GET /api/{type}/{repo}/revision/{rev}``: repo info (``id``, 40-hex ``sha``,
  ``siblings``, ``private``, ``gated``, ...); ``?blobs=true`` adds ``size``/``blobId``/``lfs`` to siblings.
* ``GET /api/{type}/{repo}/tree/{rev}[/{path}]?recursive=&expand=&cursor=``: tree listing, paginated with
  a ``Link: <...>; rel="next"`` header (``tree_page_size`` entries per page, 50 with ``expand``).
* ``POST /api/{type}/{repo}/paths-info/{rev}`` (form or JSON: ``paths``, ``expand``).
* ``GET /api/{type}/{repo}/refs``, ``GET /api/{type}/{repo}/commits/{rev}``, ``GET /api/whoami-v2``.
* ``HEAD``/``GET /[{type}/]{repo}/resolve/{rev}/{path}``: file content with ``X-Repo-Commit``, ``ETag``
  (quoted sha256 for LFS files, quoted git blob sha1 otherwise), ``X-Linked-Etag``/``X-Linked-Size`` for LFS
  files, ``Content-Length``, ``Accept-Ranges: bytes``; ``Range`` gives 206 + ``Content-Range`` (416 when
  unsatisfiable). With ``lfs_redirect=True`` LFS files answer ``302`` to the CDN listener instead.

Errors mirror the hub (header ``X-Error-Code`` + ``X-Error-Message`` + JSON ``{"error": ...}``), which is what
``huggingface_hub.utils.hf_raise_for_status`` maps to exceptions:

* unknown repo, or private repo without an authorized token: ``401`` (no token) / ``404`` (valid token),
  ``X-Error-Code: RepoNotFound`` -> ``RepositoryNotFoundError``;
* unknown revision: ``404 RevisionNotFound`` -> ``RevisionNotFoundError``;
* unknown file: ``404 EntryNotFound`` (with ``X-Repo-Commit``) -> ``RemoteEntryNotFoundError``;
* gated repo file without token: ``401 GatedRepo``; with a valid but unauthorized token: ``403 GatedRepo``
  -> ``GatedRepoError`` (metadata endpoints of a gated repo stay public, as on the hub);
* a token the hub does not know: ``401`` with message "Invalid credentials in Authorization header" and no
  error code -> plain ``HfHubHTTPError`` (any endpoint, as on the hub).

Files are either ``bytes`` (held in memory) or :class:`Synthetic` (``(size, seed)``): deterministic
pseudo-random content generated per 1 MiB block, so multi-GB files are served, hashed and range-read with
constant memory. sha256 / git oids of synthetic files are computed lazily (first listing or download) and
cached process-wide.

Test hooks: ``bytes_served`` (+ per file), ``requests`` (method, path, range, had_token, status, ...; the
token value is never stored), ``corrupt``, ``drop_after``, ``inject``, ``slow``, ``slow_edge`` (one response
crawls), ``commit`` (move a branch).
"""

from __future__ import annotations

import base64
import datetime as _dt
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import mimetypes
import os
import random
import re
import socket
import struct
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

try:  # pytest is optional for importing the emulator itself.
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

__all__ = [
    "DEFAULT_TOKEN",
    "HubEmulator",
    "RequestRecord",
    "Synthetic",
    "gptoss_like_layout",
    "hf_client_env",
    "hf_hub",
    "loopback_only",
    "make_gptoss_like_repo",
]

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


# --------------------------------------------------------------------------------------------------
# Request log and fault rules
# --------------------------------------------------------------------------------------------------

@dataclass
class RequestRecord:
    """One request as the emulator saw it. ``had_token`` says whether an ``Authorization`` header came;
    the token itself is never kept."""

    method: str
    path: str  # URL path, percent-decoded, without query
    query: str
    range: str | None
    had_token: bool
    server: str  # "hub" or "cdn"
    repo_id: str | None = None
    file: str | None = None
    revision: str | None = None
    status: int | None = None
    bytes_sent: int = 0  # file-content body bytes (0 for API calls)
    aborted: bool = False  # connection cut by drop_after
    injected: bool = False  # answered by an inject() rule
    time: float = 0.0


@dataclass
class _Rule:
    kind: str
    times: int | None  # None = forever
    repo_id: str | None = None
    path: str | None = None
    method: str | None = None
    regex: re.Pattern | None = None
    offset: int = 0
    nbytes: int = 0
    mode: str = "fin"
    status: int = 500
    error_code: str | None = None
    message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def take(self) -> bool:
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: bytes | None = None, content_type: str = "application/json; charset=utf-8"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})
        self.body = body if body is not None else json.dumps({"error": message}).encode()
        self.content_type = content_type


class _Abort(Exception):
    """Connection deliberately cut mid-body."""


# --------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, hub: "HubEmulator", kind: str):
        self.hub, self.kind = hub, kind
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__((LOOPBACK, 0), _Handler)

    def process_request(self, request, client_address):
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):  # client went away: not an error worth printing
        import sys
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hfhub-emulator/1"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def _go(self):
        self.server.hub._dispatch(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _go


# --------------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------------

class HubEmulator:
    """A loopback Hugging Face Hub. Use as a context manager, or ``start()`` / ``stop()``.

    ``token`` is the hub's one known user token, authorized on every gated/private repo unless
    ``authorized_tokens`` says otherwise; ``add_token()`` registers more valid (possibly unauthorized) tokens.
    """

    def __init__(self, token: str = DEFAULT_TOKEN, *, lfs_redirect: bool = False, tree_page_size: int = 1000,
                 lfs_threshold: int = 10 * 1024 * 1024):
        self.token = token
        self.lfs_redirect = lfs_redirect
        self.tree_page_size = tree_page_size
        self.lfs_threshold = lfs_threshold
        self._tokens: set[str] = {token}
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._requests: list[RequestRecord] = []
        self._bytes_total = 0
        self._bytes_by_file: dict[tuple[str, str], int] = defaultdict(int)
        self._rules: list[_Rule] = []
        self._bps: float | None = None
        self._secret = os.urandom(16)
        self._hub: _Server | None = None
        self._cdn: _Server | None = None
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "HubEmulator":
        if self._hub is not None:
            return self
        self._hub = _Server(self, "hub")
        self._cdn = _Server(self, "cdn")
        for srv in (self._hub, self._cdn):
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                 name=f"hfhub-emulator-{srv.kind}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in (self._hub, self._cdn):
            if srv is None:
                continue
            srv.shutdown()
            with srv.conn_lock:
                conns = list(srv.connections)
            for conn in conns:  # wake handler threads parked on idle keep-alive connections
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self._hub = self._cdn = None

    def __enter__(self) -> "HubEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint to give ``huggingface_hub`` (``HF_ENDPOINT`` / ``endpoint=``)."""
        assert self._hub is not None, "emulator not started"
        return f"http://{LOOPBACK}:{self._hub.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        assert self._cdn is not None, "emulator not started"
        return f"http://{LOOPBACK}:{self._cdn.server_address[1]}"

    def env(self, hf_home: str | os.PathLike) -> dict[str, str]:
        """Environment variables pointing a (sub)process's huggingface_hub at this emulator."""
        return hf_client_env(self.url, hf_home)

    # ---------------------------------------------------------------- content
    def add_token(self, token: str) -> None:
        """Make ``token`` a valid user token (authenticated, but authorized only where listed)."""
        with self._lock:
            self._tokens.add(token)

    def add_repo(self, repo_id: str, files: Mapping[str, Any], *, gated: Any = False, private: bool = False,
                 branch: str = "main", repo_type: str = "model", message: str = "Initial commit",
                 add_gitattributes: bool = True, authorized_tokens: set[str] | None = None) -> str:
        """Create a repo whose first commit on ``branch`` holds ``files``; returns the commit sha.

        ``files`` maps repo paths to ``bytes``/``str`` (kept in memory), ``(size, seed)`` or
        :class:`Synthetic` (generated on the fly). A file is LFS when it matches the repo's
        ``.gitattributes`` (a default one is added unless given or ``add_gitattributes=False``; without any,
        the default patterns apply) or is at least ``lfs_threshold`` bytes. ``gated`` may be True
        (= "manual"), "auto" or "manual".
        """
        files = dict(files)
        if add_gitattributes and ".gitattributes" not in files:
            files[".gitattributes"] = _default_gitattributes()
        key = (repo_type, repo_id)
        with self._lock:
            if key in self._repos:
                raise ValueError(f"repo {repo_type}:{repo_id} exists")
            repo = _Repo(
                repo_type=repo_type, repo_id=repo_id, private=bool(private),
                gated=("manual" if gated is True else gated) or False,
                authorized_tokens=set(authorized_tokens) if authorized_tokens is not None else {self.token},
            )
            self._tokens |= repo.authorized_tokens
            self._repos[key] = repo
            return self._commit(repo, files, branch=branch, message=message, base=None)

    def commit(self, repo_id: str, changes: Mapping[str, Any], *, branch: str = "main", message: str | None = None,
               repo_type: str = "model") -> str:
        """Add a commit on ``branch`` (created from nothing if absent): ``changes`` maps paths to new content,
        or to ``None`` to delete. Returns the new sha; the previous commit stays reachable by its sha."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            base = repo.commits[repo.branches[branch]] if branch in repo.branches else None
            return self._commit(repo, dict(changes), branch=branch,
                                message=message or f"Update {', '.join(sorted(changes)) or 'nothing'}", base=base)

    def set_ref(self, repo_id: str, name: str, sha: str | None = None, *, tag: bool = False,
                repo_type: str = "model") -> None:
        """Point branch (or tag) ``name`` at ``sha`` (default: the head of ``main``)."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            sha = sha or repo.branches["main"]
            if sha not in repo.commits:
                raise KeyError(sha)
            (repo.tags if tag else repo.branches)[name] = sha

    def delete_repo(self, repo_id: str, repo_type: str = "model") -> None:
        with self._lock:
            del self._repos[(repo_type, repo_id)]

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            return self._repo(repo_id, repo_type).branches[branch]

    def file_info(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> dict:
        """``{"size", "sha256", "git_oid", "lfs", "etag"}`` as published (corruption does not change it)."""
        entry = self._entry(repo_id, path, revision, repo_type)
        return {"size": entry.size, "sha256": entry.sha256, "git_oid": entry.git_oid, "lfs": entry.is_lfs,
                "etag": entry.etag}

    def content(self, repo_id: str, path: str, revision: str = "main", start: int = 0, end: int | None = None,
                repo_type: str = "model") -> bytes:
        """The original bytes of a file (or a slice). Mind the size of synthetic files."""
        return self._entry(repo_id, path, revision, repo_type).source.read(start, end)

    def list_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        with self._lock:
            commit = self._repo(repo_id, repo_type).resolve(revision)
            return sorted(commit.files)

    def _repo(self, repo_id: str, repo_type: str = "model") -> _Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no repo {repo_type}:{repo_id}") from None

    def _entry(self, repo_id: str, path: str, revision: str, repo_type: str) -> _FileEntry:
        with self._lock:
            commit = self._repo(repo_id, repo_type).resolve(revision)
            if commit is None:
                raise KeyError(revision)
            return commit.files[path]

    def _commit(self, repo: _Repo, changes: dict[str, Any], *, branch: str, message: str,
                base: _Commit | None) -> str:
        files: dict[str, _FileEntry] = dict(base.files) if base else {}
        sources = {p: (None if v is None else _as_source(v)) for p, v in changes.items()}
        for p, s in sources.items():
            if s is None:
                files.pop(p, None)
        # LFS tracking follows the .gitattributes of the resulting tree.
        pending = {p: s for p, s in sources.items() if s is not None}
        ga = pending.get(".gitattributes")
        patterns = _lfs_patterns({".gitattributes": ga} if ga is not None else files)
        new_entries = []
        for p, s in pending.items():
            p = p.strip("/")
            if not p or "//" in p or p.startswith("../") or "/../" in p:
                raise ValueError(f"bad repo path {p!r}")
            is_lfs = s.size >= self.lfs_threshold or any(_matches_gitattributes(p, pat) for pat in patterns)
            entry = _FileEntry(p, s, is_lfs)
            files[p] = entry
            new_entries.append(entry)
        index = len(repo.commits)
        ident = json.dumps({
            "repo": f"{repo.repo_type}:{repo.repo_id}", "parent": base.sha if base else None, "message": message,
            "n": index, "files": sorted((p, list(e.source.identity), e.is_lfs) for p, e in files.items()),
        }).encode()
        sha = hashlib.sha1(b"commit %d\0" % len(ident) + ident).hexdigest()
        title = message.splitlines()[0] if message else ""
        commit = _Commit(sha=sha, parent=base.sha if base else None, title=title, message=message,
                         date=_BASE_DATE + _dt.timedelta(minutes=index), files=files)
        for e in new_entries:
            e.commit = commit
        repo.commits[sha] = commit
        repo.branches[branch] = sha
        return sha

    # ---------------------------------------------------------------- accounting
    @property
    def bytes_served(self) -> int:
        """File-content body bytes written (resolve + CDN), all files."""
        with self._lock:
            return self._bytes_total

    @property
    def bytes_served_by_file(self) -> dict[tuple[str, str], int]:
        """``{(repo_id, path): bytes}`` of file content written."""
        with self._lock:
            return dict(self._bytes_by_file)

    def bytes_served_for(self, repo_id: str, path: str | None = None) -> int:
        with self._lock:
            return sum(n for (r, p), n in self._bytes_by_file.items() if r == repo_id and (path is None or p == path))

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def find_requests(self, method: str | None = None, path_regex: str | None = None,
                      server: str | None = None) -> list[RequestRecord]:
        rx = re.compile(path_regex) if path_regex else None
        return [r for r in self.requests if (method is None or r.method == method)
                and (rx is None or rx.search(r.path)) and (server is None or r.server == server)]

    def reset_stats(self) -> None:
        with self._lock:
            self._requests.clear()
            self._bytes_total = 0
            self._bytes_by_file.clear()

    # ---------------------------------------------------------------- faults
    def corrupt(self, repo_id: str, path: str, offset: int, times: int | None = None) -> None:
        """Flip (xor 0xFF) the byte at ``offset`` in GET bodies of that file; the published sha256/ETag stay
        those of the original. ``times`` = number of GET responses affected (None: all)."""
        with self._lock:
            self._rules.append(_Rule("corrupt", times, repo_id=repo_id, path=path, offset=offset))

    def drop_after(self, repo_id: str, path: str, nbytes: int, times: int = 1, mode: str = "fin") -> None:
        """Cut the connection after ``nbytes`` body bytes of the next ``times`` GETs of that file (headers
        announce the full length). ``mode="fin"`` closes cleanly (client: premature EOF, httpx
        ``RemoteProtocolError``); ``mode="rst"`` resets the connection (httpx ``ReadError``)."""
        if mode not in ("fin", "rst"):
            raise ValueError("mode must be 'fin' or 'rst'")
        with self._lock:
            self._rules.append(_Rule("drop", times, repo_id=repo_id, path=path, nbytes=nbytes, mode=mode))

    def inject(self, method: str, path_regex: str, status: int, times: int | None = 1, *,
               error_code: str | None = None, message: str | None = None,
               headers: Mapping[str, str] | None = None) -> None:
        """Answer the next ``times`` requests whose method matches (``"*"`` = any) and whose decoded URL path
        matches ``path_regex`` (``re.search``) with ``status``, optional ``X-Error-Code`` and JSON error."""
        with self._lock:
            self._rules.append(_Rule("inject", times, method=method.upper(), regex=re.compile(path_regex),
                                     status=status, error_code=error_code,
                                     message=message or f"Injected error {status}", headers=dict(headers or {})))

    def slow_edge(self, repo_id: str, path: str, bytes_per_second: float, times: int = 1) -> None:
        """The next ``times`` GETs of that file crawl at ``bytes_per_second`` (one slow CDN edge); others run at
        full speed."""
        with self._lock:
            self._rules.append(_Rule("slow", times, repo_id=repo_id, path=path, nbytes=int(bytes_per_second)))

    def slow(self, bytes_per_second: float | None) -> None:
        """Throttle every file-content response to ``bytes_per_second`` (None: full speed)."""
        self._bps = float(bytes_per_second) if bytes_per_second else None

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()
        self._bps = None

    def _take_rule(self, kind: str, **match) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.kind != kind:
                    continue
                if kind == "inject":
                    if rule.method not in ("*", match["method"]) or not rule.regex.search(match["path"]):
                        continue
                elif (rule.repo_id, rule.path) != (match["repo_id"], match["path"]):
                    continue
                if rule.take():
                    return rule
            return None

    # ---------------------------------------------------------------- request handling
    def _dispatch(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        auth = h.headers.get("Authorization")
        rec = RequestRecord(method=h.command, path=unquote(split.path), query=split.query,
                            range=h.headers.get("Range"), had_token=bool(auth), server=h.server.kind,
                            time=time.time())
        with self._lock:
            self._requests.append(rec)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        token = None
        if auth and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        elif auth:
            token = auth
        try:
            rule = self._take_rule("inject", method=h.command, path=rec.path)
            if rule is not None:
                rec.injected = True
                hdrs = dict(rule.headers)
                if rule.error_code:
                    hdrs["X-Error-Code"] = rule.error_code
                if rule.status >= 400:
                    hdrs.setdefault("X-Error-Message", rule.message)
                raise _HttpError(rule.status, rule.message, headers=hdrs)
            if h.server.kind == "cdn":
                self._serve_cdn(h, rec, split)
            else:
                self._route(h, rec, split, body, token)
        except _HttpError as err:
            hdrs = dict(err.headers)
            if err.code:
                hdrs["X-Error-Code"] = err.code
                hdrs.setdefault("X-Error-Message", err.message)
            self._send(h, rec, err.status, hdrs, err.body, content_type=err.content_type)
        except _Abort:
            rec.aborted = True
            h.close_connection = True
        except (ConnectionError, BrokenPipeError, TimeoutError):
            h.close_connection = True

    def _send(self, h: _Handler, rec: RequestRecord, status: int, headers: Mapping[str, str], body: bytes = b"",
              content_type: str | None = "application/json; charset=utf-8") -> None:
        rec.status = status
        h.send_response(status)
        if content_type and "Content-Type" not in headers:
            h.send_header("Content-Type", content_type)
        for k, v in headers.items():
            h.send_header(k, str(v))
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD" and body:
            h.wfile.write(body)

    def _json(self, h, rec, obj, headers: Mapping[str, str] | None = None) -> None:
        self._send(h, rec, 200, dict(headers or {}), json.dumps(obj).encode())

    def _auth(self, token: str | None) -> None:
        if token is not None and token not in self._tokens:
            raise _HttpError(401, "Invalid credentials in Authorization header",
                             headers={"X-Error-Message": "Invalid credentials in Authorization header"})

    def _lookup(self, repo_type: str, repo_id: str, token: str | None) -> _Repo:
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and token not in repo.authorized_tokens):
            raise _HttpError(401 if token is None else 404, "Repository not found", code="RepoNotFound")
        return repo

    def _revision(self, repo: _Repo, rev: str) -> _Commit:
        with self._lock:
            commit = repo.resolve(rev)
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return commit

    def _split_repo(self, repo_type: str, segs: list[str]) -> tuple[str, list[str]]:
        with self._lock:
            for k in (2, 1):
                if len(segs) >= k and (repo_type, "/".join(segs[:k])) in self._repos:
                    return "/".join(segs[:k]), segs[k:]
        k = 2 if len(segs) >= 2 and segs[1] not in _API_TAILS else 1
        return "/".join(segs[:k]), segs[k:]

    def _route(self, h, rec, split, body, token) -> None:
        raw = [unquote(s) for s in split.path.split("/")[1:]]
        query = parse_qs(split.query, keep_blank_values=True)
        method = h.command
        self._auth(token)
        if raw[:2] == ["api", "whoami-v2"]:
            if token is None:
                raise _HttpError(401, "Invalid credentials in Authorization header")
            return self._json(h, rec, {"type": "user", "name": "emulator-user", "fullname": "Emulator User",
                                       "auth": {"type": "access_token",
                                                "accessToken": {"displayName": "emulator", "role": "read"}}})
        if len(raw) >= 3 and raw[0] == "api" and raw[1] in _REPO_TYPES:
            repo_type = _REPO_TYPES[raw[1]]
            repo_id, tail = self._split_repo(repo_type, raw[2:])
            rec.repo_id = repo_id
            if tail[:1] == ["resolve"]:  # /api/models/{repo}/resolve/... is accepted by the hub too
                return self._resolve(h, rec, repo_type, repo_id, tail[1:], token)
            repo = self._lookup(repo_type, repo_id, token)
            if method not in ("GET", "HEAD", "POST"):
                raise _HttpError(405, "Method not allowed by the emulator")
            if not tail:
                if method == "POST":
                    raise _HttpError(405, "Method not allowed by the emulator")
                return self._repo_info(h, rec, repo, "main", query)
            if tail[0] == "revision" and len(tail) >= 2 and method != "POST":
                return self._repo_info(h, rec, repo, "/".join(tail[1:]), query)
            if tail[0] == "tree" and len(tail) >= 2 and method != "POST":
                rec.revision = tail[1]
                return self._tree(h, rec, repo, tail[1], "/".join(tail[2:]).strip("/"), query, split)
            if tail[0] == "paths-info" and len(tail) >= 2 and method == "POST":
                rec.revision = "/".join(tail[1:])
                return self._paths_info(h, rec, repo, rec.revision, h.headers.get("Content-Type", ""), body)
            if tail == ["refs"]:
                return self._refs(h, rec, repo)
            if tail[0] == "commits" and len(tail) >= 2:
                return self._commits(h, rec, repo, "/".join(tail[1:]))
            raise _HttpError(404, "Not Found")
        # /[datasets|spaces/]{repo}/resolve/{rev}/{path}
        repo_type = "model"
        segs = raw
        if segs and segs[0] in ("datasets", "spaces"):
            repo_type, segs = _REPO_TYPES[segs[0]], segs[1:]
        if len(segs) > 3 and segs[2] == "resolve" and segs[1] != "resolve":
            k = 2
        elif len(segs) > 2 and segs[1] == "resolve":
            k = 1
        else:
            raise _HttpError(404, "Not Found")
        rec.repo_id = "/".join(segs[:k])
        return self._resolve(h, rec, repo_type, rec.repo_id, segs[k + 1:], token)

    # ---- API endpoints
    def _sibling(self, e: _FileEntry, blobs: bool) -> dict:
        d: dict[str, Any] = {"rfilename": e.path}
        if blobs:
            d["size"] = e.size
            d["blobId"] = e.git_oid
            if e.is_lfs:
                d["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": len(e.pointer)}
        return d

    def _repo_info(self, h, rec, repo: _Repo, rev: str, query) -> None:
        rec.revision = rev
        commit = self._revision(repo, rev)
        blobs = query.get("blobs", ["false"])[-1].lower() in ("1", "true")
        files = [commit.files[p] for p in sorted(commit.files)]
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": commit.sha,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [self._sibling(e, blobs) for e in files],
        }
        if repo.repo_type == "model":
            info.update({"modelId": repo.repo_id, "library_name": "transformers",
                         "pipeline_tag": "text-generation", "spaces": [], "widgetData": None})
            cfg = commit.files.get("config.json")
            if cfg is not None and cfg.size < 1 << 20:
                try:
                    data = json.loads(cfg.source.read())
                    info["config"] = {k: data[k] for k in ("architectures", "model_type") if k in data}
                except (ValueError, AttributeError):
                    pass
        if blobs:
            info["usedStorage"] = sum(e.size for e in files)
        if query.get("securityStatus"):
            info["securityRepoStatus"] = {"scansDone": True, "filesWithIssues": []}
        self._json(h, rec, info)

    def _tree_entry(self, commit: _Commit, path: str, expand: bool, is_dir: bool) -> dict:
        if is_dir:
            prefix = path + "/"
            children = sorted((p, e) for p, e in commit.files.items() if p.startswith(prefix))
            oid = hashlib.sha1(json.dumps([(p, list(e.source.identity)) for p, e in children]).encode()).hexdigest()
            d: dict[str, Any] = {"type": "directory", "oid": oid, "size": 0, "path": path}
            if expand:
                last = max((e.commit for _, e in children), key=lambda c: c.date)
                d["lastCommit"] = {"id": last.sha, "title": last.title, "date": _iso(last.date)}
            return d
        e = commit.files[path]
        d = {"type": "file", "oid": e.git_oid, "size": e.size, "path": path}
        if e.is_lfs:
            d["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(e.pointer)}
        if expand:
            c = e.commit
            d["lastCommit"] = {"id": c.sha, "title": c.title, "date": _iso(c.date)}
            d["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                       "pickleImportScan": None}
        return d

    @staticmethod
    def _dirs(commit: _Commit) -> set[str]:
        dirs = set()
        for p in commit.files:
            parts = p.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs

    def _tree(self, h, rec, repo, rev, path, query, split) -> None:
        commit = self._revision(repo, rev)
        recursive = query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[-1].lower() in ("1", "true")
        dirs = self._dirs(commit)
        if path and path not in dirs:
            raise _HttpError(404, f"{path} does not exist on \"{rev}\"", code="EntryNotFound")
        prefix = path + "/" if path else ""
        names: list[tuple[str, bool]] = []
        for d in dirs:
            if d.startswith(prefix) and (recursive or "/" not in d[len(prefix):]):
                names.append((d, True))
        for p in commit.files:
            if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                names.append((p, False))
        names.sort()
        page_size = min(self.tree_page_size, 50) if expand else self.tree_page_size
        start = 0
        if query.get("cursor"):
            try:
                start = int(base64.urlsafe_b64decode(query["cursor"][-1].encode()).decode())
            except ValueError:
                raise _HttpError(400, "Invalid cursor") from None
        page = names[start:start + page_size]
        headers = {}
        if start + page_size < len(names):
            params = {k: v[-1] for k, v in query.items() if k != "cursor"}
            params["cursor"] = base64.urlsafe_b64encode(str(start + page_size).encode()).decode()
            # always our own loopback address, never the client's Host header
            headers["Link"] = f'<{self.url}{split.path}?{urlencode(params)}>; rel="next"'
        self._json(h, rec, [self._tree_entry(commit, p, expand, d) for p, d in page], headers)

    def _paths_info(self, h, rec, repo, rev, content_type, body) -> None:
        commit = self._revision(repo, rev)
        if "json" in content_type:
            data = json.loads(body or b"{}")
            paths = data.get("paths", [])
            expand = bool(data.get("expand"))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        dirs = self._dirs(commit)
        out = []
        for p in paths:
            p = p.strip("/")
            if p in commit.files:
                out.append(self._tree_entry(commit, p, expand, False))
            elif p in dirs:
                out.append(self._tree_entry(commit, p, expand, True))
        self._json(h, rec, out)

    def _refs(self, h, rec, repo) -> None:
        with self._lock:
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in sorted(repo.branches.items())]
            tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in sorted(repo.tags.items())]
        self._json(h, rec, {"branches": branches, "tags": tags, "converts": [], "pullRequests": []})

    def _commits(self, h, rec, repo, rev) -> None:
        rec.revision = rev
        commit = self._revision(repo, rev)
        out = []
        with self._lock:
            c: _Commit | None = commit
            while c is not None:
                out.append({"id": c.sha, "title": c.title, "message": c.message, "date": _iso(c.date),
                            "authors": [{"user": "emulator-user"}]})
                c = repo.commits.get(c.parent) if c.parent else None
        self._json(h, rec, out)

    # ---- file content
    def _resolve(self, h, rec, repo_type, repo_id, segs, token) -> None:
        if h.command not in ("GET", "HEAD"):
            raise _HttpError(405, "Method not allowed")
        if not segs:
            raise _HttpError(404, "Not Found")
        rev, path = segs[0], "/".join(segs[1:]).strip("/")
        rec.revision, rec.file = rev, path
        repo = self._lookup(repo_type, repo_id, token)
        if repo.gated and token not in repo.authorized_tokens:
            if token is None:
                msg = (f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                       "to access it. Please log in.")
                raise _HttpError(401, msg, code="GatedRepo")
            msg = (f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                   f"Visit {self.url}/{repo_id} to ask for access.")
            raise _HttpError(403, msg, code="GatedRepo")
        commit = self._revision(repo, rev)
        entry = commit.files.get(path)
        if entry is None:
            raise _HttpError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{entry.etag}"'}
        if entry.is_lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        if entry.is_lfs and self.lfs_redirect:
            repo_key = f"{repo_type}:{repo_id}"
            sig = self._sign(repo_key, commit.sha, path)
            headers["Location"] = (f"{self.cdn_url}/cdn/{quote(repo_key, safe='')}/{commit.sha}/"
                                   f"{quote(path, safe='')}?sig={sig}")
            return self._send(h, rec, 302, headers, b"", content_type="text/plain; charset=utf-8")
        self._serve_content(h, rec, repo_id, entry, headers)

    def _sign(self, repo_key: str, sha: str, path: str) -> str:
        return hmac.new(self._secret, f"{repo_key}|{sha}|{path}".encode(), hashlib.sha256).hexdigest()[:32]

    def _serve_cdn(self, h, rec, split) -> None:
        if h.command not in ("GET", "HEAD"):
            raise _HttpError(405, "Method not allowed")
        parts = split.path.split("/")
        query = parse_qs(split.query)
        denied = _HttpError(403, "AccessDenied", body=b"<Error><Code>AccessDenied</Code></Error>",
                            content_type="application/xml")
        if len(parts) != 5 or parts[1] != "cdn":
            raise denied
        repo_key, sha, path = unquote(parts[2]), parts[3], unquote(parts[4])
        if not hmac.compare_digest(query.get("sig", [""])[-1], self._sign(repo_key, sha, path)):
            raise denied
        repo_type, _, repo_id = repo_key.partition(":")
        rec.repo_id, rec.revision, rec.file = repo_id, sha, path
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            commit = repo.commits.get(sha) if repo else None
            entry = commit.files.get(path) if commit else None
        if entry is None:
            raise _HttpError(404, "NoSuchKey", body=b"<Error><Code>NoSuchKey</Code></Error>",
                             content_type="application/xml")
        self._serve_content(h, rec, repo_id, entry, {"ETag": f'"{entry.sha256}"'})

    def _serve_content(self, h, rec, repo_id, entry: _FileEntry, headers: dict) -> None:
        size = entry.size
        name = entry.path.rsplit("/", 1)[-1]
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype == "application/json":
            ctype += "; charset=utf-8"
        headers.update({"Accept-Ranges": "bytes", "Content-Type": ctype,
                        "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"})
        status, start, end = 200, 0, size
        rng = h.headers.get("Range")
        if rng:
            m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", rng)
            if m and (m.group(1) or m.group(2)):
                a, b = m.group(1), m.group(2)
                if a:
                    start, end = int(a), (min(int(b) + 1, size) if b else size)
                else:
                    start, end = max(size - int(b), 0), size
                if start >= size or start >= end:
                    raise _HttpError(416, "Requested Range Not Satisfiable",
                                     headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes",
                                              **{k: v for k, v in headers.items() if k.startswith("X-")}})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            # several ranges or garbage: ignore the header and answer 200 with everything, as the spec allows
        rec.status = status
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(end - start))
        h.end_headers()
        if h.command == "HEAD":
            return
        key = (repo_id, entry.path)
        drop = self._take_rule("drop", repo_id=repo_id, path=entry.path)
        corrupt = self._take_rule("corrupt", repo_id=repo_id, path=entry.path)
        limit = drop.nbytes if drop else None
        slow = self._take_rule("slow", repo_id=repo_id, path=entry.path)
        bps = slow.nbytes if slow else self._bps
        chunk = _SEND_CHUNK if not bps else int(max(1024, min(64 * 1024, bps / 20)))
        pos, sent = start, 0
        t0 = time.monotonic()
        for data in entry.source.iter_range(start, end, chunk):
            if corrupt is not None and pos <= corrupt.offset < pos + len(data):
                buf = bytearray(data)
                buf[corrupt.offset - pos] ^= 0xFF
                data = bytes(buf)
            if limit is not None and sent + len(data) > limit:
                data = data[:max(limit - sent, 0)]
            if data:
                h.wfile.write(data)
                sent += len(data)
                with self._lock:
                    self._bytes_total += len(data)
                    self._bytes_by_file[key] += len(data)
                rec.bytes_sent = sent
            pos += len(data)
            if limit is not None and sent >= limit:
                self._cut(h, drop.mode)
            if bps:
                ahead = sent / bps - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        if limit is not None:  # file shorter than the cut point: cut anyway
            self._cut(h, drop.mode)

    @staticmethod
    def _cut(h: _Handler, mode: str) -> None:
        h.close_connection = True
        conn = h.connection
        try:
            if mode == "rst":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # really closed (-> RST) once the handler drops its file objects
            else:
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        raise _Abort()


# --------------------------------------------------------------------------------------------------
# gpt-oss-like repo
# --------------------------------------------------------------------------------------------------

def gptoss_like_layout(n_shards: int = 3) -> dict[str, list[str]]:
    """Paths of a gpt-oss-like repo: ``{"root": [...], "original": [...], "metal": [...]}`` (sorted)."""
    last = n_shards - 1
    root = [f"model-{i:05d}-of-{last:05d}.safetensors" for i in range(n_shards)] + [
        ".gitattributes", "LICENSE", "README.md", "USAGE_POLICY", "chat_template.jinja", "config.json",
        "generation_config.json", "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json",
    ]
    return {"root": sorted(root),
            "original": ["original/config.json", "original/dtypes.json", "original/model.safetensors"],
            "metal": ["metal/model.bin"]}


def _safetensors(size: int, seed: Any, names: list[str]) -> Synthetic:
    """A valid safetensors file of exactly ``size`` bytes: U8 tensors ``names`` over synthetic data."""
    header_len = 0
    for _ in range(16):  # header length and data length depend on each other: grow the header until it fits
        data_len = size - 8 - header_len
        if data_len < len(names):
            raise ValueError(f"safetensors size {size} too small for {len(names)} tensors")
        per, off = data_len // len(names), 0
        meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        for i, n in enumerate(names):
            ln = per if i < len(names) - 1 else data_len - off
            meta[n] = {"dtype": "U8", "shape": [ln], "data_offsets": [off, off + ln]}
            off += ln
        raw = json.dumps(meta, separators=(",", ":")).encode()
        need = len(raw) + (-len(raw)) % 8
        if need <= header_len:
            return Synthetic(size, seed, prefix=struct.pack("<Q", header_len) + raw + b" " * (header_len - len(raw)))
        header_len = need
    raise RuntimeError("could not lay out safetensors header")


def make_gptoss_like_repo(hub: HubEmulator, repo_id: str = "openai/gpt-oss-mini", shard_size: int = 2 * 1024 * 1024,
                          n_shards: int = 3, *, copy_size: int | None = None, gated: Any = False,
                          private: bool = False, seed: Any = 0, num_layers: int = 24) -> str:
    """Create a repo laid out like ``openai/gpt-oss-20b`` (root shards + ``original/`` + ``metal/`` copies).

    Root ``model-0000{i}-of-0000{n-1}.safetensors`` are valid safetensors files of ``shard_size`` bytes each;
    ``original/model.safetensors`` and ``metal/model.bin`` are whole copies of ``copy_size`` bytes (default
    ``n_shards * shard_size``), like the real repo holding the weights three times. Returns the commit sha.
    """
    copy_size = n_shards * shard_size if copy_size is None else copy_size
    last = n_shards - 1
    weight_map: dict[str, str] = {}
    files: dict[str, Any] = {}
    per_shard = max(1, num_layers // n_shards)
    for i in range(n_shards):
        shard = f"model-{i:05d}-of-{last:05d}.safetensors"
        layers = range(i * per_shard, num_layers if i == last else (i + 1) * per_shard)
        names = [f"model.layers.{layer}.mlp.experts.gate_up_proj_blocks" for layer in layers] or [f"model.shard{i}"]
        if i == last:
            names += ["model.embed_tokens.weight", "lm_head.weight"]
        files[shard] = _safetensors(shard_size, f"{seed}:root:{i}", names)
        weight_map.update({n: shard for n in names})
    files["original/model.safetensors"] = _safetensors(
        copy_size, f"{seed}:original", [f"block.{layer}.mlp.mlp1_weight.blocks" for layer in range(num_layers)])
    files["metal/model.bin"] = Synthetic(copy_size, f"{seed}:metal")
    layer_types = ["sliding_attention" if j % 2 == 0 else "full_attention" for j in range(num_layers)]
    config = {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "num_hidden_layers": num_layers,
        "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "hidden_size": 2880,
        "num_local_experts": 32, "experts_per_token": 4, "sliding_window": 128, "layer_types": layer_types,
        "vocab_size": 201088, "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "mxfp4",
                                "modules_to_not_convert": ["model.layers.*.self_attn", "model.embed_tokens", "lm_head"]},
    }
    files["config.json"] = json.dumps(config, indent=2).encode()
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": n_shards * shard_size}, "weight_map": weight_map}, indent=2).encode()
    files["generation_config.json"] = json.dumps(
        {"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999,
         "do_sample": True}, indent=2).encode()
    files["tokenizer.json"] = json.dumps(
        {"version": "1.0", "model": {"type": "BPE", "vocab": {f"tok{i}": i for i in range(256)}, "merges": []},
         "added_tokens": [{"id": 199998, "content": "<|startoftext|>"}]}).encode()
    files["tokenizer_config.json"] = json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072}, indent=2).encode()
    files["special_tokens_map.json"] = json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}).encode()
    files["chat_template.jinja"] = b"{%- for message in messages -%}<|start|>{{ message.role }}<|message|>" \
                                   b"{{ message.content }}<|end|>{%- endfor -%}\n"
    files["README.md"] = (f"---\nlicense: apache-2.0\nlibrary_name: transformers\npipeline_tag: text-generation\n"
                          f"---\n# {repo_id}\n\nSynthetic gpt-oss-like repo served by the test emulator.\n").encode()
    files["LICENSE"] = b"Apache License\nVersion 2.0, January 2004\n(placeholder text for tests)\n"
    files["USAGE_POLICY"] = b"Usage policy placeholder for tests.\n"
    files["original/config.json"] = json.dumps(
        {"num_hidden_layers": num_layers, "num_experts": 32, "experts_per_token": 4, "vocab_size": 201088,
         "hidden_size": 2880, "head_dim": 64, "num_attention_heads": 64, "num_key_value_heads": 8,
         "sliding_window": 128}, indent=2).encode()
    files["original/dtypes.json"] = json.dumps(
        {f"block.{layer}.mlp.mlp1_weight.blocks": "FP4" for layer in range(num_layers)}, indent=2).encode()
    files[".gitattributes"] = _default_gitattributes(("tokenizer.json",))
    return hub.add_repo(repo_id, files, gated=gated, private=private, message="Add gpt-oss-like weights")


# --------------------------------------------------------------------------------------------------
# Client configuration, loopback guard, fixture
# --------------------------------------------------------------------------------------------------

_HF_ENV_DROP = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
                "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE",
                "HF_XET_CACHE", "HF_HUB_ENABLE_HF_TRANSFER", "HF_XET_HIGH_PERFORMANCE", "HF_HUB_DISABLE_IMPLICIT_TOKEN")


def hf_client_env(endpoint: str, hf_home: str | os.PathLike) -> dict[str, str]:
    """Variables for a huggingface_hub process talking to ``endpoint`` only; unset the ``_HF_ENV_DROP`` ones."""
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "DO_NOT_TRACK": "1"}


def _is_loopback(host: Any) -> bool:
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@contextmanager
def loopback_only():
    """Refuse, in this process, every socket connect and DNS lookup that is not loopback (or AF_UNIX)."""
    orig_connect, orig_connect_ex, orig_gai = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise ConnectionRefusedError(f"hfhub emulator guard: refusing non-loopback connect to {address!r}")

    def connect(self, address):
        check(self, address)
        return orig_connect(self, address)

    def connect_ex(self, address):
        check(self, address)
        return orig_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        h = host.decode() if isinstance(host, bytes) else host
        if h is not None and not _is_loopback(h):
            raise socket.gaierror(socket.EAI_NONAME, f"hfhub emulator guard: refusing to resolve {h!r}")
        return orig_gai(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = orig_connect, orig_connect_ex, orig_gai


def _patch_hf_constants(monkeypatch, endpoint: str, hf_home: str) -> None:
    """huggingface_hub reads most settings at import: re-point them for an already-imported module."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import _http
    except ImportError:  # pragma: no cover
        return
    hub_cache = os.path.join(hf_home, "hub")
    values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": hf_home, "HF_HUB_CACHE": hub_cache, "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": os.path.join(hf_home, "assets"), "HF_XET_CACHE": os.path.join(hf_home, "xet"),
        "HF_TOKEN_PATH": os.path.join(hf_home, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(hf_home, "stored_tokens"),
        "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True, "HF_HUB_ENABLE_HF_TRANSFER": False,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
    }
    for name, value in values.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    _http.close_session()  # no pooled connection to an earlier emulator


if pytest is not None:

    @pytest.fixture
    def hf_hub(tmp_path_factory, monkeypatch):
        """A started :class:`HubEmulator`; huggingface_hub (env and already-imported constants) points at it,
        ``HF_HOME`` is a fresh temp dir, no ambient token is picked up, and any non-loopback socket or DNS
        lookup in this process fails for the duration of the test."""
        hf_home = str(tmp_path_factory.mktemp("hf_home"))
        for name in _HF_ENV_DROP:
            monkeypatch.delenv(name, raising=False)
        with HubEmulator() as hub, loopback_only():
            for k, v in hub.env(hf_home).items():
                monkeypatch.setenv(k, v)
            _patch_hf_constants(monkeypatch, hub.url, hf_home)
            try:
                yield hub
            finally:
                try:
                    from huggingface_hub.utils import _http
                    _http.close_session()
                except ImportError:  # pragma: no cover
                    pass
else:  # pragma: no cover
    hf_hub = None


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
