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
token value is never stored), ``peak_concurrent_for`` (most bodies of a file sent at once), ``corrupt``,
``drop_after``, ``inject``, ``slow`` (every response paced on its own, like a CDN edge's per-connection cap),
``slow_edge`` (one response crawls), ``commit`` (move a branch).
"""

from __future__ import annotations

from .client import hf_client_env
from .content import DEFAULT_TOKEN, Synthetic
from .faults import RequestRecord
from .fixtures import hf_hub, loopback_only
from .repos import gptoss_like_layout, make_gptoss_like_repo
from .server import HubEmulator

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
