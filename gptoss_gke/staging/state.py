"""What a staging folder holds, as one listing shows it: staged objects, resume records, unfinished uploads.

A file of several chunks is one multipart upload to its final name. After each part, a zero-byte
*resume record* under the sibling prefix ``<folder without '/'>.partial/`` (outside what vLLM reads)
keeps the upload id, the part's etag and the running crc32c after it, so a killed run continues the
upload at its first missing part and fetches only the chunks after it. The records go once the file
is complete (and, for a continued upload, verified: see ``staging/transfer.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gptoss_gke.staging.hub import RepoFile

MANIFEST_NAME = ".gptoss-gke-manifest.json"
PARTIAL_SUFFIX = ".partial"
SHA_KEY = "sha256"  # x-goog-meta-sha256
CRC_KEY = "gptoss-crc32c"  # resume records: the file's running crc32c after this part
UPLOAD_KEY = "gptoss-upload-id"  # resume records: the multipart upload the part belongs to
ETAG_KEY = "gptoss-part-etag"  # resume records: what GCS answered for the part
MAX_PARTS = 10000  # GCS XML API multipart uploads: parts 1..10000


@dataclass
class StagedObject:
    name: str
    size: int
    sha256: str | None
    crc32c: str | None
    metadata: dict = field(default_factory=dict)


@dataclass
class Observed:
    requested: str
    revision: str
    files: list[RepoFile]  # the selection
    ignored: int  # repo files left out by the patterns
    objects: dict[str, StagedObject]  # relative path under the folder → object
    partials: dict[str, StagedObject]  # object name → resume record (or an older run's chunk object)
    manifest: dict | None
    bucket_exists: bool
    uploads: dict[str, list[str]] = field(default_factory=dict)  # object name → its unfinished upload ids
    parts: dict[str, dict[int, tuple[int, str]]] = field(default_factory=dict)  # resumable upload id → parts
    marker: Any = None  # a RunMarker (staging/claim.py): another (or a killed) run's in-progress marker



def manifest_ok(obs: Observed) -> bool:
    m = obs.manifest
    if not m or m.get("revision") != obs.revision:
        return False
    listed = {f.get("path"): f for f in m.get("files") or []}
    if set(listed) != {f.path for f in obs.files}:
        return False
    for f in obs.files:
        entry, obj = listed[f.path], obs.objects.get(f.path)
        if obj is None or entry.get("size") != f.size or obj.sha256 != entry.get("sha256"):
            return False
        if entry.get("crc32c") and obj.crc32c != entry.get("crc32c"):
            return False
    return True


def staged(f: RepoFile, obj: StagedObject | None) -> bool:
    """Present with the right size and hash (sha256 for LFS files, the git blob id otherwise)."""
    if obj is None or obj.size != f.size or not obj.sha256:
        return False
    if f.lfs:
        return obj.sha256 == f.sha256
    return obj.metadata.get("git-oid") == f.git_oid


@dataclass
class ResumePoint:
    chunks: int  # chunks 0..chunks-1 are uploaded (parts 1..chunks)
    offset: int
    crc: int  # crc32c of those bytes
    upload_id: str
    etags: dict[int, str]  # part number → etag, for completing the upload


def partial_dir(folder: str, f: RepoFile, chunk: int) -> str:
    tag = (f.sha256 or f.git_oid or "x")[:16]
    return f"{folder.rstrip('/')}{PARTIAL_SUFFIX}/{f.path}/{tag}-{chunk}/"


def records_of(obs: Observed, folder: str) -> set[str]:
    """The files that still have resume records: an upload of theirs is unfinished, or was completed by a
    run that stopped before verifying it (so a present object is not yet trusted)."""
    root = f"{folder.rstrip('/')}{PARTIAL_SUFFIX}/"
    return {name[len(root):].rsplit("/", 2)[0] for name in obs.partials if name.startswith(root)}


def chunk_name(pdir: str, index: int) -> str:
    """The resume record of chunk ``index`` (part ``index + 1``)."""
    return f"{pdir}{index:06d}"


def resume_points(obs: Observed, missing: list[RepoFile], folder: str, chunk: int) -> dict[str, ResumePoint]:
    """Where each unfinished file's upload continues: after the longest run of parts from the first that
    GCS still holds (same size, same etag) and that a record gives the crc32c after."""
    points = {}
    for f in missing:
        n = -(-f.size // chunk)
        if n <= 1 or not f.lfs:
            continue
        pdir = partial_dir(folder, f, chunk)
        live = obs.uploads.get(folder + f.path, [])
        upload_id, etags, best = None, {}, None
        for i in range(n - 1):  # the last part is never a resume point: the file would be done
            meta = getattr(obs.partials.get(chunk_name(pdir, i)), "metadata", None) or {}
            upload_id = upload_id or meta.get(UPLOAD_KEY)
            want = (min(chunk, f.size - i * chunk), meta.get(ETAG_KEY))
            crc = meta.get(CRC_KEY) or ""
            if (meta.get(UPLOAD_KEY) != upload_id or upload_id not in live or not crc.isdigit()
                    or obs.parts.get(upload_id, {}).get(i + 1) != want):
                break
            etags[i + 1] = meta[ETAG_KEY]
            best = (i, int(crc))
        if best:
            i, crc = best
            points[f.path] = ResumePoint(i + 1, (i + 1) * chunk, crc, upload_id, dict(etags))
    return points


def stale_uploads(obs: Observed, resume: dict[str, ResumePoint]) -> list[tuple[str, str]]:
    """Unfinished uploads under the folder that nothing will continue (billed until aborted)."""
    kept = {r.upload_id for r in resume.values()}
    return sorted((name, u) for name, ids in obs.uploads.items() for u in ids if u not in kept)
