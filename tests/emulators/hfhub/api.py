"""The hub's REST API endpoints (repo info, tree, paths-info, refs, commits) as a :class:`HubEmulator` mixin."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs, urlencode

from .content import _Commit, _FileEntry, _iso, _Repo
from .faults import _HttpError


class _ApiRoutes:
    """API endpoints of :class:`HubEmulator` (mixin)."""

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
