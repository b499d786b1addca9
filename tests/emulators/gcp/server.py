"""The emulator's core: one threaded HTTP server on 127.0.0.1, the request log, injected faults, held and
failing operations, projects, and routing to the API mixins (:mod:`.gke`, :mod:`.serviceusage`,
:mod:`.resourcemanager`, :mod:`.artifactregistry`)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from .artifactregistry import AR_PATH, ArtifactRegistry
from .errors import DEFAULT_MESSAGES, ApiError
from .gke import GKE_PATH, Gke
from .gke_defaults import CHANNEL_VERSIONS
from .operations import RPC_CODES, OperationHold, OpFailure, Operation
from .resourcemanager import ResourceManager
from .serviceusage import DEFAULT_ENABLED_SERVICES, SERVICE_TITLES, ServiceUsage

DEFAULT_PROJECT = "test-project"


class RecordedRequest(NamedTuple):
    """One request as received: ``method``, ``path`` (no query), ``query`` (name -> value; the
    last value when repeated), ``body`` (parsed JSON, or the raw text, or None). When it arrived:
    ``GcpEmulator.arrival(rec)``."""

    method: str
    path: str
    query: dict
    body: Any


class _Injection:
    def __init__(self, method, path_regex, status, times, body, headers, after_processing=False):
        self.after_processing = after_processing
        self.method = method.upper() if method else None
        self.regex = re.compile(path_regex)
        self.status = status
        self.remaining = times
        self.body = body
        self.headers = headers or {}
        self.fired = 0


class GcpState:
    """All emulator state. Attribute or item access (``state.clusters`` == ``state["clusters"]``).

    * ``projects``: project id -> {"projectNumber": str, "name": str, "labels": {...}}
    * ``clusters``: (project, location, name) -> stored cluster dict (node pools live apart)
    * ``nodepools``: (project, location, cluster, name) -> stored node pool dict
    * ``services``: project id -> set of enabled service names
    * ``repositories``: (project, location, name) -> stored repository dict
    * ``operations``: operation path -> operation record
    * ``docker_images``: (project, location, repository) -> the registry storage serving its images
    Stored dicts are the raw (unpruned) objects; take ``emu.lock`` to mutate them from a test
    while gcloud may be running.
    """

    def __init__(self):
        self.projects: dict[str, dict] = {}
        self.clusters: dict[tuple, dict] = {}
        self.nodepools: dict[tuple, dict] = {}
        self.services: dict[str, set] = {}
        self.repositories: dict[tuple, dict] = {}
        self.operations: dict[str, Operation] = {}
        self.docker_images: dict[tuple, Any] = {}

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self):
        return ["projects", "clusters", "nodepools", "services", "repositories", "operations", "docker_images"]


def _project_number(project_id: str) -> str:
    digest = int(hashlib.sha256(project_id.encode()).hexdigest(), 16)
    return str(100000000000 + digest % 899999999999)


class GcpEmulator(Gke, ServiceUsage, ResourceManager, ArtifactRegistry):
    """The emulator. ``with GcpEmulator() as emu:`` or ``emu.start()`` / ``emu.stop()``.

    Args:
        projects: project ids (or id -> number) that exist. Others answer 403.
        enabled_services: services enabled in every known project at start.
        op_polls_before_done: polls an operation answers RUNNING before DONE (0 = instant).
        enforce_service_enablement: container/artifactregistry calls need their API enabled.
        cluster_endpoint: the ``endpoint`` new clusters report (what kubeconfig points at).
    """

    def __init__(self, projects: Any = (DEFAULT_PROJECT,),
                 enabled_services: Any = DEFAULT_ENABLED_SERVICES,
                 op_polls_before_done: int = 1, enforce_service_enablement: bool = True,
                 cluster_endpoint: str = "127.0.0.1"):
        self.lock = threading.RLock()
        self.state = GcpState()
        self.op_polls_before_done = op_polls_before_done
        self.enforce_service_enablement = enforce_service_enablement
        self.cluster_endpoint = cluster_endpoint
        self.channel_versions = dict(CHANNEL_VERSIONS)
        self.default_enabled_services = tuple(enabled_services)
        self.services_max_page_size = 200
        self.repositories_max_page_size = 1000
        self.unhandled: list[RecordedRequest] = []  # requests no route knew (answered 501)
        self.injections_fired: list[tuple[RecordedRequest, int]] = []
        self._log: list[RecordedRequest] = []
        self._arrivals: list[float] = []  # time.time() of each logged request, to order it against other servers
        self._injections: list[_Injection] = []
        self._op_failures: list[OpFailure] = []
        self._holds: list[OperationHold] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        items = projects.items() if isinstance(projects, dict) else ((p, None) for p in projects)
        for project_id, number in items:
            self.add_project(project_id, number)

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """Base URL with trailing slash, the form CLOUDSDK_API_ENDPOINT_OVERRIDES_* wants."""
        if self.port is None:
            raise RuntimeError("emulator not started")
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> "GcpEmulator":
        if self._server is not None:
            return self
        emu = self

        class Handler(_Handler):
            emulator = emu

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"gcp-emulator-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> "GcpEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ request log
    @property
    def requests(self) -> list[RecordedRequest]:
        with self.lock:
            return list(self._log)

    def mutating_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method != "GET"]

    def find_requests(self, method: str | None = None, path_regex: str = "") -> list[RecordedRequest]:
        rx = re.compile(path_regex)
        return [r for r in self.requests
                if (method is None or r.method == method.upper()) and rx.search(r.path)]

    def arrival(self, rec: RecordedRequest) -> float:
        """When ``rec`` (one of ``requests``) arrived, as ``time.time()``."""
        with self.lock:
            return next(t for r, t in zip(self._log, self._arrivals) if r is rec)

    def clear_log(self) -> None:
        with self.lock:
            self._log.clear()
            self._arrivals.clear()
            self.unhandled.clear()
            self.injections_fired.clear()

    # ------------------------------------------------------------------ faults
    def inject(self, method: str | None, path_regex: str, status: int, times: int = 1,
               body: Any = None, headers: dict | None = None, *, after_processing: bool = False) -> None:
        """Answer the next ``times`` requests whose method matches (None = any) and whose path
        (without query) matches ``path_regex`` (re.search) with ``status``. ``body``: dict (sent as
        JSON), str/bytes (sent raw), or None for a Google-format error body. With
        ``after_processing`` the request takes effect first and only its answer is the error (a reply
        lost after the server acted: the race behind a 409 on the retry)."""
        with self.lock:
            self._injections.append(_Injection(method, path_regex, status, times, body, headers,
                                               after_processing))

    def fail_operation(self, path_regex: str, message: str, code: int | str = "INTERNAL",
                       method: str | None = None) -> None:
        """The operation started by the next mutating request matching ``path_regex`` ends DONE
        with ``error: {code, message}`` (GKE operations also get ``statusMessage``)."""
        if isinstance(code, str):
            code = RPC_CODES[code]
        with self.lock:
            self._op_failures.append(OpFailure(method, path_regex, message, code))

    def hold_operations(self, path_regex: str, method: str | None = None) -> OperationHold:
        """Operations started by the mutating requests matching ``path_regex`` (and ``method``) stay RUNNING,
        whatever ``op_polls_before_done`` says, until ``hold.release()``; later polls then complete them."""
        hold = OperationHold(method, path_regex)
        with self.lock:
            self._holds.append(hold)
        return hold

    def clear_faults(self) -> None:
        with self.lock:
            self._injections.clear()
            self._op_failures.clear()
            self._holds.clear()

    # ------------------------------------------------------------------ projects and operations
    def add_project(self, project_id: str, number: str | int | None = None, **fields) -> dict:
        with self.lock:
            number = str(number) if number is not None else _project_number(project_id)
            proj = {"projectNumber": number, "projectId": project_id, "name": project_id,
                    "lifecycleState": "ACTIVE", "createTime": "2024-01-01T00:00:00.000Z",
                    "labels": {}, "parent": {"type": "organization", "id": "123456789"}}
            proj.update(fields)
            self.state.projects[project_id] = proj
            self.state.services.setdefault(project_id, set(self.default_enabled_services))
            return proj

    def pending_operations(self) -> list[str]:
        with self.lock:
            return [n for n, op in self.state.operations.items() if not op.done]

    def finish_operations(self) -> None:
        """Complete every unfinished operation now (as if polled to the end)."""
        with self.lock:
            for op in list(self.state.operations.values()):
                if not op.done:
                    op.complete()

    # ------------------------------------------------------------------ HTTP dispatch
    def _handle(self, method: str, raw_path: str, body_bytes: bytes) -> tuple[int, Any, dict]:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body: Any = None
        if body_bytes:
            try:
                body = json.loads(body_bytes)
            except ValueError:
                body = body_bytes.decode("utf-8", "replace")
        rec = RecordedRequest(method, path, query, body)
        with self.lock:
            self._log.append(rec)
            self._arrivals.append(time.time())
            for inj in self._injections:
                if inj.remaining > 0 and (inj.method in (None, method)) and inj.regex.search(path):
                    inj.remaining -= 1
                    inj.fired += 1
                    self.injections_fired.append((rec, inj.status))
                    if inj.after_processing:
                        try:
                            self._route(method, path, query, body if isinstance(body, dict) else {})
                        except ApiError:
                            pass
                    if inj.body is None:
                        msg = DEFAULT_MESSAGES.get(inj.status, HTTPStatus(inj.status).phrase)
                        return inj.status, ApiError(inj.status, msg).body(), inj.headers
                    return inj.status, inj.body, inj.headers
            self._injections = [i for i in self._injections if i.remaining > 0]
            try:
                status, payload = self._route(method, path, query, body if isinstance(body, dict) else {})
            except ApiError as err:
                return err.code, err.body(), {}
            return status, payload, {}

    # ------------------------------------------------------------------ common helpers
    def _resolve_project(self, project: str) -> str:
        if project in self.state.projects:
            return project
        for pid, proj in self.state.projects.items():
            if proj["projectNumber"] == project:
                return pid
        return ""

    def _require_project(self, project: str, service: str | None = None) -> str:
        pid = self._resolve_project(project)
        if not pid:
            raise ApiError(403, f"Permission denied on resource project {project}.",
                           "PERMISSION_DENIED")
        if service and self.enforce_service_enablement and service not in self.state.services.get(pid, ()):
            number = self.state.projects[pid]["projectNumber"]
            title = SERVICE_TITLES.get(service, service)
            raise ApiError(
                403,
                f"{title} has not been used in project {number} before or it is disabled. Enable it "
                f"by visiting https://console.developers.google.com/apis/api/{service}/overview"
                f"?project={number} then retry.",
                "PERMISSION_DENIED",
                [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED",
                  "domain": "googleapis.com",
                  "metadata": {"service": service, "consumer": f"projects/{number}"}}])
        return pid

    def _has_op_failure(self, method: str, path: str) -> bool:
        return any(f.method in (None, method) and f.regex.search(path) for f in self._op_failures)

    def _take_op_failure(self, method: str, path: str) -> OpFailure | None:
        for i, failure in enumerate(self._op_failures):
            if failure.method in (None, method) and failure.regex.search(path):
                return self._op_failures.pop(i)
        return None

    def _start_op(self, op: Operation, method: str, path: str,
                  pending_in_reply: bool = False) -> Operation:
        """Register ``op``. With no polls left it completes now, unless ``pending_in_reply``:
        then the reply says not-done and the first poll completes it."""
        failure = self._take_op_failure(method, path)
        if failure:
            op.error = {"code": failure.code, "message": failure.message}
        self.state.operations[op.name] = op
        op.hold = next((h for h in self._holds if h.matches(method, path)), None)
        if op.hold is not None:
            op.hold.started.set()
            return op
        if op.polls_left <= 0 and not pending_in_reply:
            op.complete()
        return op

    def _poll(self, name: str) -> Operation:
        op = self.state.operations.get(name)
        if op is None:
            raise ApiError(404, f"Operation \"{name}\" not found.", "NOT_FOUND")
        return op.poll()

    def _not_implemented(self, what: str, query: dict, body: Any) -> ApiError:
        """A request gcloud may send that the emulator does not serve: logged in ``unhandled``, answered 501."""
        self.unhandled.append(RecordedRequest("POST", self._cur_path, query, body))
        return ApiError(501, f"gcp emulator: {what} not implemented", "UNIMPLEMENTED")

    # The path of the request being routed (set by _route under the lock).
    _cur_path = ""

    def _route(self, method: str, path: str, query: dict, body: dict) -> tuple[int, Any]:
        self._cur_path = path
        if method == "GET":
            m = _OPS_RX.fullmatch(path)
            if m:  # GKE and Artifact Registry share this path shape: find the operation's owner
                g = m.groupdict()
                pid = self._resolve_project(g["project"]) or g["project"]
                name = f"projects/{pid}/{g['kind']}/{g['location']}/operations/{g['operation']}"
                op = self.state.operations.get(name)
                if op is not None and op.kind == "lro":
                    return 200, self.ar_get_operation(query, body, g["project"], g["location"], g["operation"])
                if op is None and not g["operation"].startswith("operation-") and g["kind"] == "locations":
                    return 200, self.ar_get_operation(query, body, g["project"], g["location"], g["operation"])
                return 200, self.gke_get_operation(query, body, **g)
            m = _OPS_LIST_RX.fullmatch(path)
            if m:
                return 200, self.gke_list_operations(query, body, **m.groupdict())
            m = _LOC_RX.fullmatch(path)
            if m:
                return 200, self.ar_get_location(query, body, **m.groupdict())
        for verb, rx, handler in _ROUTES:
            if verb != method:
                continue
            m = rx.fullmatch(path)
            if m:
                return 200, getattr(self, handler)(query=query, body=body, **m.groupdict())
        self.unhandled.append(RecordedRequest(method, path, query, body))
        raise ApiError(501, f"gcp emulator: no route for {method} {path}", "UNIMPLEMENTED")


# Every API's routes, in the order they are tried. Service Usage and Resource Manager share the
# ``/v1/projects/P`` prefix with Artifact Registry: the more specific shapes come first.
_ROUTES = [(verb, re.compile(rx), handler)
           for api in (Gke, ServiceUsage, ResourceManager, ArtifactRegistry) for verb, rx, handler in api.ROUTES]
_OPS_RX = re.compile(rf"{GKE_PATH}/operations/(?P<operation>[^/:]+)")
_OPS_LIST_RX = re.compile(rf"{GKE_PATH}/operations")
_LOC_RX = re.compile(AR_PATH)


class _Handler(BaseHTTPRequestHandler):
    emulator: GcpEmulator
    protocol_version = "HTTP/1.1"
    server_version = "gcp-emulator"
    sys_version = ""

    def log_message(self, format, *args):  # silence stderr access log
        pass

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        try:
            status, payload, headers = self.emulator._handle(self.command, self.path, data)
        except Exception as exc:  # a bug in the emulator: answer 500 with the reason
            status, payload, headers = 500, ApiError(500, f"gcp emulator crashed: {exc!r}").body(), {}
            self.emulator.unhandled.append(RecordedRequest(self.command, self.path, {}, None))
        if isinstance(payload, (dict, list)):
            out = json.dumps(payload).encode()
            ctype = "application/json; charset=UTF-8"
        elif isinstance(payload, bytes):
            out, ctype = payload, "application/octet-stream"
        else:
            out, ctype = str(payload).encode(), "text/plain; charset=UTF-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(out)))
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve
