"""Model staging: Hugging Face → Cloud Storage, only what vLLM loads, verified, resumable, fast.

Three steps, each observe → plan → act like every other step:

* :class:`Bucket` — absent: created in ``models.location`` with uniform bucket-level access, public
  access prevention and our labels. Present: its owner, location and access mode are checked; what we
  cannot or should not change is reported (a location is immutable; a bucket we did not create is
  never relabelled, since teardown deletes what carries our labels).
* :class:`BucketIamBinding` — ``roles/storage.objectViewer`` on this bucket only, for the serving
  workload's Kubernetes service account through its Workload Identity principal. Read-modify-write
  of the bucket policy carrying the etag we read, so a concurrent edit makes GCS answer 412 instead
  of being overwritten; we then read again and retry.
* :class:`StageModel` — per target: resolve the revision to a commit, list the repo's files with sizes
  and hashes, list what is already under ``gs://<bucket>/<prefix>/<model id>/<commit>/``, plan the
  difference, transfer it.

Transfer design, and why
------------------------
*Unit of work: a chunk.* A file is cut into ``models.chunk_mib`` chunks, each fetched with one HTTP
Range GET of the hub's resolve URL (plain ``requests``, whatever HTTP client the installed huggingface_hub
uses; the CDN redirect is followed and the token is dropped when the host or port changes). Chunks of
every file share ``models.workers`` download threads and as many upload threads, so a 4 GB shard is
pulled and pushed over many connections at once, small files don't wait behind large ones, and each
chunk's upload overlaps the next chunks' downloads. The tutorial way (``hf download --local-dir`` then
``gcloud storage rsync``) runs the two phases one after the other and needs the whole model on disk.

*Bounded temp space.* A chunk holds its bytes (in memory, or in a file under ``models.temp_dir`` when
set) from download until GCS has confirmed its upload. A byte budget —
``min(max_temp_gib, 2 × workers × chunk)`` — gates each new download, so no more than that is ever held.
The plan checks it against free memory (or the temp dir's free disk) before a byte moves.

*Integrity.* SHA-256 cannot be computed out of order, so chunks are hashed strictly in file order as they
arrive (memory speed; the hasher releases the GIL) together with a running crc32c. A file of several
chunks is one XML API multipart upload to its final name: each chunk is a part, sent with its crc32c
(``x-goog-hash``) and checked against the crc32c GCS reports for it. The upload is completed only when
the whole file's sha256 equals the one the hub publishes (LFS files; small files are checked against
their git blob id), then the object's crc32c is compared with the one we computed over the hub's bytes.
A mismatch aborts the upload. A one-chunk file is uploaded straight to its final name, after its hash
matched. So the final name only ever receives verified bytes: a mismatch fails the step and leaves
nothing there.

*Why multipart uploads: no billed garbage.* Parts upload in parallel within a file (gpt-oss-120b is
fifteen 4.3 GB shards), and they are not objects: completing or aborting an upload leaves nothing behind.
The earlier design (chunk objects composed server-side, then deleted) left every byte twice in the bucket's
bill for a week, because GCS keeps deleted objects soft-deleted (7 days by default): ~65 GB for
gpt-oss-120b. Parts of an unfinished upload are billed as stored until completed or aborted: a run aborts
any upload of ours it will not resume, and ``teardown --purge-model`` aborts what is left.

*Idempotent and resumable.* GCS computes no sha256, so we store it (``x-goog-meta-sha256``, set when the
upload starts, completed only after it matched); an object with the expected size and sha256 is skipped,
and a manifest object (revision, files, sizes, sha256, crc32c), written last, makes a complete folder a
no-op after one listing. After each part, a zero-byte object under the sibling prefix
``<folder without '/'>.partial/`` (outside what vLLM reads) records the upload id, the part's etag, the
SHA-256 *midstate* after it (OpenSSL's ``SHA256_CTX`` through ctypes) and the running crc32c, so a killed
run lists the upload's parts, continues it at its first missing part and fetches only the chunks after
it; those records are deleted once the file is complete (soft-deleted, they weigh zero bytes). Without
libcrypto (never seen on Linux or macOS) unfinished files restart from their first chunk; finished files
are still skipped.

*One run per folder.* A run claims ``<folder>.partial/.in-progress`` before its first byte (created only if
absent: a GCS generation precondition, so two runs starting together cannot both win) and refreshes it
every :data:`MARKER_HEARTBEAT_S`. Another run finding it refuses to start, saying who holds it, since
when, and how to clear it if that run is gone; a marker whose process is gone (same host) or that has
been silent for :data:`MARKER_STALE_S` is taken over (again under a generation precondition). The marker
is removed when the run ends, whatever the outcome; Ctrl-C or SIGTERM stops the workers between chunks.

Credentials: gcloud's access token (shared with every gcloud step, refreshed through gcloud when it
expires) or, with ``STORAGE_EMULATOR_HOST`` set, anonymous access to that emulator. The HF token comes
from settings (``HF_TOKEN`` or ``models.hf_token_file``), is registered with the redactor by the loader,
and only ever travels in an ``Authorization`` header.

Cloud SDKs are imported inside functions: ``inv --list`` must not load them.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gptoss_gke.core import interrupt
from gptoss_gke.core.private_files import process_alive
from gptoss_gke.core.report import format_duration
from gptoss_gke.core.retry import is_transient_exception
from gptoss_gke.gcp.project import Credentials, project_number
from gptoss_gke.core.step import Change, Plan, Step, noop, skip
from gptoss_gke.errors import CannotObserve, StepError, ToolError
from gptoss_gke.ownership import kept_for
from gptoss_gke.targets import CATALOGUE

VIEWER_ROLE = "roles/storage.objectViewer"
MANIFEST_NAME = ".gptoss-gke-manifest.json"
PARTIAL_SUFFIX = ".partial"
SHA_KEY = "sha256"  # x-goog-meta-sha256
STATE_KEY = "gptoss-sha256-state"  # resume records: hash midstate and crc32c after this part
UPLOAD_KEY = "gptoss-upload-id"  # resume records: the multipart upload the part belongs to
ETAG_KEY = "gptoss-part-etag"  # resume records: what GCS answered for the part
MAX_PARTS = 10000  # GCS XML API multipart uploads: parts 1..10000
XML_API = "https://storage.googleapis.com"
MARKER_NAME = ".in-progress"  # under <folder>.partial/: a staging run is writing this folder
MARKER_HEARTBEAT_S = 30.0
MARKER_STALE_S = 600.0  # twenty missed heartbeats: the run that wrote it is gone
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_HF_DEFAULT = "https://huggingface.co"
# What the steps import lazily (see Step.sdk_modules: the runner imports these on the main thread
# before reads run concurrently).
GCS_SDK = ("requests", "urllib3", "google.auth.credentials", "google.auth.exceptions", "google.auth.transport.requests",
           "google.oauth2.credentials", "google.api_core.exceptions", "google.cloud.storage",
           "google.resumable_media", "google_crc32c")
HF_SDK = ("huggingface_hub", "huggingface_hub.errors", "huggingface_hub.hf_api", "huggingface_hub.file_download",
          "huggingface_hub.utils")
_TOKEN_PAGE = "https://huggingface.co/settings/tokens"


# ---------------------------------------------------------------------------------------------
# Names shared with other modules


def model_folder(settings, target, revision: str | None = None) -> str:
    """``<prefix>/<model id>/<revision>/``: where a target's weights live in the bucket.

    ``revision`` defaults to the target's configured one; pass the resolved commit when the
    configuration names a branch (StageModel reports it as the ``revision`` fact).
    """
    rev = revision or target.model_revision
    prefix = settings.models.prefix.strip("/")
    return f"{prefix}/{target.model_id}/{rev}/" if prefix else f"{target.model_id}/{rev}/"


def resolved_revision(ctx, target_name: str) -> str:
    """The commit a target's weights come from: the configured one, or the commit its branch points at
    now (asked of the hub once per run, so staging and the manifests agree)."""
    target = ctx.settings.target(target_name)
    requested = target.model_revision
    if re.fullmatch(r"[0-9a-f]{40}", requested):
        return requested

    def resolve() -> str:
        _offline_guard(ctx)
        return HubRepo(ctx.settings, target_name, target.model_id).resolve(requested)

    return ctx.fact(f"models.revision.{target_name}", resolve)


def workload_principal(settings, project_number: str) -> str:
    """The Workload Identity principal of the serving pods' Kubernetes service account."""
    return (f"principal://iam.googleapis.com/projects/{project_number}/locations/global/workloadIdentityPools/"
            f"{settings.workload_pool}/subject/ns/{settings.kube.namespace}/sa/{settings.kube.service_account}")


def stage_model_steps(settings, targets: list[str]) -> list[Step]:
    """Bucket, its IAM grant, and one staging step per target (targets not served from a bucket skip)."""
    steps: list[Step] = []
    if any(settings.target(t).weights == "bucket" for t in targets) and settings.models.bucket:
        steps += [Bucket(settings), BucketIamBinding(settings)]
    steps += [StageModel(settings, t) for t in targets]
    return steps


# ---------------------------------------------------------------------------------------------
# Small helpers


def _size(n: float) -> str:
    """Decimal units, as the hub shows file sizes."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _b64crc(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def _emulator_host() -> str | None:
    # The one environment variable read below the tasks: google-cloud-storage itself obeys it, so
    # we must know when it is set to pick credentials that match (anonymous for the emulator).
    return os.environ.get(_EMULATOR_ENV) or None


def _offline_guard(ctx) -> None:
    if ctx.shell.offline:
        raise CannotObserve(ctx.shell.offline)


class _Transient(ConnectionError):
    """A short read or similar: worth another try."""


# ---------------------------------------------------------------------------------------------
# Cloud Storage client


def gcs_client(ctx):
    """One google-cloud-storage client per run, on gcloud's identity (or anonymous on an emulator)."""

    def build():
        import requests
        from google.cloud import storage

        workers = ctx.settings.models.workers
        pool = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=2 * workers + 8)
        if _emulator_host():
            from google.auth.credentials import AnonymousCredentials

            creds = AnonymousCredentials()
            session = requests.Session()
        else:
            from google.auth.transport.requests import AuthorizedSession
            from google.oauth2.credentials import Credentials

            from gptoss_gke.gcp.project import access_token

            def expiry() -> _dt.datetime:  # google-auth compares naive UTC datetimes
                return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None) + _dt.timedelta(minutes=45)

            def refresh(request, scopes):
                # gcloud refreshes its own credentials; ask it again when ours expire (long transfers).
                ctx.forget("gcp.access_token")
                return access_token(ctx), expiry()

            creds = Credentials(access_token(ctx), expiry=expiry(), refresh_handler=refresh)
            session = AuthorizedSession(creds)
        session.mount("http://", pool)
        session.mount("https://", pool)
        return storage.Client(project=ctx.settings.project, credentials=creds, _http=session)

    return ctx.fact("gcs.client", build)


def _gcs_error(exc: Exception, *, bucket: str, doing: str) -> Exception:
    """GCS failures in words, with the fix. Returns the exception to raise."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.Forbidden):
        return StepError(f"permission denied {doing} gs://{bucket}: {_gcs_message(exc)}",
                         f"the bucket may belong to another project (names are global: set models.bucket to a "
                         f"name of your own), or ask for roles/storage.admin on gs://{bucket}")
    if isinstance(exc, gexc.Unauthorized):
        return CannotObserve(f"Cloud Storage refused the credentials while {doing} gs://{bucket}",
                             "run `inv auth` (gcloud auth login)")
    if is_transient_exception(exc) and isinstance(exc, OSError):
        return CannotObserve(f"cannot reach Cloud Storage while {doing} gs://{bucket}: {exc}",
                             "check the network or proxy; `inv doctor` tests the whole chain")
    return exc


def _gcs_message(exc) -> str:
    return getattr(exc, "message", None) or str(exc)


class MultipartUploads:
    """Cloud Storage's XML API multipart uploads, on the storage client's own authorized session.

    google-cloud-storage drives them only from a file on disk (``transfer_manager``); staging holds
    chunks in memory and resumes uploads across runs, so the five calls are made here. Errors are
    google.api_core exceptions (``code`` is the HTTP status), so the retry policy and ``_gcs_error``
    treat them like every other Cloud Storage failure.
    """

    def __init__(self, bucket):
        self.bucket = bucket
        self.session = bucket.client._http  # the session gcs_client built (authorized, or plain on an emulator)
        self.base = (_emulator_host() or XML_API).rstrip("/")

    def _url(self, name: str | None = None) -> str:
        from urllib.parse import quote

        return f"{self.base}/{self.bucket.name}" + (f"/{quote(name, safe='/')}" if name is not None else "")

    def _call(self, method: str, url: str, *, params: dict, what: str, **kwargs):
        """``params`` values of None are bare keys (``?uploads``), as the XML API spells them."""
        from urllib.parse import quote

        from google.api_core import exceptions as gexc

        query = "&".join(k if v is None else f"{k}={quote(str(v), safe='')}" for k, v in params.items())
        r = self.session.request(method, f"{url}?{query}", timeout=(15, 600), **kwargs)
        if r.status_code >= 400:
            code = _xml_text(r.content, "Code") or r.reason
            raise gexc.from_http_status(r.status_code, f"{what}: {code}: {_xml_text(r.content, 'Message') or ''}",
                                        response=r)
        return r

    def start(self, name: str, metadata: dict[str, str]) -> str:
        headers = {"Content-Type": "application/octet-stream", **{f"x-goog-meta-{k}": v for k, v in metadata.items()}}
        r = self._call("POST", self._url(name), params={"uploads": None}, headers=headers,
                       what=f"starting the upload of {name}")
        return _xml_text(r.content, "UploadId")

    def put_part(self, name: str, upload_id: str, number: int, buf, crc: int) -> str:
        """Upload one part (GCS checks our crc32c against the body); returns its etag."""
        want = _b64crc(crc)
        r = self._call("PUT", self._url(name), params={"partNumber": number, "uploadId": upload_id},
                       data=buf.reader(), headers={"Content-Length": str(buf.size), "x-goog-hash": f"crc32c={want}"},
                       what=f"uploading part {number} of {name}")
        hashes = dict(h.strip().split("=", 1) for h in r.headers.get("x-goog-hash", "").split(",") if "=" in h)
        if hashes.get("crc32c") != want:
            raise _Transient(f"part {number} of {name}: GCS reports crc32c {hashes.get('crc32c')}, sent {want}")
        return r.headers["ETag"]

    def parts(self, name: str, upload_id: str) -> dict[int, tuple[int, str]]:
        """Uploaded parts: number → (size, etag)."""
        found: dict[int, tuple[int, str]] = {}
        marker = 0
        while True:
            r = self._call("GET", self._url(name), params={"uploadId": upload_id, "part-number-marker": marker},
                           what=f"listing the parts of {name}")
            root = _xml_root(r.content)
            for part in _xml_all(root, "Part"):
                found[int(_xml_child(part, "PartNumber"))] = (int(_xml_child(part, "Size")), _xml_child(part, "ETag"))
            if _xml_child(root, "IsTruncated") != "true":
                return found
            marker = int(_xml_child(root, "NextPartNumberMarker"))

    def complete(self, name: str, upload_id: str, etags: dict[int, str]) -> None:
        body = "<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(etags[n])}</ETag></Part>" for n in sorted(etags)
        ) + "</CompleteMultipartUpload>"
        self._call("POST", self._url(name), params={"uploadId": upload_id}, data=body.encode(),
                   headers={"Content-Type": "application/xml"}, what=f"completing the upload of {name}")

    def abort(self, name: str, upload_id: str) -> None:
        from google.api_core import exceptions as gexc

        try:
            self._call("DELETE", self._url(name), params={"uploadId": upload_id}, what=f"aborting the upload of {name}")
        except gexc.NotFound:
            pass  # already completed or aborted

    def unfinished(self, prefix: str) -> list[tuple[str, str]]:
        """(object name, upload id) of every upload under ``prefix`` not yet completed or aborted."""
        found: list[tuple[str, str]] = []
        params = {"uploads": None, "prefix": prefix}
        while True:
            r = self._call("GET", self._url(), params=params, what=f"listing unfinished uploads under {prefix}")
            root = _xml_root(r.content)
            found += [(_xml_child(u, "Key"), _xml_child(u, "UploadId")) for u in _xml_all(root, "Upload")]
            if _xml_child(root, "IsTruncated") != "true":
                return found
            params.update({"key-marker": _xml_child(root, "NextKeyMarker"),
                           "upload-id-marker": _xml_child(root, "NextUploadIdMarker")})


def abort_uploads(ctx, bucket: str, uploads: list[tuple[str, str]]) -> None:
    """Abort unfinished multipart uploads (their parts are billed until then; aborting leaves nothing)."""
    mpu = MultipartUploads(gcs_client(ctx).bucket(bucket))
    for name, upload_id in uploads:
        try:
            ctx.retrying(lambda n=name, u=upload_id: mpu.abort(n, u), "aborting an unfinished upload")
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=bucket, doing="aborting an upload in") from None


def _xml_root(data: bytes):
    from xml.etree import ElementTree

    return ElementTree.fromstring(data)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # the XML API answers in the S3 namespace


def _xml_all(node, tag: str) -> list:
    return [e for e in node.iter() if _local(e.tag) == tag]


def _xml_child(node, tag: str) -> str | None:
    return next((e.text for e in node if _local(e.tag) == tag), None)


def _xml_text(data: bytes, tag: str) -> str | None:
    try:
        return next((e.text for e in _xml_root(data).iter() if _local(e.tag) == tag), None)
    except Exception:  # noqa: BLE001 - not XML (a proxy's HTML page): no detail to add
        return None


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


# ---------------------------------------------------------------------------------------------
# Bucket


class Bucket(Step):
    section = "models"
    sdk_modules = GCS_SDK

    def __init__(self, settings):
        self.bucket = settings.models.bucket
        self.name = f"bucket {self.bucket}"

    def observe(self, ctx):
        from google.api_core import exceptions as gexc

        _offline_guard(ctx)
        client = gcs_client(ctx)
        try:
            b = ctx.retrying(lambda: client.get_bucket(self.bucket, retry=None), "reading the bucket")
        except gexc.NotFound:
            return None
        except Exception as exc:  # noqa: BLE001 - classified
            raise _gcs_error(exc, bucket=self.bucket, doing="reading") from None
        props = b._properties
        return {
            "location": (props.get("location") or "").upper(),
            "ubla": bool(b.iam_configuration.uniform_bucket_level_access_enabled),
            "labels": dict(b.labels or {}),
            "project_number": str(props.get("projectNumber") or ""),
        }

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        want_loc = s.bucket_location
        if current is None:
            return Plan([Change(f"create bucket gs://{self.bucket} in {want_loc} (uniform bucket-level access, "
                                f"public access prevention enforced)", "create", apply=self._create)],
                        diff={"bucket": "absent → present"})
        number = self._our_number(ctx)
        if number and current["project_number"] and current["project_number"] != number:
            raise StepError(
                f"bucket gs://{self.bucket} belongs to project number {current['project_number']}, not "
                f"{s.project} ({number})",
                "bucket names are global: set models.bucket to a name of your own, e.g. "
                f"{s.project}-gptoss-models")
        if current["location"] != want_loc:
            raise StepError(
                f"bucket gs://{self.bucket} is in {current['location']}, configured {want_loc}; a bucket's "
                f"location cannot change",
                f"set models.location: {current['location'].lower()} in {s.env_file} to use it where it is "
                f"(cross-region reads are slower and billed), or choose another models.bucket")
        ours = current["labels"].get("managed-by") == s.gcp_labels["managed-by"]
        facts = {"location": current["location"], "uniform_access": current["ubla"], "created_by_us": ours}
        if not current["ubla"]:
            if ours:
                return Plan([Change(f"enable uniform bucket-level access on gs://{self.bucket}", "update",
                                    apply=self._enable_ubla)], diff={"uniform_bucket_level_access": "off → on"},
                             facts=facts)
            return noop(f"bucket gs://{self.bucket} in {current['location']}; drift: uniform bucket-level access "
                        f"is off (left as is on a bucket we did not create; `gcloud storage buckets update "
                        f"gs://{self.bucket} --uniform-bucket-level-access` enables it)", drift=["ubla off"], **facts)
        return noop(f"bucket gs://{self.bucket} in {current['location']} with uniform bucket-level access", **facts)

    @staticmethod
    def _our_number(ctx) -> str | None:
        try:
            return project_number(ctx)
        except CannotObserve:
            if ctx.dry_run:
                return None
            raise

    def _create(self, ctx) -> None:
        from google.api_core import exceptions as gexc

        s = ctx.settings
        client = gcs_client(ctx)
        b = client.bucket(self.bucket)
        b.iam_configuration.uniform_bucket_level_access_enabled = True
        b.iam_configuration.public_access_prevention = "enforced"
        b.labels = dict(s.gcp_labels)
        try:
            ctx.retrying(lambda: client.create_bucket(b, location=s.bucket_location, retry=None), "creating the bucket")
        except gexc.Conflict:
            raise StepError(f"bucket name {self.bucket} is taken by another project (bucket names are global)",
                            f"set models.bucket to a name of your own, e.g. {s.project}-gptoss-models") from None
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket, doing="creating") from None

    def _enable_ubla(self, ctx) -> None:
        client = gcs_client(ctx)
        b = client.bucket(self.bucket)
        b.iam_configuration.uniform_bucket_level_access_enabled = True
        try:
            ctx.retrying(lambda: b.patch(retry=None), "updating the bucket")
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket, doing="updating") from None


# ---------------------------------------------------------------------------------------------
# IAM


class BucketIamBinding(Step):
    section = "models"
    sdk_modules = GCS_SDK

    def __init__(self, settings):
        self.bucket = settings.models.bucket
        ns, ksa = settings.kube.namespace, settings.kube.service_account
        self.name = f"bucket IAM: objectViewer for {ns}/{ksa}"
        self.needs = (f"bucket {self.bucket}",)

    def _member(self, ctx) -> str:
        return workload_principal(ctx.settings, project_number(ctx))

    def observe(self, ctx):
        from google.api_core import exceptions as gexc

        _offline_guard(ctx)
        member = self._member(ctx)
        bucket = gcs_client(ctx).bucket(self.bucket)
        try:
            policy = ctx.retrying(lambda: bucket.get_iam_policy(requested_policy_version=3, retry=None),
                            "reading the bucket policy")
        except gexc.NotFound:
            return {"member": member, "present": False, "bucket": False}
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket, doing="reading the IAM policy of") from None
        return {"member": member, "present": _has_binding(policy, member), "bucket": True}

    def plan(self, ctx, current) -> Plan:
        if current is None:  # not observed (dry-run offline)
            return Plan([Change(f"grant {VIEWER_ROLE} on gs://{self.bucket} to the serving service account",
                                "create", apply=self._grant)])
        if current["present"]:
            return noop(f"{current['member']} already has {VIEWER_ROLE} on gs://{self.bucket}")
        return Plan([Change(f"grant {VIEWER_ROLE} on gs://{self.bucket} to {current['member']}", "create",
                            apply=self._grant)], diff={"bindings": {VIEWER_ROLE: {"add": [current["member"]]}}})

    def _grant(self, ctx) -> None:
        def add(policy, member: str) -> bool:
            if _has_binding(policy, member):
                return False  # someone added it meanwhile
            policy.bindings.append({"role": VIEWER_ROLE, "members": {member}})
            return True

        self._edit_policy(ctx, add)

    def _edit_policy(self, ctx, edit) -> None:
        """Read-modify-write of the bucket policy. The policy carries the etag we read, so GCS answers 412
        if someone changed it meanwhile: read again and redo the edit (at most 5 times)."""
        from google.api_core import exceptions as gexc

        member = self._member(ctx)
        bucket = gcs_client(ctx).bucket(self.bucket)
        for _attempt in range(5):
            try:
                policy = ctx.retrying(lambda: bucket.get_iam_policy(requested_policy_version=3, retry=None),
                                      "reading the bucket policy")
                if not edit(policy, member):
                    return
                policy.version = 3
                ctx.retrying(lambda: bucket.set_iam_policy(policy, retry=None), "writing the bucket policy")
                return
            except gexc.PreconditionFailed:
                ctx.printer.line("    the bucket policy changed while we edited it; reading it again", "dim")
                continue
            except Exception as exc:  # noqa: BLE001
                raise _gcs_error(exc, bucket=self.bucket, doing="setting the IAM policy of") from None
        raise StepError(f"the IAM policy of gs://{self.bucket} kept changing under us (5 attempts)",
                        "re-run when whoever else edits it is done")


class RevokeBucketIamBinding(BucketIamBinding):
    """Teardown: remove our member from objectViewer on the bucket (same etag-guarded read-modify-write),
    unless another environment's pods read the bucket as the same principal (same project, namespace
    and service account: Workload Identity names no cluster)."""

    def __init__(self, settings, others: dict | None = None):
        super().__init__(settings)
        self.others = others or {}
        self.name = f"bucket IAM: revoke objectViewer of {settings.kube.namespace}/{settings.kube.service_account}"
        self.needs = (Credentials.name,)  # teardown: what is already gone must not stop the rest

    def plan(self, ctx, current) -> Plan:
        if current is None:
            return Plan([Change(f"revoke {VIEWER_ROLE} on gs://{self.bucket} from the serving service account",
                                "delete", apply=self._revoke)])
        if not current["present"]:
            return noop(f"{current['member']} holds no {VIEWER_ROLE} on gs://{self.bucket}")
        s = ctx.settings
        principal = (s.workload_pool, s.kube.namespace, s.kube.service_account, self.bucket)
        shared = kept_for(self.others, lambda o: (o.workload_pool, o.kube.namespace, o.kube.service_account,
                                                  o.models.bucket) == principal)
        if shared:
            return noop(f"{current['member']} keeps {VIEWER_ROLE} on gs://{self.bucket}: {shared}")
        return Plan([Change(f"revoke {VIEWER_ROLE} on gs://{self.bucket} from {current['member']}", "delete",
                            apply=self._revoke)], diff={"bindings": {VIEWER_ROLE: {"remove": [current["member"]]}}})

    def _revoke(self, ctx) -> None:
        def remove(policy, member: str) -> bool:
            if not _has_binding(policy, member):
                return False
            kept = []
            for b in policy.bindings:
                if b.get("role") == VIEWER_ROLE and not b.get("condition"):
                    b = {**b, "members": set(b.get("members") or ()) - {member}}
                if b.get("members"):
                    kept.append(b)
            policy.bindings = kept
            return True

        self._edit_policy(ctx, remove)


def _has_binding(policy, member: str) -> bool:
    for b in policy.bindings:
        if b.get("role") == VIEWER_ROLE and not b.get("condition") and member in set(b.get("members") or ()):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# The hub side


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str | None  # published for LFS files
    git_oid: str | None  # git blob id (the content's, for non-LFS files)

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None


def select_files(paths, allow_patterns, ignore_patterns) -> list[str]:
    """The hub's own filter (``*`` crosses ``/``): the same selection ``hf download`` would make."""
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(list(paths), allow_patterns=list(allow_patterns or []) or None,
                                    ignore_patterns=list(ignore_patterns or []) or None))


class HubRepo:
    """One repo at one revision on the hub (or HF_ENDPOINT), errors turned into problems with fixes."""

    def __init__(self, settings, target_name: str, repo_id: str):
        self.endpoint = (settings.models.hf_endpoint or _HF_DEFAULT).rstrip("/")
        self.token = settings.hf_token.get_secret_value() if settings.hf_token else None
        self.repo_id = repo_id
        self.target_name = target_name
        self.env_file = settings.env_file

    def api(self):
        from huggingface_hub import HfApi

        from gptoss_gke import TOOL_NAME, __version__

        return HfApi(endpoint=self.endpoint, token=self.token or False, library_name=TOOL_NAME,
                     library_version=__version__)

    def headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        from gptoss_gke import TOOL_NAME, __version__

        return build_hf_headers(token=self.token or False, library_name=TOOL_NAME, library_version=__version__)

    def url(self, revision: str, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, path, revision=revision, endpoint=self.endpoint)

    def resolve(self, revision: str) -> str:
        info = self._call(lambda: self.api().model_info(self.repo_id, revision=revision), revision)
        return info.sha

    def files(self, commit: str) -> list[RepoFile]:
        from huggingface_hub.hf_api import RepoFile as HfRepoFile

        entries = self._call(lambda: list(self.api().list_repo_tree(self.repo_id, revision=commit, recursive=True)),
                             commit)
        out = []
        for e in entries:
            if not isinstance(e, HfRepoFile):
                continue
            lfs = e.lfs
            out.append(RepoFile(e.path, int(e.size), lfs.sha256 if lfs else None, e.blob_id))
        return out

    def check_access(self, commit: str, path: str) -> None:
        """A HEAD of one file: gated repos keep their metadata public, so this is where gating shows."""
        from huggingface_hub import get_hf_file_metadata

        self._call(lambda: get_hf_file_metadata(self.url(commit, path), token=self.token or False,
                                                endpoint=self.endpoint), commit)

    def _call(self, fn, revision: str):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            raise self.explain(exc, revision) from None

    def explain(self, exc: Exception, revision: str) -> Exception:
        repo, t = self.repo_id, self.target_name
        page = f"{_HF_DEFAULT}/{repo}"
        token_fix = (f"set HF_TOKEN, or models.hf_token_file in {self.env_file}, to a read token from {_TOKEN_PAGE}")
        kind, status = _hub_error_kind(exc, has_token=bool(self.token))
        if kind == "gated":
            if self.token:
                return StepError(f"{repo} is gated and the account of this HF token has not been granted access",
                                 f"accept the conditions at {page} with that account, then re-run")
            return StepError(f"{repo} is gated: downloading it needs a token", f"accept the conditions at {page}, "
                             f"then {token_fix}")
        if kind == "revision":
            return StepError(f"revision {revision} not found in {repo}",
                             f"set targets.{t}.model_revision to a commit or branch of {repo} "
                             f"(see {page}/commits/main)")
        if kind == "repo":
            if self.token:
                return StepError(f"repository {repo} not found on {self.endpoint}, or this HF token cannot see it",
                                 f"check the model id of target {t}, and that the token's account can open {page}")
            return StepError(f"repository {repo} not found on {self.endpoint} (or it is private and needs a token)",
                             f"check the model id of target {t}; for a private or gated repo, {token_fix}")
        if kind == "entry":
            return StepError(f"a file listed in {repo}@{revision[:12]} is missing on the hub: {exc}",
                             f"re-run; if it persists, pin targets.{t}.model_revision to another commit")
        if status == 401:
            return StepError("the Hugging Face Hub refused the HF token (invalid or expired)",
                             f"create a new read token at {_TOKEN_PAGE} and update HF_TOKEN / models.hf_token_file")
        if status == 403:
            return StepError(f"the Hugging Face Hub denied access to {repo}: {exc}",
                             f"check the token's permissions at {_TOKEN_PAGE}")
        if is_transient_exception(exc) and status is None:
            return CannotObserve(f"cannot reach the Hugging Face Hub at {self.endpoint}: {type(exc).__name__}",
                                 "check the network or proxy (or HF_ENDPOINT)")
        return exc


class HubHttpError(Exception):
    """A non-2xx answer to one of our own file GETs, with the hub's error headers."""

    def __init__(self, status: int, code: str | None, message: str | None, url: str):
        super().__init__(f"HTTP {status}{f' {code}' if code else ''} for {url}"
                         + (f": {message}" if message else ""))
        self.status, self.code, self.message = status, code, message


def _hub_error_kind(exc: Exception, *, has_token: bool) -> tuple[str | None, int | None]:
    """(gated | revision | repo | entry | None, HTTP status) for huggingface_hub's errors and ours."""
    if isinstance(exc, HubHttpError):
        kinds = {"GatedRepo": "gated", "RevisionNotFound": "revision", "RepoNotFound": "repo",
                 "EntryNotFound": "entry"}
        kind = kinds.get(exc.code or "")
        if kind is None and exc.status == 401 and exc.message != "Invalid credentials in Authorization header" \
                and not has_token:
            kind = "repo"  # the hub answers 401 for private and missing repos alike
        return kind, exc.status
    from huggingface_hub import errors as hferr

    status = getattr(getattr(exc, "response", None), "status_code", None)
    entry = getattr(hferr, "RemoteEntryNotFoundError", None) or getattr(hferr, "EntryNotFoundError")
    for cls, kind in ((hferr.GatedRepoError, "gated"), (hferr.RevisionNotFoundError, "revision"),
                      (hferr.RepositoryNotFoundError, "repo"), (entry, "entry")):
        if isinstance(exc, cls):
            return kind, status
    return None, status


# ---------------------------------------------------------------------------------------------
# Hashing with a savable state


class _Sha256:
    """SHA-256 whose state can be saved after any chunk and restored in another process.

    hashlib cannot export a midstate; OpenSSL's SHA256_CTX (the same libcrypto hashlib uses) can. The
    serialized state is only ever read back by the same code on the same kind of machine (it records the
    byte order), and a wrong restore can only make the final digest differ, which fails the file.
    """

    _lib = None
    _loaded = False
    CTX_SIZE = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16], num, md_len (32-bit words)

    @classmethod
    def _libcrypto(cls):
        if not cls._loaded:
            cls._loaded = True
            try:
                name = ctypes.util.find_library("crypto")
                lib = ctypes.CDLL(name) if name else None
                if lib is not None:
                    lib.SHA256_Init.argtypes = [ctypes.c_void_p]
                    lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
                    lib.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
                    probe = ctypes.create_string_buffer(cls.CTX_SIZE)
                    lib.SHA256_Init(probe)
                    lib.SHA256_Update(probe, b"abc", 3)
                    out = ctypes.create_string_buffer(32)
                    lib.SHA256_Final(out, probe)
                    if out.raw.hex() == hashlib.sha256(b"abc").hexdigest():
                        cls._lib = lib
            except (OSError, AttributeError):
                cls._lib = None
        return cls._lib

    def __init__(self, state: str | None = None):
        lib = self._libcrypto()
        self._h = None
        self._ctx = None
        if lib is None:
            if state:
                raise ValueError("cannot restore a hash state without libcrypto")
            self._h = hashlib.sha256()
            return
        self._ctx = ctypes.create_string_buffer(self.CTX_SIZE)
        if state:
            tag, _, hexstate = state.partition(":")
            raw = bytes.fromhex(hexstate)
            if tag != f"ossl1-{sys.byteorder}" or len(raw) != self.CTX_SIZE:
                raise ValueError("incompatible hash state")
            ctypes.memmove(self._ctx, raw, self.CTX_SIZE)
        else:
            lib.SHA256_Init(self._ctx)

    @property
    def resumable(self) -> bool:
        return self._ctx is not None

    def update(self, data: bytes) -> None:
        if self._h is not None:
            self._h.update(data)
        else:
            self._lib.SHA256_Update(self._ctx, data, len(data))

    def state(self) -> str | None:
        return f"ossl1-{sys.byteorder}:{self._ctx.raw.hex()}" if self._ctx is not None else None

    def hexdigest(self) -> str:
        if self._h is not None:
            return self._h.hexdigest()
        ctx = ctypes.create_string_buffer(self._ctx.raw, self.CTX_SIZE)
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, ctx)
        return out.raw.hex()


# ---------------------------------------------------------------------------------------------
# What is staged


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
    marker: "RunMarker | None" = None  # another (or a killed) run's in-progress marker


def _marker_name(folder: str) -> str:
    return f"{folder.rstrip('/')}{PARTIAL_SUFFIX}/{MARKER_NAME}"


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _when(text) -> _dt.datetime | None:
    try:
        when = _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


@dataclass
class RunMarker:
    """A staging run's claim on a folder, as another run reads it."""

    bucket: str
    name: str
    generation: int
    doc: dict
    updated: _dt.datetime | None = None  # the object's own time (markers without a heartbeat field)

    def _times(self) -> tuple[_dt.datetime | None, _dt.datetime | None]:
        started = _when(self.doc.get("started")) or self.updated
        heard = _when(self.doc.get("heartbeat")) or self.updated or started
        return started, heard

    def stale_because(self) -> str | None:
        """Why the run that wrote it is gone, or None if it may still be writing."""
        host, pid = self.doc.get("host"), self.doc.get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and not process_alive(pid):
            return f"its process (pid {pid} on {host}) is gone"
        _, heard = self._times()
        if heard is None:
            return "it carries no time at all"
        silent = (_utc_now() - heard).total_seconds()
        if silent > MARKER_STALE_S:
            return f"it has been silent for {format_duration(silent)}"
        return None

    def describe(self) -> str:
        started, heard = self._times()
        now = _utc_now()
        since = f"started {format_duration((now - started).total_seconds())} ago" if started else "start unknown"
        last = f", last heard from {format_duration(max(0.0, (now - heard).total_seconds()))} ago" if heard else ""
        who = f" on {self.doc.get('host', 'an unknown host')} (pid {self.doc.get('pid', '?')})"
        return f"{since}{who}{last}"

    def clear_command(self) -> str:
        return f"gcloud storage rm gs://{self.bucket}/{self.name}"


def _manifest_ok(obs: Observed) -> bool:
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


def _staged(f: RepoFile, obj: StagedObject | None) -> bool:
    """Present with the right size and hash (sha256 for LFS files, the git blob id otherwise)."""
    if obj is None or obj.size != f.size or not obj.sha256:
        return False
    if f.lfs:
        return obj.sha256 == f.sha256
    return obj.metadata.get("git-oid") == f.git_oid


# ---------------------------------------------------------------------------------------------
# The staging step


class StageModel(Step):
    section = "models"
    sdk_modules = GCS_SDK + HF_SDK

    def __init__(self, settings, target_name: str):
        self.target_name = target_name
        self.target = settings.target(target_name)
        self.bucket = settings.models.bucket
        self.name = f"stage {self.target.model_id} ({target_name})"
        from gptoss_gke.gcp.project import Credentials, Project

        self.needs = (Credentials.name, Project.name, f"bucket {self.bucket}")
        self.last_transfer: dict | None = None

    # ---- observe
    def observe(self, ctx):
        if self.target.weights != "bucket":
            return None
        _offline_guard(ctx)
        hub = HubRepo(ctx.settings, self.target_name, self.target.model_id)
        requested = self.target.model_revision
        revision = resolved_revision(ctx, self.target_name)
        repo_files = hub.files(revision)
        chosen = set(select_files([f.path for f in repo_files], self.target.allow_patterns,
                                  self.target.ignore_patterns))
        files = sorted((f for f in repo_files if f.path in chosen), key=lambda f: f.path)
        if not files:
            raise StepError(f"no file of {self.target.model_id}@{revision[:12]} matches the patterns "
                            f"(allow {list(self.target.allow_patterns)}, ignore {list(self.target.ignore_patterns)})",
                            "fix the target's allow/ignore patterns")
        # Gated repos keep their listings public: try one file now, before any byte moves.
        hub.check_access(revision, min(files, key=lambda f: f.size).path)
        folder = model_folder(ctx.settings, self.target, revision)
        objects, partials, manifest, exists, marker = self._list(ctx, folder)
        obs = Observed(requested, revision, files, len(repo_files) - len(files), objects, partials, manifest, exists,
                       marker=marker)
        if exists:
            self._list_uploads(ctx, folder, obs)
        return obs

    def _list(self, ctx, folder: str):
        from google.api_core import exceptions as gexc

        client = gcs_client(ctx)
        base = folder.rstrip("/")
        objects: dict[str, StagedObject] = {}
        partials: dict[str, StagedObject] = {}
        manifest = None
        marker = None
        try:
            blobs = ctx.retrying(lambda: list(client.list_blobs(self.bucket, prefix=base, retry=None)),
                           "listing the bucket")
        except gexc.NotFound:
            return objects, partials, None, False, None
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket, doing="listing") from None
        for b in blobs:
            meta = dict(b.metadata or {})
            obj = StagedObject(b.name, int(b.size or 0), meta.get(SHA_KEY), b.crc32c, meta)
            if b.name.startswith(folder):
                rel = b.name[len(folder):]
                if rel == MANIFEST_NAME:
                    try:
                        manifest = json.loads(ctx.retrying(lambda: b.download_as_bytes(retry=None),
                                                     "reading the manifest"))
                    except (ValueError, gexc.NotFound):
                        manifest = None
                else:
                    objects[rel] = obj
            elif b.name == _marker_name(folder):
                try:
                    doc = json.loads(ctx.retrying(lambda: b.download_as_bytes(retry=None), "reading the marker"))
                except (ValueError, gexc.NotFound):
                    doc = {}
                marker = RunMarker(self.bucket, b.name, int(b.generation or 0), doc if isinstance(doc, dict) else {},
                                   b.updated)
            elif b.name.startswith(base + PARTIAL_SUFFIX + "/"):
                partials[b.name] = obj
        return objects, partials, manifest, True, marker

    def _list_uploads(self, ctx, folder: str, obs: Observed) -> None:
        """Unfinished multipart uploads of ours under the folder, and the parts of those a record resumes."""
        mpu = MultipartUploads(gcs_client(ctx).bucket(self.bucket))
        try:
            for name, upload_id in ctx.retrying(lambda: mpu.unfinished(folder), "listing unfinished uploads"):
                obs.uploads.setdefault(name, []).append(upload_id)
            live = {u for ids in obs.uploads.values() for u in ids}
            recorded = {o.metadata.get(UPLOAD_KEY) for o in obs.partials.values()} & live
            names = {u: n for n, ids in obs.uploads.items() for u in ids}
            for upload_id in sorted(recorded):
                obs.parts[upload_id] = ctx.retrying(lambda u=upload_id: mpu.parts(names[u], u), "listing parts")
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket, doing="listing uploads in") from None

    # ---- plan
    def plan(self, ctx, current) -> Plan:
        s, t = ctx.settings, self.target
        if t.weights != "bucket":
            return skip(f"{self.target_name} loads {t.model_id} from the hub into its volume in the cluster; "
                        f"nothing to stage")
        if current is None:  # dry-run without cloud access
            folder = model_folder(s, t)
            return Plan([Change(f"stage {t.model_id}@{t.model_revision[:12]} into gs://{self.bucket}/{folder}",
                                "create", apply=lambda ctx: None)])
        obs: Observed = current
        folder = model_folder(s, t, obs.revision)
        where = f"gs://{self.bucket}/{folder}"
        total = sum(f.size for f in obs.files)
        facts: dict[str, Any] = {"revision": obs.revision, "requested_revision": obs.requested, "folder": folder,
                                 "files": len(obs.files), "bytes": total}
        if obs.requested != obs.revision:
            facts["resolved"] = f"{obs.requested} → {obs.revision}"
        if self.last_transfer:
            facts["transfer"] = self.last_transfer
        resolved = f" ({obs.requested} → {obs.revision[:12]})" if obs.requested != obs.revision else ""
        missing = [f for f in obs.files if not _staged(f, obs.objects.get(f.path))]
        tuning = _Tuning.from_settings(s)
        resume = _resume_points(obs, missing, folder, tuning.chunk)
        stale = _stale_uploads(obs, resume)
        abort = (f"abort {len(stale)} unfinished upload(s) of an earlier run (their parts are billed until then)"
                 if stale else "")
        if not missing and _manifest_ok(obs):
            if stale:
                return Plan([Change(abort, "delete", apply=lambda ctx: abort_uploads(ctx, self.bucket, stale))],
                            facts=facts, diff={"abort": [n for n, _ in stale]})
            return noop(f"{len(obs.files)} files, {_size(total)} already staged at {where}{resolved} "
                        f"(manifest verified)", **facts)
        takeover = self._check_marker(obs, where)
        if not missing:
            return Plan([Change(f"write the manifest of {len(obs.files)} files ({_size(total)}) at {where}",
                                "update", apply=lambda ctx: self._transfer(ctx, obs, [], stale),
                                detail=[*takeover, abort] if abort else takeover)], facts=facts,
                        diff={"manifest": "missing or stale → written"})
        too_many = [f.path for f in missing if f.lfs and -(-f.size // tuning.chunk) > MAX_PARTS]
        if too_many:
            raise StepError(f"{', '.join(too_many)} would take more than {MAX_PARTS} parts of models.chunk_mib = "
                            f"{s.models.chunk_mib} (a multipart upload's limit)", "raise models.chunk_mib")
        to_move = sum(f.size for f in missing)
        resumed = sum(r.offset for r in resume.values())
        tuning.check_space(to_move - resumed)
        facts.update(bytes_to_move=to_move - resumed, files_to_move=len(missing), resumed_bytes=resumed)
        action = "create" if not obs.objects and not obs.partials else "update"
        head = (f"stage {len(missing)} of {len(obs.files)} files ({_size(to_move - resumed)} of {_size(total)}) "
                f"from {t.model_id}@{obs.revision[:12]}{resolved} into {where}")
        detail = [f"{f.path}  {_size(f.size)}" + (f"  (resuming at {_size(resume[f.path].offset)})"
                                                  if f.path in resume else "") for f in missing[:25]]
        if len(missing) > 25:
            detail.append(f"... and {len(missing) - 25} more")
        if obs.ignored:
            detail.append(f"({obs.ignored} repo files not selected: original/, metal/ and other files vLLM "
                          f"does not load)")
        if abort:
            detail.append(abort)
        detail += takeover
        return Plan([Change(head, action, apply=lambda ctx: self._transfer(ctx, obs, missing, stale),
                            detail=detail)], facts=facts, diff={"files": [f.path for f in missing]})

    @staticmethod
    def _check_marker(obs: Observed, where: str) -> list[str]:
        """Refuse while another run holds the folder; a stale claim is taken over (said in the plan)."""
        marker = obs.marker
        if marker is None:
            return []
        why = marker.stale_because()
        if why is None:
            raise StepError(
                f"another stage-model run is writing {where}: {marker.describe()}; two runs on one folder would "
                f"race on its partial files",
                f"wait for it to finish (then re-run: what it staged is kept). If that run is gone (it stops "
                f"refreshing its marker, and is taken over after {format_duration(MARKER_STALE_S)} of silence), "
                f"clear its marker now: {marker.clear_command()}")
        return [f"taking over from an earlier run that stopped ({why}): {marker.describe()}"]

    # ---- act
    def _transfer(self, ctx, obs: Observed, missing: list[RepoFile], stale: list[tuple[str, str]]) -> None:
        s, t = ctx.settings, self.target
        folder = model_folder(s, t, obs.revision)
        tuning = _Tuning.from_settings(s)
        hub = HubRepo(s, self.target_name, t.model_id)
        bucket = gcs_client(ctx).bucket(self.bucket)
        started = time.monotonic()
        stats = {"files_moved": 0, "bytes_downloaded": 0, "bytes_uploaded": 0, "resumed_bytes": 0}
        with _FolderClaim(ctx, bucket, folder, obs.revision, obs.marker) as claim:
            abort_uploads(ctx, self.bucket, stale)  # first: an upload nothing will continue is billed until aborted
            if missing:
                engine = _Transfer(ctx, hub=hub, bucket=bucket, folder=folder, revision=obs.revision, files=missing,
                                   resume=_resume_points(obs, missing, folder, tuning.chunk), tuning=tuning)
                engine.run()
                stats.update(engine.stats())
                for path, obj in engine.done.items():
                    obs.objects[path] = obj
            claim.check()
            self._write_manifest(ctx, bucket, folder, obs)
        stats["seconds"] = round(time.monotonic() - started, 3)
        self.last_transfer = stats
        if missing:
            rate = stats["bytes_uploaded"] / max(stats["seconds"], 1e-6)
            ctx.printer.line(f"    moved {_size(stats['bytes_uploaded'])} in {format_duration(stats['seconds'])} "
                             f"({_size(rate)}/s); {len(obs.files) - len(missing)} files were already staged"
                             + (f", resumed {_size(stats['resumed_bytes'])}" if stats["resumed_bytes"] else ""))

    def _write_manifest(self, ctx, bucket, folder: str, obs: Observed) -> None:
        files = []
        for f in obs.files:
            obj = obs.objects[f.path]
            files.append({"path": f.path, "size": f.size, "sha256": obj.sha256, "crc32c": obj.crc32c,
                          "lfs": f.lfs, **({"git_oid": f.git_oid} if not f.lfs else {})})
        doc = {"tool": "gptoss-gke", "environment": ctx.settings.env_name, "repo": self.target.model_id,
               "revision": obs.revision,
               "requested_revision": obs.requested, "endpoint": ctx.settings.models.hf_endpoint or _HF_DEFAULT,
               "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "total_bytes": sum(f.size for f in obs.files), "files": files}
        blob = bucket.blob(folder + MANIFEST_NAME)
        data = json.dumps(doc, indent=2).encode()
        try:
            ctx.retrying(lambda: blob.upload_from_string(data, content_type="application/json", retry=None),
                   "writing the manifest")
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket, doing="writing the manifest into") from None


# ---------------------------------------------------------------------------------------------
# Teardown


def purge_model_steps(settings, targets: list[str], others: dict | None = None) -> list[Step]:
    """``teardown --purge-model``: the staged weights this environment wrote (every revision) and its IAM
    grant, except what another environment (``others``: name → Settings or load error) still uses."""
    targets = [t for t in targets if settings.target(t).weights == "bucket"]
    if not targets or not settings.models.bucket:
        return []
    return [*[PurgeStagedModel(settings, t, others) for t in targets], RevokeBucketIamBinding(settings, others)]


def _stages(other, bucket: str, folder: str) -> bool:
    """Does another environment's settings stage (and serve) ``folder`` of ``bucket``? A revision that
    names a branch may resolve to any commit of that model: counted as using it."""
    if other.models.bucket != bucket:
        return False
    for name in CATALOGUE:
        target = other.target(name)
        if target.weights != "bucket":
            continue
        if model_folder(other, target) == folder:
            return True
        if not _HEX40.match(target.model_revision) and folder.startswith(model_folder(other, target).rsplit("/", 2)[0]):
            return True
    return False


class PurgeStagedModel(Step):
    """Delete what StageModel wrote under ``<prefix>/<model id>/``: folders whose manifest (or, while
    staging, whose in-progress marker) names this environment, and that no other environment uses."""

    section = "models"
    needs = (Credentials.name,)
    sdk_modules = GCS_SDK

    def __init__(self, settings, target_name: str, others: dict | None = None):
        self.target = settings.target(target_name)
        self.bucket = settings.models.bucket
        self.others = others or {}
        prefix = settings.models.prefix.strip("/")
        self.root = f"{prefix}/{self.target.model_id}/" if prefix else f"{self.target.model_id}/"
        self.name = f"staged weights of {self.target.model_id} ({target_name})"

    def observe(self, ctx):
        from google.api_core import exceptions as gexc

        _offline_guard(ctx)
        client = gcs_client(ctx)
        try:
            blobs = ctx.retrying(lambda: list(client.list_blobs(self.bucket, prefix=self.root, retry=None)),
                                 "listing the bucket")
        except gexc.NotFound:
            return []
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket, doing="listing") from None
        folders: dict[str, dict] = {}  # "<root><revision>/" → what is in it (and in its .partial/)
        for b in blobs:
            rel = b.name[len(self.root):]
            top = rel.split("/", 1)[0]
            revision = top.removesuffix(PARTIAL_SUFFIX)
            written_by_staging = (top.endswith(PARTIAL_SUFFIX) or rel.endswith("/" + MANIFEST_NAME)
                                  or "hf-revision" in (b.metadata or {}))
            if not _HEX40.match(revision) or "/" not in rel or not written_by_staging:
                continue  # not something staging writes: never ours to delete
            f = self._folder(folders, revision)
            f["objects"].append(b.name)
            f["bytes"] += int(b.size or 0)
            if b.name.endswith("/" + MANIFEST_NAME) or b.name.endswith(PARTIAL_SUFFIX + "/" + MARKER_NAME):
                f["environment"] = f["environment"] or self._environment(ctx, b)
        # Uploads a killed staging run left open: their parts are billed until aborted.
        try:
            uploads = ctx.retrying(lambda: MultipartUploads(client.bucket(self.bucket)).unfinished(self.root),
                                   "listing unfinished uploads")
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket, doing="listing uploads in") from None
        for name, upload in uploads:
            revision = name[len(self.root):].split("/", 1)[0]
            if _HEX40.match(revision):
                self._folder(folders, revision)["uploads"].append((name, upload))
        return [{"folder": k, **v} for k, v in sorted(folders.items())]

    def _folder(self, folders: dict, revision: str) -> dict:
        return folders.setdefault(f"{self.root}{revision}/",
                                  {"objects": [], "bytes": 0, "uploads": [], "environment": None})

    @staticmethod
    def _environment(ctx, blob) -> str | None:
        """The environment a manifest or in-progress marker names (None: not recorded, or unreadable)."""
        try:
            doc = json.loads(ctx.retrying(lambda: blob.download_as_bytes(retry=None), "reading the manifest"))
        except Exception:  # noqa: BLE001 - unreadable: nobody is named, so nothing is deleted
            return None
        return doc.get("environment") if isinstance(doc, dict) else None

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        where = f"gs://{self.bucket}/{self.root}"
        if current is None:  # a dry-run that could not look
            return Plan([Change(f"delete the weights we staged under {where}", "delete", apply=lambda ctx: None)])
        doomed, kept = [], []
        for f in current:
            folder = f"gs://{self.bucket}/{f['folder']}"
            if f["environment"] != s.env_name:
                whose = f"environment {f['environment']}" if f["environment"] else "no recorded environment"
                kept.append(f"{folder} (staged by {whose})")
                continue
            shared = kept_for(self.others, lambda other: _stages(other, self.bucket, f["folder"]))
            if shared:
                kept.append(f"{folder} ({shared})")
                continue
            doomed.append(f)
        note = f"; kept {'; '.join(kept)}" if kept else ""
        names = [n for f in doomed for n in f["objects"]]
        uploads = [u for f in doomed for u in f["uploads"]]
        if not names and not uploads:
            return noop(f"nothing of ours to delete under {where}{note}")
        total = sum(f["bytes"] for f in doomed)
        changes = [Change(f"delete {len(names)} objects ({_size(total)}) we staged under {where}", "delete",
                          apply=lambda ctx: self._delete(ctx, names))] if names else []
        if uploads:
            changes.append(Change(f"abort {len(uploads)} unfinished upload(s) under {where}", "delete",
                                  apply=lambda ctx: abort_uploads(ctx, self.bucket, uploads)))
        return Plan(changes, diff={"delete": names, "abort": [n for n, _ in uploads]}, note=note)

    def _delete(self, ctx, names: list[str]) -> None:
        from google.api_core import exceptions as gexc

        bucket = gcs_client(ctx).bucket(self.bucket)

        def one(name: str) -> None:
            try:
                ctx.retrying(lambda: bucket.blob(name).delete(retry=None), "deleting an object")
            except gexc.NotFound:
                pass

        with ThreadPoolExecutor(ctx.settings.models.workers, thread_name_prefix="gcs-del") as pool:
            for fut in [pool.submit(one, n) for n in names]:
                try:
                    fut.result()
                except Exception as exc:  # noqa: BLE001
                    raise _gcs_error(exc, bucket=self.bucket, doing="deleting from") from None


# ---------------------------------------------------------------------------------------------
# Transfer engine


@dataclass
class _Tuning:
    chunk: int
    workers: int
    budget: int
    temp_dir: str | None

    @classmethod
    def from_settings(cls, s) -> "_Tuning":
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
                f"not enough temp space: staging holds up to {_size(need)} in flight (2 × models.workers × "
                f"models.chunk_mib, at most models.max_temp_gib) but {where} has {_size(free)} free",
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


@dataclass
class _ResumePoint:
    chunks: int  # chunks 0..chunks-1 are uploaded (parts 1..chunks) and hashed
    offset: int
    state: str
    crc: int
    upload_id: str
    etags: dict[int, str]  # part number → etag, for completing the upload


def _partial_dir(folder: str, f: RepoFile, chunk: int) -> str:
    tag = (f.sha256 or f.git_oid or "x")[:16]
    return f"{folder.rstrip('/')}{PARTIAL_SUFFIX}/{f.path}/{tag}-{chunk}/"


def _chunk_name(pdir: str, index: int) -> str:
    """The resume record of chunk ``index`` (part ``index + 1``)."""
    return f"{pdir}{index:06d}"


def _resume_points(obs: Observed, missing: list[RepoFile], folder: str, chunk: int) -> dict[str, _ResumePoint]:
    """Where each unfinished file's upload continues: after the longest run of parts from the first that
    GCS still holds (same size, same etag) and that a record gives the hash state after."""
    points = {}
    for f in missing:
        n = -(-f.size // chunk)
        if n <= 1 or not f.lfs:
            continue
        pdir = _partial_dir(folder, f, chunk)
        live = obs.uploads.get(folder + f.path, [])
        upload_id, etags, best = None, {}, None
        for i in range(n - 1):  # the last part is never a resume point: the file would be done
            meta = getattr(obs.partials.get(_chunk_name(pdir, i)), "metadata", None) or {}
            upload_id = upload_id or meta.get(UPLOAD_KEY)
            want = (min(chunk, f.size - i * chunk), meta.get(ETAG_KEY))
            state = meta.get(STATE_KEY) or ""
            if (meta.get(UPLOAD_KEY) != upload_id or upload_id not in live or "|" not in state
                    or obs.parts.get(upload_id, {}).get(i + 1) != want):
                break
            etags[i + 1] = meta[ETAG_KEY]
            best = (i, state)
        if best:
            i, state = best
            hash_state, _, crc = state.rpartition("|")
            try:
                _Sha256(hash_state)
                points[f.path] = _ResumePoint(i + 1, (i + 1) * chunk, hash_state, int(crc), upload_id, etags)
            except ValueError:
                continue
    return points


def _stale_uploads(obs: Observed, resume: dict[str, _ResumePoint]) -> list[tuple[str, str]]:
    """Unfinished uploads under the folder that nothing will continue (billed until aborted)."""
    kept = {r.upload_id for r in resume.values()}
    return sorted((name, u) for name, ids in obs.uploads.items() for u in ids if u not in kept)


class _Buffer:
    """One chunk's bytes: in memory, or in a file under models.temp_dir."""

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

    def reader(self):
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


class _Budget:
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


class _Progress:
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
        if hasattr(stream, "isatty") and stream.isatty() and shutil.get_terminal_size((0, 0)).columns >= 40:
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
        return (f"    staged {_size(done)} of {_size(self.total)} ({pct:.0f}%), {_size(rate)}/s, ETA {eta}, "
                f"files {files}/{self.files}")

    def _ticker(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.ctx.printer.line(self.line(), "dim")

    def close(self) -> None:
        self.stop_event.set()
        if self.bar is not None:
            self.bar.close()
        if self.thread is not None:
            self.thread.join(timeout=1)


class _FileJob:
    """One file in flight: its chunks, the in-order hasher, what is uploaded."""

    def __init__(self, f: RepoFile, chunk: int, resume: _ResumePoint | None, pdir: str, name: str):
        self.f = f
        self.name = name  # the final object
        # Non-LFS files (configs, templates: small by the hub's rules) are one piece, checked against
        # their git blob id; LFS files are chunked and checked against their sha256.
        self.chunk = chunk if f.lfs else max(f.size, 1)
        self.n = max(1, -(-f.size // self.chunk))
        self.pdir = pdir
        self.lock = threading.Lock()
        first = resume.chunks if resume else 0
        self.next_hash = first
        self.sha = _Sha256(resume.state) if resume else _Sha256()
        self.crc = resume.crc if resume else 0
        self.pending: dict[int, _Buffer] = {}
        self.remaining = set(range(first, self.n))
        self.first = first
        self.digest: str | None = None
        self.failed: str | None = None
        self.upload_id = resume.upload_id if resume else None  # the multipart upload, when several parts
        self.etags: dict[int, str] = dict(resume.etags) if resume else {}

    def span(self, index: int) -> tuple[int, int]:
        start = index * self.chunk
        return start, min(self.chunk, self.f.size - start)


class _FolderClaim:
    """This run's in-progress marker on a staging folder (see "One run per folder" above).

    Taken before the first byte (it is also the first write: a bucket we cannot write fails here),
    refreshed every :data:`MARKER_HEARTBEAT_S` by a thread, removed when the block ends, whatever happened.
    Every write carries a generation precondition, so two runs never both hold it.
    """

    def __init__(self, ctx, bucket, folder: str, revision: str, stale: RunMarker | None):
        self.ctx = ctx
        self.bucket = bucket
        self.where = f"gs://{bucket.name}/{folder}"
        self.blob = bucket.blob(_marker_name(folder))
        self.generation = stale.generation if stale else 0  # 0: create only if absent
        self.doc = {"tool": "gptoss-gke stage-model", "environment": ctx.settings.env_name, "revision": revision,
                    "host": socket.gethostname(),
                    "pid": os.getpid(), "claim": os.urandom(8).hex(), "started": _utc_now().isoformat()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        from google.api_core import exceptions as gexc

        data = json.dumps({**self.doc, "heartbeat": _utc_now().isoformat()}).encode()
        try:
            self.blob.upload_from_string(data, content_type="application/json",
                                         if_generation_match=self.generation, retry=None)
        except gexc.PreconditionFailed:
            if not self._still_ours():  # (a retry after a lost answer finds our own write)
                raise
        self.generation = int(self.blob.generation or 0)

    def _still_ours(self) -> bool:
        try:
            current = self.bucket.get_blob(self.blob.name, retry=None)
            doc = json.loads(current.download_as_bytes(retry=None)) if current is not None else {}
        except Exception:  # noqa: BLE001 - cannot tell: not ours
            return False
        if isinstance(doc, dict) and doc.get("claim") == self.doc["claim"]:
            self.blob = current
            return True
        return False

    def __enter__(self) -> "_FolderClaim":
        from google.api_core import exceptions as gexc

        try:
            self.ctx.retrying(self._write, "claiming the staging folder")
        except gexc.PreconditionFailed:
            raise StepError(f"another stage-model run claimed {self.where} a moment ago",
                            "wait for it to finish, then re-run (what it staged is kept)") from None
        except Exception as exc:  # noqa: BLE001
            err = _gcs_error(exc, bucket=self.bucket.name, doing="writing to")
            if isinstance(err, StepError) and "permission denied" in err.problem:
                raise StepError(f"gs://{self.bucket.name} is not writable by this identity: {_gcs_message(exc)}",
                                f"ask for roles/storage.objectAdmin (or storage.admin) on gs://{self.bucket.name}, "
                                f"or set models.bucket to a bucket you own") from None
            raise err from None
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="stage-claim")
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        from google.api_core import exceptions as gexc

        while not self._stop.wait(MARKER_HEARTBEAT_S):
            try:
                self._write()
            except gexc.PreconditionFailed:
                self.generation = -1  # taken over: this run was silent too long (a suspended laptop, say)
                return
            except Exception:  # noqa: BLE001 - one missed heartbeat is not fatal: stale takes many
                continue

    def check(self) -> None:
        """Still ours? Checked before the manifest is written: it is what makes a folder complete."""
        if self.generation < 0:
            raise StepError(f"another stage-model run took over {self.where} while this one was silent",
                            "let that run finish, then re-run to verify the folder")

    def __exit__(self, *exc) -> None:
        from google.api_core import exceptions as gexc

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.generation < 0:
            return  # not ours any more
        try:
            self.blob.delete(if_generation_match=self.generation, retry=None)
        except gexc.NotFound:
            pass
        except Exception:  # noqa: BLE001 - best effort: a leftover marker only says when it was last refreshed
            pass


class _Transfer:
    def __init__(self, ctx, *, hub: HubRepo, bucket, folder: str, revision: str, files: list[RepoFile],
                 resume: dict[str, _ResumePoint], tuning: _Tuning):
        self.ctx = ctx
        self.hub = hub
        self.bucket = bucket
        self.mpu = MultipartUploads(bucket)
        self.folder = folder
        self.revision = revision
        self.tuning = tuning
        self.jobs = [_FileJob(f, tuning.chunk, resume.get(f.path), _partial_dir(folder, f, tuning.chunk),
                              folder + f.path)
                     for f in sorted(files, key=lambda f: (f.size > tuning.chunk, f.path))]
        self.resumed = sum(r.offset for r in resume.values())
        self.budget = _Budget(tuning.budget)
        self.errors: list[str] = []
        self.fatal: BaseException | None = None
        self.done: dict[str, StagedObject] = {}
        self.lock = threading.Lock()
        self.bytes_down = 0
        self.bytes_up = 0
        self.headers = hub.headers()
        self.session = None
        self.stop = interrupt.current()

    def _stopping(self) -> bool:
        return self.fatal is not None or self.stop.is_set()

    def stats(self) -> dict:
        return {"files_moved": len(self.done), "bytes_downloaded": self.bytes_down, "bytes_uploaded": self.bytes_up,
                "resumed_bytes": self.resumed}

    # -- orchestration
    def run(self) -> None:
        import requests

        # Plain requests for the byte ranges (whatever HTTP client this huggingface_hub version uses):
        # one pooled connection per worker; redirects to the CDN are followed and requests drops the
        # Authorization header when the host changes.
        self.session = requests.Session()
        pool = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=self.tuning.workers + 4)
        self.session.mount("http://", pool)
        self.session.mount("https://", pool)
        total = sum(j.f.size for j in self.jobs) - self.resumed
        self.progress = _Progress(self.ctx, total, len(self.jobs))
        workers = self.tuning.workers
        self.down_pool = ThreadPoolExecutor(workers, thread_name_prefix="hf-get")
        self.up_pool = ThreadPoolExecutor(workers, thread_name_prefix="gcs-put")
        try:
            # Ctrl-C/SIGTERM: no chunk starts after it, and a wait for local space ends at once.
            with self.stop.on_interrupt(self.budget.abort):
                for job in self.jobs:
                    if self._stopping():
                        break
                    if job.n > 1 and job.upload_id is None:
                        self._guard(self._start, job)
                    for index in range(job.first, job.n):
                        if self._stopping() or job.failed:
                            break
                        _, length = job.span(index)
                        if not self.budget.acquire(length):
                            break
                        self.down_pool.submit(self._guard, self._download, job, index, length)
        finally:
            self.down_pool.shutdown(wait=True)
            self.up_pool.shutdown(wait=True)
            self.progress.close()
        self._cleanup_failed()
        if self.fatal is None and self.stop.is_set():
            self.fatal = self.stop.error(f"while staging into gs://{self.bucket.name}/{self.folder} (parts already "
                                         f"uploaded are kept: the next run resumes from them)")
        if self.fatal is None and not self.errors:
            # The resume records are done with; the run's claim is removed by _FolderClaim.
            self._delete_prefix(f"{self.folder.rstrip('/')}{PARTIAL_SUFFIX}/", keep=_marker_name(self.folder))
        if self.fatal is not None:
            if isinstance(self.fatal, StepError):
                raise self.fatal
            raise self.fatal
        if self.errors:
            first, *rest = self.errors
            more = f" (and {len(rest)} more: {'; '.join(rest)})" if rest else ""
            raise StepError(first + more, "nothing was written under the failing file's final name; re-run to "
                            "retry (the upstream file may be corrupt or have changed: if it persists, pin "
                            "another revision)")

    def _guard(self, fn, job: _FileJob, *args) -> None:
        try:
            fn(job, *args)
        except Exception as exc:  # noqa: BLE001 - recorded, the run stops
            with self.lock:
                if self.fatal is None:
                    self.fatal = exc
            self.budget.abort()

    # -- per chunk
    def _download(self, job: _FileJob, index: int, length: int) -> None:
        if self._stopping() or job.failed:
            self.budget.release(length)
            return
        start, _ = job.span(index)
        buf = _Buffer(self.tuning.temp_dir)
        try:
            self.ctx.retrying(lambda: self._fetch(job.f, start, length, buf), f"downloading {job.f.path}")
        except Exception as exc:
            buf.close()
            self.budget.release(length)
            if isinstance(exc, ToolError):  # (an interrupt among them)
                raise
            raise self.hub.explain(exc, self.revision) from None
        self._offer(job, index, buf)

    def _fetch(self, f: RepoFile, start: int, length: int, buf: _Buffer) -> None:
        buf.reset()
        headers = dict(self.headers)
        headers["Accept-Encoding"] = "identity"  # the bytes as published, so sizes and hashes hold
        ranged = length != f.size
        if ranged:
            headers["Range"] = f"bytes={start}-{start + length - 1}"
        url = self.hub.url(self.revision, f.path)
        with self.session.get(url, headers=headers, stream=True, allow_redirects=True, timeout=(15, 60)) as r:
            if r.status_code >= 400:
                err = HubHttpError(r.status_code, r.headers.get("X-Error-Code"), r.headers.get("X-Error-Message"),
                                   url)
                err.response = r  # is_transient reads the status from here (429, 5xx)
                raise err
            if ranged and r.status_code != 206:
                raise StepError(f"{self.hub.endpoint} ignored a Range request for {f.path} (HTTP {r.status_code})",
                                "use the Hugging Face Hub or a mirror that supports byte ranges")
            got = 0
            for piece in r.iter_content(1024 * 1024):
                self.stop.check(f"while downloading {f.path}")
                buf.write(piece)
                got += len(piece)
                with self.lock:
                    self.bytes_down += len(piece)
            if got != length:
                raise _Transient(f"short read of {f.path}: {got} of {length} bytes")

    def _offer(self, job: _FileJob, index: int, buf: _Buffer) -> None:
        """Hash chunks strictly in order; each hashed chunk goes to the upload pool with the state after it."""
        import google_crc32c

        ready = []
        with job.lock:
            job.pending[index] = buf
            while job.next_hash in job.pending:
                i = job.next_hash
                b = job.pending.pop(i)
                chunk_crc = 0
                for piece in b.pieces():
                    job.sha.update(piece)
                    job.crc = google_crc32c.extend(job.crc, piece)
                    chunk_crc = google_crc32c.extend(chunk_crc, piece)
                job.next_hash += 1
                state = job.sha.state()
                if job.next_hash == job.n:
                    job.digest = job.sha.hexdigest()
                    if not self._matches(job, b):
                        job.failed = (f"{job.f.path}: content does not match the hash the hub publishes "
                                      f"({'sha256' if job.f.lfs else 'git blob id'}); upstream bytes corrupt or "
                                      f"changed in transit")
                ready.append((i, b, chunk_crc, f"{state}|{job.crc}" if state else None))
        for i, b, chunk_crc, state in ready:
            self.up_pool.submit(self._guard, self._upload, job, i, b, chunk_crc, state)

    def _matches(self, job: _FileJob, whole: _Buffer) -> bool:
        f = job.f
        if f.lfs:
            return job.digest == f.sha256
        h = hashlib.sha1(b"blob %d\0" % f.size)
        for piece in whole.pieces():
            h.update(piece)
        return h.hexdigest() == f.git_oid

    def _upload(self, job: _FileJob, index: int, buf: _Buffer, chunk_crc: int, state: str | None) -> None:
        _, length = job.span(index)
        try:
            if self._stopping() or job.failed:
                return
            if job.n == 1:
                obj = self._put(job.name, buf, chunk_crc, self._final_metadata(job))
                self.progress.add(length)
                self._finish(job, obj)
                return
            etag = self._put_part(job, index, buf, chunk_crc)
            if state:
                self._record(job, index, etag, state)
            self.progress.add(length)
            with job.lock:
                job.etags[index + 1] = etag
                job.remaining.discard(index)
                last = not job.remaining and job.digest is not None
            if last and not job.failed:
                self._complete(job)
        finally:
            buf.close()
            self.budget.release(length)

    def _final_metadata(self, job: _FileJob) -> dict:
        meta = {SHA_KEY: job.digest or job.f.sha256, "hf-revision": self.revision}
        if not job.f.lfs:
            meta["git-oid"] = job.f.git_oid
        return meta

    def _put(self, name: str, buf: _Buffer, crc: int, metadata: dict) -> StagedObject:
        want = _b64crc(crc)

        def once():
            blob = self.bucket.blob(name)
            blob.metadata = metadata
            blob.crc32c = want  # GCS rejects the upload if the body does not match
            blob.upload_from_file(buf.reader(), size=buf.size, content_type="application/octet-stream",
                                  checksum=None, retry=None, timeout=(15, 600))
            if blob.crc32c != want:
                self._delete_quietly(name)
                raise _Transient(f"crc32c of gs://{self.bucket.name}/{name} is {blob.crc32c}, sent {want}")
            with self.lock:
                self.bytes_up += buf.size
            return StagedObject(name, int(blob.size or buf.size), metadata.get(SHA_KEY), blob.crc32c, dict(metadata))

        try:
            return self.ctx.retrying(once, f"uploading {name.rsplit('/', 1)[-1]}")
        except StepError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket.name, doing="uploading to") from None

    # -- files of several parts: one multipart upload each
    def _start(self, job: _FileJob) -> None:
        """Open the file's upload under its final name, carrying the sha256 the hub publishes: it is only
        completed once our own hash of the bytes equals it."""
        try:
            job.upload_id = self.ctx.retrying(lambda: self.mpu.start(job.name, self._final_metadata(job)),
                                              f"starting the upload of {job.f.path}")
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket.name, doing="uploading to") from None

    def _put_part(self, job: _FileJob, index: int, buf: _Buffer, crc: int) -> str:
        def once() -> str:
            etag = self.mpu.put_part(job.name, job.upload_id, index + 1, buf, crc)
            with self.lock:
                self.bytes_up += buf.size
            return etag

        try:
            return self.ctx.retrying(once, f"uploading part {index + 1} of {job.f.path}")
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket.name, doing="uploading to") from None

    def _record(self, job: _FileJob, index: int, etag: str, state: str) -> None:
        """The zero-byte resume record of a part: what a killed run needs to continue the upload."""
        blob = self.bucket.blob(_chunk_name(job.pdir, index))
        blob.metadata = {STATE_KEY: state, UPLOAD_KEY: job.upload_id, ETAG_KEY: etag}
        try:
            self.ctx.retrying(lambda: blob.upload_from_string(b"", content_type="application/octet-stream",
                                                              retry=None), "recording progress")
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket.name, doing="uploading to") from None

    def _complete(self, job: _FileJob) -> None:
        """Assemble the parts under the final name (server-side), then check what GCS made of them."""
        from google.api_core import exceptions as gexc

        try:
            self.ctx.retrying(lambda: self.mpu.complete(job.name, job.upload_id, job.etags),
                              f"completing the upload of {job.f.path}")
        except gexc.NotFound:
            pass  # an earlier attempt completed it and the answer was lost: the check below decides
        except Exception as exc:  # noqa: BLE001
            raise _gcs_error(exc, bucket=self.bucket.name, doing="completing an upload in") from None
        final = self.ctx.retrying(lambda: self.bucket.get_blob(job.name, retry=None), f"reading {job.f.path}")
        if final is None or final.crc32c != _b64crc(job.crc) or int(final.size or 0) != job.f.size:
            if final is not None:
                self._delete_quietly(final.name)
            with job.lock:
                job.failed = (f"{job.f.path}: the uploaded object's crc32c/size "
                              f"({getattr(final, 'crc32c', None)}, {getattr(final, 'size', None)}) differs from the "
                              f"bytes we verified ({_b64crc(job.crc)}, {job.f.size})")
            return
        job.upload_id = None
        self._finish(job, StagedObject(final.name, job.f.size, job.digest, final.crc32c, final.metadata or {}))
        self._delete_prefix(job.pdir)

    def _finish(self, job: _FileJob, obj: StagedObject) -> None:
        with self.lock:
            self.done[job.f.path] = obj
        self.progress.file_done()

    # -- cleanup
    def _delete_quietly(self, name: str) -> None:
        from google.api_core import exceptions as gexc

        try:
            self.bucket.blob(name).delete(retry=None)
        except gexc.NotFound:
            pass
        except Exception:  # noqa: BLE001 - cleanup is best effort; leftovers are under .partial/
            pass

    def _delete_prefix(self, prefix: str, keep: str | None = None) -> None:
        try:
            names = [b.name for b in self.bucket.client.list_blobs(self.bucket.name, prefix=prefix, retry=None)]
        except Exception:  # noqa: BLE001
            return
        for name in names:
            if name != keep:
                self._delete_quietly(name)

    def _cleanup_failed(self) -> None:
        """A file that failed verification leaves nothing: no final object, no parts, nothing to resume from."""
        for job in self.jobs:
            if job.failed:  # its final name was never written (or was deleted when its crc32c differed)
                self.errors.append(job.failed)
                if job.upload_id:
                    try:
                        self.mpu.abort(job.name, job.upload_id)
                    except Exception:  # noqa: BLE001 - a later run aborts it (or purge does)
                        pass
                self._delete_prefix(job.pdir)
