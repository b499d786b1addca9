"""HTTP plumbing and :class:`HubEmulator` itself: lifecycle, content, request handling. The API endpoints,
the file-content routes and the fault controls are mixins (``api``, ``downloads``, ``faults``)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from .api import _ApiRoutes
from .client import hf_client_env
from .content import (_API_TAILS, _BASE_DATE, _REPO_TYPES, DEFAULT_TOKEN, LOOPBACK, _as_source, _Commit,
                      _default_gitattributes, _FileEntry, _lfs_patterns, _matches_gitattributes, _Repo)
from .downloads import _DownloadRoutes
from .faults import _Abort, _FaultControls, _HttpError, _Rule, RequestRecord


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
        with self.hub._lock:
            self.hub._accepted += 1
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

class HubEmulator(_FaultControls, _ApiRoutes, _DownloadRoutes):
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
        self._sending: dict[tuple[str, str], int] = defaultdict(int)  # bodies of a file being sent right now
        self._peak_sending: dict[tuple[str, str], int] = defaultdict(int)
        self._accepted = 0  # TCP connections accepted, hub and CDN listeners together
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
