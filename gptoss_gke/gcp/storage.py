"""Cloud Storage: the client, the weights bucket and its IAM grant (created and revoked here).

* :class:`Bucket` — absent: created in ``models.location`` with uniform bucket-level access, public
  access prevention and our labels. Present: its owner, location and access mode are checked; what we
  cannot or should not change is reported (a location is immutable; a bucket we did not create is
  never relabelled, since teardown deletes what carries our labels).
* :class:`BucketIamBinding` / :class:`RevokeBucketIamBinding` — ``roles/storage.objectViewer`` on this
  bucket only, for the serving workload's Kubernetes service account through its Workload Identity
  principal. Read-modify-write of the bucket policy carrying the etag we read, so a concurrent edit
  makes GCS answer 412 instead of being overwritten; we then read again and retry.
* :class:`MultipartUploads` — the XML API's multipart uploads, which staging uses for large files.

Credentials: gcloud's access token (shared with every gcloud step, refreshed through gcloud when it
expires) or, with ``STORAGE_EMULATOR_HOST`` set, anonymous access to that emulator. The SDK is imported
inside functions: ``inv --list`` must not load it.
"""

from __future__ import annotations

import base64
import json
import datetime as _dt
import os

from gptoss_gke.core.retry import is_transient_exception
from gptoss_gke.core.step import Change, Plan, Step, noop
from gptoss_gke.errors import CannotObserve, StepError
from gptoss_gke.gcp.project import Credentials, project_number
from gptoss_gke.ownership import kept_for

VIEWER_ROLE = "roles/storage.objectViewer"
XML_API = "https://storage.googleapis.com"
_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# What the steps import lazily (see Step.sdk_modules: the runner imports these on the main thread
# before reads run concurrently).
GCS_SDK = ("requests", "urllib3", "google.auth", "google.auth.credentials", "google.auth.exceptions", "google.auth.transport.requests",
           "google.oauth2.credentials", "google.api_core.exceptions", "google.cloud.storage",
           "google.resumable_media", "google_crc32c")


def workload_principal(settings, project_number: str, service_account: str | None = None) -> str:
    """The Workload Identity principal of a Kubernetes service account in our namespace (by default the
    serving pods' one)."""
    ksa = service_account or settings.kube.service_account
    return (f"principal://iam.googleapis.com/projects/{project_number}/locations/global/workloadIdentityPools/"
            f"{settings.workload_pool}/subject/ns/{settings.kube.namespace}/sa/{ksa}")


def b64_crc32c(value: int) -> str:
    """A crc32c as Cloud Storage spells it (base64 of the 4 big-endian bytes)."""
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def emulator_host() -> str | None:
    # The one environment variable read below the tasks: google-cloud-storage itself obeys it, so
    # we must know when it is set to pick credentials that match (anonymous for the emulator).
    return os.environ.get(_EMULATOR_ENV) or None


class TransientError(ConnectionError):
    """A short read, a checksum Cloud Storage disagrees with, or similar: worth another try."""


# ---------------------------------------------------------------------------------------------
# Cloud Storage client


def gcs_client(ctx):
    """One google-cloud-storage client per run, on gcloud's identity (or anonymous on an emulator)."""

    def build():
        import requests
        from google.cloud import storage

        workers = ctx.settings.models.workers
        pool = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=2 * workers + 8)
        if emulator_host():
            from google.auth.credentials import AnonymousCredentials

            creds = AnonymousCredentials()
            session = requests.Session()
        elif ctx.fact("gcs.credentials", lambda: "gcloud") == "adc":
            # A pod of the in-cluster staging Job: its Kubernetes service account's identity through
            # Workload Identity (the metadata server), refreshed by google-auth itself. No gcloud there.
            import google.auth
            from google.auth.transport.requests import AuthorizedSession

            creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/devstorage.read_write"])
            session = AuthorizedSession(creds)
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


def gcs_error(exc: Exception, *, bucket: str, doing: str) -> Exception:
    """GCS failures in words, with the fix. Returns the exception to raise."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.Forbidden):
        return StepError(f"permission denied {doing} gs://{bucket}: {gcs_message(exc)}",
                         f"the bucket may belong to another project (names are global: set models.bucket to a "
                         f"name of your own), or ask for roles/storage.admin on gs://{bucket}")
    if isinstance(exc, gexc.Unauthorized):
        return CannotObserve(f"Cloud Storage refused the credentials while {doing} gs://{bucket}",
                             "run `inv auth` (gcloud auth login)")
    if is_transient_exception(exc) and isinstance(exc, OSError):
        return CannotObserve(f"cannot reach Cloud Storage while {doing} gs://{bucket}: {exc}",
                             "check the network or proxy; `inv doctor` tests the whole chain")
    return exc


def gcs_message(exc) -> str:
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
        self.base = (emulator_host() or XML_API).rstrip("/")

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
        want = b64_crc32c(crc)
        r = self._call("PUT", self._url(name), params={"partNumber": number, "uploadId": upload_id},
                       data=buf.body(), headers={"Content-Length": str(buf.size), "x-goog-hash": f"crc32c={want}"},
                       what=f"uploading part {number} of {name}")
        hashes = dict(h.strip().split("=", 1) for h in r.headers.get("x-goog-hash", "").split(",") if "=" in h)
        if hashes.get("crc32c") != want:
            raise TransientError(f"part {number} of {name}: GCS reports crc32c {hashes.get('crc32c')}, sent {want}")
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
            raise gcs_error(exc, bucket=bucket, doing="aborting an upload in") from None


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
    key = "gcs.bucket"
    sdk_modules = GCS_SDK

    def __init__(self, settings):
        self.bucket = settings.models.bucket
        self.name = f"bucket {self.bucket}"

    def observe(self, ctx):
        from google.api_core import exceptions as gexc

        ctx.shell.check_online()
        client = gcs_client(ctx)
        try:
            b = ctx.retrying(lambda: client.get_bucket(self.bucket, retry=None), "reading the bucket")
        except gexc.NotFound:
            return None
        except Exception as exc:  # noqa: BLE001 - classified
            raise gcs_error(exc, bucket=self.bucket, doing="reading") from None
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
            raise gcs_error(exc, bucket=self.bucket, doing="creating") from None

    def _enable_ubla(self, ctx) -> None:
        client = gcs_client(ctx)
        b = client.bucket(self.bucket)
        b.iam_configuration.uniform_bucket_level_access_enabled = True
        try:
            ctx.retrying(lambda: b.patch(retry=None), "updating the bucket")
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=self.bucket, doing="updating") from None



# ---------------------------------------------------------------------------------------------
# IAM


def read_bucket_policy(ctx, bucket: str):
    """The bucket's policy at version 3 (conditional bindings included), or None when there is no bucket."""
    from google.api_core import exceptions as gexc

    b = gcs_client(ctx).bucket(bucket)
    try:
        return ctx.retrying(lambda: b.get_iam_policy(requested_policy_version=3, retry=None),
                            "reading the bucket policy")
    except gexc.NotFound:
        return None
    except Exception as exc:  # noqa: BLE001
        raise gcs_error(exc, bucket=bucket, doing="reading the IAM policy of") from None


def edit_bucket_policy(ctx, bucket: str, edit) -> None:
    """Read-modify-write of the bucket policy; ``edit(policy)`` changes it in place and returns whether it
    did. The policy carries the etag we read, so GCS answers 412 if someone changed it meanwhile: read
    again and redo the edit (at most 5 times)."""
    from google.api_core import exceptions as gexc

    b = gcs_client(ctx).bucket(bucket)
    for _attempt in range(5):
        try:
            policy = ctx.retrying(lambda: b.get_iam_policy(requested_policy_version=3, retry=None),
                                  "reading the bucket policy")
            if not edit(policy):
                return
            policy.version = 3  # conditional bindings are only kept (and only readable) at version 3
            ctx.retrying(lambda: b.set_iam_policy(policy, retry=None), "writing the bucket policy")
            return
        except gexc.PreconditionFailed:
            ctx.printer.line("    the bucket policy changed while we edited it; reading it again", "dim")
            continue
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=bucket, doing="setting the IAM policy of") from None
    raise StepError(f"the IAM policy of gs://{bucket} kept changing under us (5 attempts)",
                    "re-run when whoever else edits it is done")


class BucketIamBinding(Step):
    section = "models"
    key = "gcs.bucket-grant"
    sdk_modules = GCS_SDK

    def __init__(self, settings):
        self.bucket = settings.models.bucket
        ns, ksa = settings.kube.namespace, settings.kube.service_account
        self.name = f"bucket IAM: objectViewer for {ns}/{ksa}"
        self.needs = (Bucket.key,)

    def _member(self, ctx) -> str:
        return workload_principal(ctx.settings, project_number(ctx))

    def observe(self, ctx):
        ctx.shell.check_online()
        member = self._member(ctx)
        policy = read_bucket_policy(ctx, self.bucket)
        if policy is None:
            return {"member": member, "present": False, "bucket": False}
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
        member = self._member(ctx)
        edit_bucket_policy(ctx, self.bucket, lambda policy: edit(policy, member))


class RevokeBucketIamBinding(BucketIamBinding):
    """Teardown: remove our member from objectViewer on the bucket (same etag-guarded read-modify-write),
    unless another environment's pods read the bucket as the same principal (same project, namespace
    and service account: Workload Identity names no cluster)."""

    def __init__(self, settings, others: dict | None = None):
        super().__init__(settings)
        self.others = others or {}
        self.name = f"bucket IAM: revoke objectViewer of {settings.kube.namespace}/{settings.kube.service_account}"
        self.key = "gcs.bucket-grant.revoke"
        self.needs = (Credentials.key,)  # teardown: what is already gone must not stop the rest

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
# A role on one prefix of the bucket


def prefix_condition(bucket: str, prefix: str) -> str:
    """The CEL condition that limits a bucket binding to the objects under ``prefix`` (and to listing them).

    Object permissions are checked against ``projects/_/buckets/<b>/objects/<name>``, so
    ``resource.name.startsWith`` confines reads and writes. A list (``storage.objects.list``) is checked
    against the bucket itself, where that clause never matches; the ``objectListPrefix`` request attribute
    (the ``prefix=`` of the list call) admits lists that stay inside the prefix, so no unconditioned grant
    (which would let the member list the whole bucket) is needed.
    """
    return (f"resource.name.startsWith({json.dumps(f'projects/_/buckets/{bucket}/objects/{prefix}')}) || "
            f"api.getAttribute({json.dumps('storage.googleapis.com/objectListPrefix')}, \"\")"
            f".startsWith({json.dumps(prefix)})")


class PrefixGrant(Step):
    """``role`` on the objects under ``prefix`` of THIS bucket (and listing them), for ``member`` only.

    One conditional binding in the bucket's own policy (IAM Conditions: policy version 3, which GCS accepts
    only on buckets with uniform bucket-level access, as :class:`Bucket` creates them). The binding is ours
    when it has our ``title``, ``role`` and ``member``; a different condition under that title is drift and
    is replaced. ``member``: a principal, or a function of the context that returns one (a Workload
    Identity principal needs the project number). ``prefix`` must end with ``/``, so ``models/a/`` never
    covers ``models/ab``. Removed by :class:`RevokePrefixGrant` with the same arguments.
    """

    section = "models"
    sdk_modules = GCS_SDK

    def __init__(self, settings, *, member, role: str, prefix: str, title: str, key: str | None = None,
                 name: str | None = None):
        if not prefix.endswith("/") or prefix.startswith("/"):
            raise ValueError(f"a grant's prefix is a folder (`a/b/`), got {prefix!r}")
        if len(title) > 100:  # the IAM limit on a condition's title
            raise ValueError(f"condition title over 100 characters: {title!r}")
        self.bucket = settings.models.bucket
        self.member = member
        self.role = role
        self.prefix = prefix
        self.title = title
        self.expression = prefix_condition(self.bucket, prefix)
        self.key = key or f"gcs.prefix-grant.{title}"
        self.name = name or f"bucket IAM: {role.rsplit('/', 1)[-1]} on gs://{self.bucket}/{prefix}"
        self.needs = (Bucket.key,)

    def _member(self, ctx) -> str:
        return self.member(ctx) if callable(self.member) else self.member

    def condition(self) -> dict:
        return {"title": self.title, "description": f"objects under gs://{self.bucket}/{self.prefix} (gptoss-gke)",
                "expression": self.expression}

    def _ours(self, binding: dict, member: str) -> bool:
        cond = binding.get("condition") or {}
        return (binding.get("role") == self.role and cond.get("title") == self.title
                and member in set(binding.get("members") or ()))

    def observe(self, ctx):
        ctx.shell.check_online()
        member = self._member(ctx)
        policy = read_bucket_policy(ctx, self.bucket)
        found = [dict(b.get("condition") or {}) for b in (policy.bindings if policy is not None else ())
                 if self._ours(b, member)]
        return {"member": member, "bucket": policy is not None, "conditions": found}

    def plan(self, ctx, current) -> Plan:
        what = f"{self.role} on gs://{self.bucket}/{self.prefix}"
        if current is None:  # not observed (dry-run offline)
            return Plan([Change(f"grant {what} (condition: objects under the prefix)", "create", apply=self._grant)])
        member, found = current["member"], current["conditions"]
        if [c.get("expression") for c in found] == [self.expression]:
            return noop(f"{member} already has {what} (condition {self.title!r})")
        if not found:
            return Plan([Change(f"grant {what} to {member}, only under the prefix", "create", apply=self._grant)],
                        diff={"bindings": {self.role: {"add": [member], "condition": self.expression}}})
        return Plan([Change(f"replace the condition {self.title!r} of {member} on gs://{self.bucket} (drift: "
                            f"{'; '.join(str(c.get('expression')) for c in found)})", "update", apply=self._grant)],
                    diff={"condition": {"from": [c.get("expression") for c in found], "to": self.expression}})

    def _grant(self, ctx) -> None:
        member = self._member(ctx)
        want = self.condition()

        def edit(policy) -> bool:
            before = _bindings_key(policy.bindings)
            kept = []
            for b in policy.bindings:
                cond = b.get("condition") or {}
                if self._ours(b, member) and cond.get("expression") != self.expression:
                    b = {**b, "members": set(b.get("members") or ()) - {member}}  # drifted: replaced below
                elif b.get("role") == self.role and cond == want:  # IAM merges equal bindings: join it
                    b = {**b, "members": set(b.get("members") or ()) | {member}}
                if b.get("members"):
                    kept.append(b)
            if not any(b.get("role") == self.role and (b.get("condition") or {}) == want for b in kept):
                kept.append({"role": self.role, "members": {member}, "condition": want})
            policy.bindings = kept
            return _bindings_key(kept) != before  # someone may have made the same change meanwhile

        edit_bucket_policy(ctx, self.bucket, edit)


def _bindings_key(bindings) -> list:
    return [(b.get("role"), sorted(b.get("members") or ()), json.dumps(b.get("condition"), sort_keys=True))
            for b in bindings]


class RevokePrefixGrant(PrefixGrant):
    """Teardown: take ``member`` out of the bindings with our title and role (whatever their condition),
    unless ``shared(other_settings)`` says another environment (``others``: name → Settings, or the error
    loading it) still relies on the same grant. Bindings left without members go."""

    def __init__(self, settings, *, others: dict | None = None, shared=None, **grant):
        super().__init__(settings, **grant)
        self.others = others or {}
        self.shared = shared
        self.key = f"{self.key}.revoke"
        self.name = f"bucket IAM: revoke {self.role.rsplit('/', 1)[-1]} on gs://{self.bucket}/{self.prefix}"
        self.needs = (Credentials.key,)  # teardown: what is already gone must not stop the rest

    def plan(self, ctx, current) -> Plan:
        what = f"{self.role} on gs://{self.bucket}/{self.prefix}"
        if current is None:
            return Plan([Change(f"revoke {what}", "delete", apply=self._revoke)])
        if not current["conditions"]:
            return noop(f"{current['member']} holds no {what} (condition {self.title!r})")
        kept = kept_for(self.others, self.shared) if self.shared else None
        if kept:
            return noop(f"{current['member']} keeps {what}: {kept}")
        return Plan([Change(f"revoke {what} from {current['member']}", "delete", apply=self._revoke)],
                    diff={"bindings": {self.role: {"remove": [current["member"]], "condition": self.title}}})

    def _revoke(self, ctx) -> None:
        member = self._member(ctx)

        def edit(policy) -> bool:
            kept, changed = [], False
            for b in policy.bindings:
                if self._ours(b, member):
                    b, changed = {**b, "members": set(b.get("members") or ()) - {member}}, True
                if b.get("members"):
                    kept.append(b)
            policy.bindings = kept
            return changed

        edit_bucket_policy(ctx, self.bucket, edit)
