"""File content routes (resolve, CDN redirect target, ranged/throttled/faulty body) as a
:class:`HubEmulator` mixin."""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import re
import socket
import struct
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote

from .content import _SEND_CHUNK, _FileEntry
from .faults import RequestRecord, _Abort, _HttpError

if TYPE_CHECKING:
    from .server import _Handler


class _DownloadRoutes:
    """File-content routes of :class:`HubEmulator` (mixin)."""

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
        slow = self._take_rule("slow", repo_id=repo_id, path=entry.path)
        bps = slow.nbytes if slow else self._bps
        chunk = _SEND_CHUNK if not bps else int(max(1024, min(64 * 1024, bps / 20)))
        with self._lock:
            self._sending[key] += 1
            self._peak_sending[key] = max(self._peak_sending[key], self._sending[key])
        try:
            self._send_body(h, rec, key, entry, start, end, chunk, bps, corrupt, drop)
        finally:
            with self._lock:
                self._sending[key] -= 1

    def _send_body(self, h, rec, key, entry: _FileEntry, start: int, end: int, chunk: int, bps, corrupt, drop) -> None:
        limit = drop.nbytes if drop else None
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
                self._cut(h, rec, drop.mode)
            if bps:
                ahead = sent / bps - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        if limit is not None:  # file shorter than the cut point: cut anyway
            self._cut(h, rec, drop.mode)

    @staticmethod
    def _cut(h: _Handler, rec: RequestRecord, mode: str) -> None:
        # Recorded before the cut: the client sees the cut at once and may look at the record right away.
        rec.aborted = True
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
