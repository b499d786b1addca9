"""Request log and fault rules of the hub emulator, and the accounting / fault-injection controls
:class:`HubEmulator` gets from :class:`_FaultControls`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Mapping


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


class _FaultControls:
    """Accounting and fault controls of :class:`HubEmulator` (mixin; state lives on the emulator)."""

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

    def peak_concurrent_for(self, repo_id: str, path: str) -> int:
        """The most GET bodies of that file the emulator was sending at one moment (ranges in flight)."""
        with self._lock:
            return self._peak_sending[(repo_id, path)]

    @property
    def connections_accepted(self) -> int:
        """TCP connections clients opened (keep-alive: one may carry many requests)."""
        with self._lock:
            return self._accepted

    def reset_stats(self) -> None:
        with self._lock:
            self._requests.clear()
            self._bytes_total = 0
            self._bytes_by_file.clear()
            self._peak_sending.clear()
            self._accepted = 0

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
        """Throttle every file-content response to ``bytes_per_second`` (None: full speed). Each response is
        paced on its own, as a CDN edge caps each connection: n ranges in flight get n times the rate."""
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
