"""Stateful loopback emulator of the Google Cloud REST APIs that gcloud 528 calls for GKE setup.

It serves, on one 127.0.0.1 port (ephemeral, background thread, concurrent requests):

* GKE ``container/v1``: clusters (get/list/create/update/delete and the ``:setX`` verbs), node pools
  (get/list/create/update/setSize/setAutoscaling/setManagement/delete), operations, serverConfig.
* Service Usage v1: services get/list/enable/batchEnable/disable and ``operations/...``.
* Cloud Resource Manager v1 (what ``gcloud projects describe`` uses) and v3 ``projects get``.
* Artifact Registry v1: repositories get/list/create/patch/delete and their operations.

Point the real gcloud at it with :func:`gcloud_env`. Nothing here opens a socket to anything but
127.0.0.1.

What gcloud 528 sends (captured against this emulator; P project, L location, C cluster):

* ``clusters create``: GET ``/v1/projects/P/services/container.googleapis.com`` (and
  ``containerfilesystem.googleapis.com`` with ``--enable-image-streaming``; disabled only warns),
  POST ``/v1/projects/P/locations/L/clusters`` ``{"cluster": {...}, "parent": ...}``, GET the
  operation, GET the cluster, then writes the kubeconfig entry.
* ``clusters update`` (one flag per call): GET cluster, PUT ``.../clusters/C``
  ``{"name": ..., "update": {X}}`` with X = ``desiredWorkloadIdentityConfig`` |
  ``desiredAddonsConfig`` | ``desiredGatewayApiConfig`` | ``desiredGcfsConfig``
  (``--enable-image-streaming``) | ``desiredReleaseChannel``; ``--update-labels`` /
  ``--remove-labels`` POST ``.../clusters/C:setResourceLabels`` with ``labelFingerprint``.
* ``node-pools create``: POST ``.../clusters/C/nodePools`` ``{"nodePool": {...}, "parent": ...}``.
  ``node-pools update --enable-autoscaling`` is a cluster PUT with ``desiredNodePoolAutoscaling`` +
  ``desiredNodePoolId``; ``--node-labels`` / ``--node-taints`` / ``--workload-metadata`` PUT
  ``.../nodePools/N`` with ``labels.labels`` / ``taints.taints`` / ``workloadMetadataConfig``.
  ``clusters resize`` POSTs ``.../nodePools/N:setSize``.
* ``services enable S`` POSTs ``/v1/projects/P/services/S:enable`` (several: ``services:batchEnable``
  ``{"serviceIds": [...]}``) and polls ``/v1/operations/...`` unless the reply is already done.
* ``projects describe`` GETs ``/v1/projects/P`` (Resource Manager v1).
* ``artifacts repositories create R`` POSTs ``/v1/projects/P/locations/L/repositories?repositoryId=R``
  (body: format, mode ``MODE_UNSPECIFIED`` | ``REMOTE_REPOSITORY``, description, labels,
  remoteRepositoryConfig), polls ``/v1/projects/P/locations/L/operations/ID`` unless done, GETs R.

Behaviour worth knowing (all of it mirrors the real services):

* Mutations return an Operation. With ``op_polls_before_done = N`` the operation answers RUNNING to
  the first N polls and DONE afterwards; the change becomes visible when it turns DONE (a resource
  being created exists meanwhile as PROVISIONING, a cluster being updated is RECONCILING).
  ``N = 0`` makes every operation DONE at once. Each RUNNING answer costs a gcloud sleep (measured
  with gcloud 528: container 5 s, Service Usage 2 s, Artifact Registry ~3.7 s), so keep ``N = 0``
  wherever speed matters (the ``gcp_emulator`` fixture does).
* While a cluster has an unfinished operation, further mutations of that cluster or its node pools
  get ``400 FAILED_PRECONDITION`` ("incompatible operation"), as on GKE.
* A failed operation ends DONE with ``error`` (and, for GKE, ``statusMessage``: that is the field
  gcloud reads). A failed create leaves the resource in status ERROR; a failed update changes
  nothing.
* GET replies for clusters and node pools are rendered like proto3 JSON: fields holding a default
  value (false, 0, "", [], ``*_UNSPECIFIED``) are omitted, except inside map fields such as labels.
  So an autoscaling pool with ``minNodeCount: 0`` reads back without ``minNodeCount``.
* New node pools get ``config.workloadMetadataConfig.mode = GKE_METADATA`` when the cluster has
  Workload Identity, as GKE does, and, without ``version`` in the create body, the default version
  of the cluster's release channel (``channel_versions``, also what ``serverConfig`` reports), capped
  at the control plane's version: lower ``channel_versions[ch]`` after a cluster exists to get a
  control plane newer than what its new pools get.
* Every cluster reports ``controlPlaneEndpointsConfig.dnsEndpointConfig.endpoint``;
  ``allowExternalTraffic`` is set only by ``--enable-dns-access`` (create body or
  ``desiredControlPlaneEndpointsConfig``).
* Container and Artifact Registry calls answer ``403 SERVICE_DISABLED`` when the project has not
  enabled the API (``enforce_service_enablement``), and every API answers 403 for unknown projects.
"""

from __future__ import annotations

import base64
import copy
import datetime as _dt
import hashlib
import json
import os
import re
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

try:  # pytest is optional for importing the emulator itself.
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

__all__ = [
    "ApiError",
    "GcpEmulator",
    "GcpState",
    "OperationHold",
    "RecordedRequest",
    "gcloud_env",
    "gcp_emulator",
    "DEFAULT_ENABLED_SERVICES",
    "CHANNEL_VERSIONS",
]

DEFAULT_PROJECT = "test-project"

DEFAULT_ENABLED_SERVICES = (
    "artifactregistry.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "serviceusage.googleapis.com",
    "storage.googleapis.com",
)

SERVICE_TITLES = {
    "artifactregistry.googleapis.com": "Artifact Registry API",
    "cloudresourcemanager.googleapis.com": "Cloud Resource Manager API",
    "compute.googleapis.com": "Compute Engine API",
    "container.googleapis.com": "Kubernetes Engine API",
    "containerfilesystem.googleapis.com": "Container File System API",
    "iam.googleapis.com": "Identity and Access Management (IAM) API",
    "iamcredentials.googleapis.com": "IAM Service Account Credentials API",
    "logging.googleapis.com": "Cloud Logging API",
    "monitoring.googleapis.com": "Cloud Monitoring API",
    "serviceusage.googleapis.com": "Service Usage API",
    "storage.googleapis.com": "Cloud Storage API",
    "tpu.googleapis.com": "Cloud TPU API",
}

# Versions a release channel hands out (the rapid one is new enough for Ironwood/tpu7x:
# >= 1.34.0-gke.2201000).
CHANNEL_VERSIONS = {
    "RAPID": "1.34.1-gke.1829001",
    "REGULAR": "1.33.5-gke.1308000",
    "STABLE": "1.33.4-gke.1172000",
    "EXTENDED": "1.32.9-gke.1108000",
}

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MESSAGES = {
    429: "Quota exceeded for quota metric 'Requests' and limit 'Requests per minute'.",
    503: "The service is currently unavailable.",
    500: "Internal error encountered.",
    409: "Resource already exists.",
    404: "Requested entity was not found.",
    403: "The caller does not have permission",
}
_RPC_CODES = {  # google.rpc.Code numbers for operation errors
    "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14,
}

_MAP_FIELDS = frozenset({"labels", "resourceLabels", "metadata", "resourceManagerTags"})

_FAKE_CA = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\n"
    + base64.encodebytes(b"gcp-emulator fake cluster CA, not a real certificate " * 4)
    + b"-----END CERTIFICATE-----\n"
).decode()


class ApiError(Exception):
    """An error answered in Google's JSON error format."""

    def __init__(self, code: int, message: str, status: str | None = None,
                 details: list | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS_NAMES.get(code, "UNKNOWN")
        self.details = details

    def body(self) -> dict:
        err: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            err["details"] = self.details
        return {"error": err}


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


class _OpFailure:
    def __init__(self, method, path_regex, message, code):
        self.method = method.upper() if method else None
        self.regex = re.compile(path_regex)
        self.message = message
        self.code = code


class OperationHold:
    """Operations started by matching mutating requests stay RUNNING until :meth:`release` (a slow
    operation, as a real node-pool delete takes minutes). ``started`` is set when one was started."""

    def __init__(self, method, path_regex):
        self.method = method.upper() if method else None
        self.regex = re.compile(path_regex)
        self.started = threading.Event()
        self.released = threading.Event()

    def matches(self, method: str, path: str) -> bool:
        return self.method in (None, method) and bool(self.regex.search(path))

    def release(self) -> None:
        self.released.set()


class _Operation:
    """One long-running operation of any of the emulated APIs."""

    def __init__(self, kind: str, name: str, polls: int, *, project: str, location: str | None,
                 op_type: str = "", target: str = "", cluster_key=None,
                 on_success: Callable[[], Any] | None = None,
                 on_failure: Callable[[dict], Any] | None = None, metadata: dict | None = None):
        self.kind = kind  # "container" | "lro" (Artifact Registry) | "serviceusage"
        self.name = name  # the path under /v1/ that GETs it
        self.short_name = name.rsplit("/", 1)[-1]
        self.polls_left = polls
        self.project = project
        self.location = location
        self.op_type = op_type
        self.target = target
        self.cluster_key = cluster_key
        self.on_success = on_success
        self.on_failure = on_failure
        self.metadata = metadata or {}
        self.hold: OperationHold | None = None
        self.error: dict | None = None
        self.done = False
        self.response: Any = None
        self.start_time = _now()
        self.end_time: str | None = None
        self.polls = 0


class GcpState:
    """All emulator state. Attribute or item access (``state.clusters`` == ``state["clusters"]``).

    * ``projects``: project id -> {"projectNumber": str, "name": str, "labels": {...}}
    * ``clusters``: (project, location, name) -> stored cluster dict (node pools live apart)
    * ``nodepools``: (project, location, cluster, name) -> stored node pool dict
    * ``services``: project id -> set of enabled service names
    * ``repositories``: (project, location, name) -> stored repository dict
    * ``operations``: operation path -> operation record
    Stored dicts are the raw (unpruned) objects; take ``emu.lock`` to mutate them from a test
    while gcloud may be running.
    """

    def __init__(self):
        self.projects: dict[str, dict] = {}
        self.clusters: dict[tuple, dict] = {}
        self.nodepools: dict[tuple, dict] = {}
        self.services: dict[str, set] = {}
        self.repositories: dict[tuple, dict] = {}
        self.operations: dict[str, _Operation] = {}

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self):
        return ["projects", "clusters", "nodepools", "services", "repositories", "operations"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def _project_number(project_id: str) -> str:
    digest = int(hashlib.sha256(project_id.encode()).hexdigest(), 16)
    return str(100000000000 + digest % 899999999999)


def _is_zone(location: str) -> bool:
    return bool(re.fullmatch(r"[a-z]+-[a-z]+\d+-[a-z]", location))


def _deep_merge(dst: dict, src: dict) -> dict:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict) and key not in _MAP_FIELDS:
            _deep_merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)
    return dst


def _prune(value: Any, in_map: bool = False) -> Any:
    """Render like proto3 JSON: drop default scalars (not inside maps) and hidden ``_keys``."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not in_map and key.startswith("_"):
                continue
            if in_map:
                out[key] = copy.deepcopy(item)
                continue
            pruned = _prune(item, in_map=key in _MAP_FIELDS)
            if _is_default(pruned) and not isinstance(pruned, dict):
                continue
            if isinstance(pruned, dict) and not pruned and key in _MAP_FIELDS:
                continue
            out[key] = pruned
        return out
    if isinstance(value, list):
        return [_prune(item) for item in value]
    return value


def _is_default(value: Any) -> bool:
    if value is None or value is False or value == "" or value == []:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return True
    if isinstance(value, str) and value.endswith("_UNSPECIFIED"):
        return True
    return False


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version)[:4])


def _camel_lower(name: str) -> str:
    return name[:1].lower() + name[1:]


class GcpEmulator:
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
        self._op_failures: list[_OpFailure] = []
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
            code = _RPC_CODES[code]
        with self.lock:
            self._op_failures.append(_OpFailure(method, path_regex, message, code))

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

    # ------------------------------------------------------------------ seeding / inspection
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

    def enable_services(self, project: str, *services: str) -> None:
        with self.lock:
            self.state.services.setdefault(project, set()).update(services)

    def disable_services(self, project: str, *services: str) -> None:
        with self.lock:
            self.state.services.setdefault(project, set()).difference_update(services)

    def enabled_services(self, project: str) -> set:
        with self.lock:
            return set(self.state.services.get(project, set()))

    def add_cluster(self, project: str, location: str, name: str, *, node_pools: Any = None,
                    **overrides) -> dict:
        """Seed a RUNNING cluster. ``overrides`` are deep-merged into the stored cluster (e.g.
        ``workloadIdentityConfig={"workloadPool": "p.svc.id.goog"}``, ``currentMasterVersion=``).
        ``node_pools``: None for one "default-pool", or a list of node pool dicts (or names)."""
        with self.lock:
            self._require_project(project)
            if node_pools is None:
                node_pools = [{"name": "default-pool", "initialNodeCount": 1}]
            pools = [{"name": p} if isinstance(p, str) else p for p in node_pools]
            cluster = self._new_cluster(project, location, {**overrides, "name": name})
            cluster["status"] = "RUNNING"
            self.state.clusters[(project, location, name)] = cluster
            for pool in pools:
                np_ = self._new_nodepool(cluster, pool)
                np_["status"] = "RUNNING"
                self.state.nodepools[(project, location, name, np_["name"])] = np_
            return cluster

    def add_nodepool(self, project: str, location: str, cluster: str, name: str, **fields) -> dict:
        with self.lock:
            c = self._cluster(project, location, cluster)
            np_ = self._new_nodepool(c, dict(fields, name=name))
            np_["status"] = "RUNNING"
            self.state.nodepools[(project, location, cluster, name)] = np_
            return np_

    def get_cluster(self, project: str, location: str, name: str) -> dict | None:
        """The cluster as the API would render it (with nodePools), or None."""
        with self.lock:
            key = (project, location, name)
            if key not in self.state.clusters:
                return None
            return self._render_cluster(self.state.clusters[key])

    def get_nodepool(self, project: str, location: str, cluster: str, name: str) -> dict | None:
        with self.lock:
            np_ = self.state.nodepools.get((project, location, cluster, name))
            return None if np_ is None else self._render_nodepool(np_)

    def add_repository(self, project: str, location: str, name: str, **fields) -> dict:
        with self.lock:
            repo = self._new_repository(project, location, name, {"format": "DOCKER", **fields})
            self.state.repositories[(project, location, name)] = repo
            return repo

    def get_repository(self, project: str, location: str, name: str) -> dict | None:
        with self.lock:
            repo = self.state.repositories.get((project, location, name))
            return _prune(repo, in_map=False) if repo and not repo.get("_pending") else None

    def pending_operations(self) -> list[str]:
        with self.lock:
            return [n for n, op in self.state.operations.items() if not op.done]

    def finish_operations(self) -> None:
        """Complete every unfinished operation now (as if polled to the end)."""
        with self.lock:
            for op in list(self.state.operations.values()):
                if not op.done:
                    self._complete(op)

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
                        msg = _DEFAULT_MESSAGES.get(inj.status, HTTPStatus(inj.status).phrase)
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

    def _take_op_failure(self, method: str, path: str) -> _OpFailure | None:
        for i, failure in enumerate(self._op_failures):
            if failure.method in (None, method) and failure.regex.search(path):
                return self._op_failures.pop(i)
        return None

    def _start_op(self, op: _Operation, method: str, path: str,
                  pending_in_reply: bool = False) -> _Operation:
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
            self._complete(op)
        return op

    def _complete(self, op: _Operation) -> None:
        op.done = True
        op.end_time = _now()
        if op.error:
            if op.on_failure:
                op.on_failure(op.error)
        elif op.on_success:
            op.response = op.on_success()

    def _poll(self, name: str) -> _Operation:
        op = self.state.operations.get(name)
        if op is None:
            raise ApiError(404, f"Operation \"{name}\" not found.", "NOT_FOUND")
        op.polls += 1
        if not op.done and op.hold is not None and not op.hold.released.is_set():
            return op  # held: RUNNING until the test releases it
        if not op.done:
            if op.polls_left > 0:
                op.polls_left -= 1
            else:
                self._complete(op)
        return op

    def _cluster_busy(self, cluster_key) -> None:
        for op in self.state.operations.values():
            if not op.done and op.cluster_key == cluster_key:
                raise ApiError(400, f"Cluster is running incompatible operation {op.short_name}.",
                               "FAILED_PRECONDITION")

    # ================================================================== GKE container v1
    def _cluster(self, project: str, location: str, name: str) -> dict:
        c = self.state.clusters.get((project, location, name))
        if c is None:
            raise ApiError(404, f"Not found: projects/{project}/locations/{location}/clusters/{name}.",
                           "NOT_FOUND")
        return c

    def _nodepool(self, project, location, cluster, name) -> dict:
        self._cluster(project, location, cluster)
        np_ = self.state.nodepools.get((project, location, cluster, name))
        if np_ is None:
            raise ApiError(404, f"Not found: projects/{project}/locations/{location}/clusters/"
                           f"{cluster}/nodePools/{name}.", "NOT_FOUND")
        return np_

    def _gke_link(self, project: str, location: str, *rest: str) -> str:
        number = self.state.projects[project]["projectNumber"]
        kind = "zones" if _is_zone(location) else "locations"
        tail = "/".join(rest)
        return f"{self.url}v1/projects/{number}/{kind}/{location}/{tail}"

    def _channel_version(self, channel: str | None) -> str:
        return self.channel_versions.get(channel or "REGULAR", self.channel_versions["REGULAR"])

    def _new_cluster(self, project: str, location: str, body: dict) -> dict:
        name = body["name"]
        channel = (body.get("releaseChannel") or {}).get("channel") or "REGULAR"
        version = body.get("initialClusterVersion")
        if not version or version in ("latest", "-"):
            version = self._channel_version(channel)
        locations = body.get("locations") or (
            [location] if _is_zone(location) else [f"{location}-a", f"{location}-b", f"{location}-c"])
        network = body.get("network") or "default"
        subnetwork = body.get("subnetwork") or "default"
        region = location[:-2] if _is_zone(location) else location
        cluster_id = hashlib.sha256(f"{project}/{location}/{name}".encode()).hexdigest()[:32]
        cluster = copy.deepcopy(body)
        cluster["_project"] = project
        cluster.pop("nodePools", None)
        cluster.pop("initialNodeCount", None)
        cluster.pop("nodeConfig", None)
        defaults = {
            "name": name,
            "location": location,
            "zone": location,
            "locations": locations,
            "selfLink": self._gke_link(project, location, "clusters", name),
            "id": cluster_id,
            "createTime": _now(),
            "status": "PROVISIONING",
            "endpoint": self.cluster_endpoint,
            "initialClusterVersion": version,
            "currentMasterVersion": version,
            "currentNodeVersion": version,
            "masterAuth": {"clusterCaCertificate": _FAKE_CA},
            "network": network,
            "subnetwork": subnetwork,
            "clusterIpv4Cidr": "10.8.0.0/14",
            "servicesIpv4Cidr": "34.118.224.0/20",
            "loggingService": "logging.googleapis.com/kubernetes",
            "monitoringService": "monitoring.googleapis.com/kubernetes",
            "addonsConfig": {
                "httpLoadBalancing": {},
                "horizontalPodAutoscaling": {},
                "kubernetesDashboard": {"disabled": True},
                "networkPolicyConfig": {"disabled": True},
                "gcePersistentDiskCsiDriverConfig": {"enabled": True},
                "dnsCacheConfig": {},
            },
            "networkConfig": {
                "network": f"projects/{project}/global/networks/{network}",
                "subnetwork": f"projects/{project}/regions/{region}/subnetworks/{subnetwork}",
                "defaultSnatStatus": {},
                "serviceExternalIpsConfig": {},
                "datapathProvider": "LEGACY_DATAPATH",
            },
            "ipAllocationPolicy": {"useIpAliases": True, "stackType": "IPV4"},
            # Every cluster has a DNS endpoint; user traffic may use it only with allowExternalTraffic
            # (`--enable-dns-access`). The IP endpoints stay enabled unless `--no-enable-ip-access`.
            "controlPlaneEndpointsConfig": {
                "dnsEndpointConfig": {
                    "endpoint": f"gke-{cluster_id}-{self.state.projects[project]['projectNumber']}"
                                f".{location}.gke.goog"},
                "ipEndpointsConfig": {"enabled": True, "enablePublicEndpoint": True,
                                      "publicEndpoint": self.cluster_endpoint},
            },
            "releaseChannel": {"channel": channel},
            "resourceLabels": {},
            "labelFingerprint": "a9dc16a7",
            "nodePoolDefaults": {"nodeConfigDefaults": {"loggingConfig": {
                "variantConfig": {"variant": "DEFAULT"}}}},
            "legacyAbac": {},
            "shieldedNodes": {"enabled": True},
            "databaseEncryption": {"state": "DECRYPTED"},
            "etag": uuid.uuid4().hex[:8],
        }
        return _deep_merge(defaults, {k: v for k, v in cluster.items() if v is not None})

    def _new_nodepool(self, cluster: dict, body: dict) -> dict:
        project = cluster["_project"]
        location = cluster["location"]
        name = body["name"]
        config = {
            "machineType": "e2-medium",
            "diskSizeGb": 100,
            "diskType": "pd-balanced",
            "imageType": "COS_CONTAINERD",
            "serviceAccount": "default",
            "oauthScopes": ["https://www.googleapis.com/auth/devstorage.read_only",
                            "https://www.googleapis.com/auth/logging.write",
                            "https://www.googleapis.com/auth/monitoring",
                            "https://www.googleapis.com/auth/service.management.readonly",
                            "https://www.googleapis.com/auth/servicecontrol",
                            "https://www.googleapis.com/auth/trace.append"],
            "metadata": {"disable-legacy-endpoints": "true"},
            "shieldedInstanceConfig": {"enableIntegrityMonitoring": True},
        }
        if (cluster.get("workloadIdentityConfig") or {}).get("workloadPool"):
            config["workloadMetadataConfig"] = {"mode": "GKE_METADATA"}
        gcfs = (((cluster.get("nodePoolDefaults") or {}).get("nodeConfigDefaults") or {})
                .get("gcfsConfig"))
        if gcfs:
            config["gcfsConfig"] = copy.deepcopy(gcfs)
        _deep_merge(config, body.get("config") or {})
        version = body.get("version")
        if not version or version in ("latest", "-"):
            # GKE gives a new pool its channel's default version, never newer than the control plane:
            # it can be older than the control plane (what Ironwood pools trip over).
            channel = (cluster.get("releaseChannel") or {}).get("channel")
            version = self._channel_version(channel)
            master = cluster.get("currentMasterVersion")
            if master and _version_key(master) < _version_key(version):
                version = master
        count = int(body.get("initialNodeCount", 3 if body.get("autoscaling") is None else 0) or 0)
        pool = copy.deepcopy(body)
        pool.pop("config", None)
        defaults = {
            "name": name,
            "config": config,
            "initialNodeCount": count,
            "locations": list(cluster.get("locations") or [location]),
            "selfLink": self._gke_link(project, location, "clusters", cluster["name"], "nodePools",
                                       name),
            "version": version,
            "instanceGroupUrls": [],
            "status": "PROVISIONING",
            "management": {"autoUpgrade": True, "autoRepair": True},
            "maxPodsConstraint": {"maxPodsPerNode": "110"},
            "podIpv4CidrSize": 24,
            "upgradeSettings": {"maxSurge": 1, "strategy": "SURGE"},
            "networkConfig": {"podRange": "gke-pods", "podIpv4CidrBlock": "10.8.0.0/14"},
            "etag": uuid.uuid4().hex[:8],
        }
        pool = _deep_merge(defaults, {k: v for k, v in pool.items() if v is not None})
        pool["version"] = version
        pool["_nodeCount"] = count * max(1, len(pool["locations"]))
        igm_zones = pool["locations"]
        pool["instanceGroupUrls"] = [
            f"{self.url}compute/v1/projects/{project}/zones/{z}/instanceGroupManagers/"
            f"gke-{cluster['name'][:15]}-{name[:15]}-{uuid.uuid4().hex[:8]}-grp" for z in igm_zones]
        return pool

    def _render_nodepool(self, np_: dict) -> dict:
        return _prune(np_)

    def _render_cluster(self, cluster: dict) -> dict:
        key = (cluster["_project"], cluster["location"], cluster["name"])
        pools = [np_ for k, np_ in self.state.nodepools.items() if k[:3] == key]
        out = copy.deepcopy(cluster)
        out["nodePools"] = [copy.deepcopy(p) for p in pools]
        out["currentNodeCount"] = sum(p.get("_nodeCount", 0) for p in pools)
        return _prune(out)

    def _gke_op(self, project, location, op_type, target, cluster_key, method, path,
                on_success=None, on_failure=None) -> dict:
        short = f"operation-{int(_dt.datetime.now().timestamp() * 1000)}-{uuid.uuid4().hex[:8]}"
        kind = "zones" if "/zones/" in path else "locations"
        name = f"projects/{project}/{kind}/{location}/operations/{short}"
        op = _Operation("container", name, self.op_polls_before_done, project=project,
                        location=location, op_type=op_type, target=target, cluster_key=cluster_key,
                        on_success=on_success, on_failure=on_failure)
        self._start_op(op, method, path)
        return self._render_op(op)

    def _render_op(self, op: _Operation) -> dict:
        if op.kind == "container":
            out = {
                "name": op.short_name,
                "zone": op.location,
                "operationType": op.op_type,
                "status": "DONE" if op.done else "RUNNING",
                "selfLink": self._gke_link(op.project, op.location, "operations", op.short_name),
                "targetLink": op.target,
                "startTime": op.start_time,
            }
            if op.done:
                out["endTime"] = op.end_time
            if op.done and op.error:
                out["statusMessage"] = op.error["message"]
                out["error"] = dict(op.error)
            return out
        out = {"name": op.name, "metadata": copy.deepcopy(op.metadata)}
        if op.done:
            out["done"] = True
            if op.error:
                out["error"] = dict(op.error)
            elif op.response is not None:
                out["response"] = copy.deepcopy(op.response)
        return out

    # --- container handlers (paths: projects/P/(locations|zones)/L/...)
    def gke_server_config(self, query, body, project, location, kind="locations"):
        self._require_project(project, "container.googleapis.com")
        versions = sorted(set(self.channel_versions.values()), reverse=True)
        return {
            "defaultClusterVersion": self._channel_version("REGULAR"),
            "validMasterVersions": versions,
            "validNodeVersions": versions,
            "defaultImageType": "COS_CONTAINERD",
            "validImageTypes": ["COS_CONTAINERD", "UBUNTU_CONTAINERD"],
            "channels": [{"channel": ch, "defaultVersion": v, "validVersions": [v]}
                         for ch, v in self.channel_versions.items()],
        }

    def gke_list_clusters(self, query, body, project, location, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        items = [self._render_cluster(c) for (p, loc, _), c in sorted(self.state.clusters.items())
                 if p == pid and location in ("-", loc)]
        return {"clusters": items} if items else {}

    def gke_get_cluster(self, query, body, project, location, cluster, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        return self._render_cluster(self._cluster(pid, location, cluster))

    def gke_create_cluster(self, query, body, project, location, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        spec = body.get("cluster") or {}
        name = spec.get("name")
        if not name:
            raise ApiError(400, "Cluster.name must be specified.", "INVALID_ARGUMENT")
        key = (pid, location, name)
        if key in self.state.clusters:
            raise ApiError(409, f"Already exists: projects/{pid}/locations/{location}/clusters/{name}.",
                           "ALREADY_EXISTS")
        cluster = self._new_cluster(pid, location, spec)
        self.state.clusters[key] = cluster
        pools = spec.get("nodePools")
        if pools is None:
            pools = [{"name": "default-pool", "initialNodeCount": spec.get("initialNodeCount", 3),
                      "config": spec.get("nodeConfig") or {}}]
        for pool in pools:
            np_ = self._new_nodepool(cluster, pool)
            self.state.nodepools[key + (np_["name"],)] = np_

        def ok():
            cluster["status"] = "RUNNING"
            for k, p in self.state.nodepools.items():
                if k[:3] == key:
                    p["status"] = "RUNNING"

        def failed(error):
            cluster["status"] = "ERROR"
            cluster["statusMessage"] = error["message"]
            for k, p in self.state.nodepools.items():
                if k[:3] == key:
                    p["status"] = "ERROR"

        return self._gke_op(pid, location, "CREATE_CLUSTER", cluster["selfLink"], key, "POST",
                            self._cur_path, ok, failed)

    def gke_delete_cluster(self, query, body, project, location, cluster, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        c = self._cluster(pid, location, cluster)
        key = (pid, location, cluster)
        self._cluster_busy(key)
        c["status"] = "STOPPING"

        def ok():
            self.state.clusters.pop(key, None)
            for k in [k for k in self.state.nodepools if k[:3] == key]:
                del self.state.nodepools[k]

        def failed(error):
            c["status"] = "ERROR"
            c["statusMessage"] = error["message"]

        return self._gke_op(pid, location, "DELETE_CLUSTER", c["selfLink"], key, "DELETE",
                            self._cur_path, ok, failed)

    def _cluster_mutation(self, pid, location, cluster, op_type, apply, method="POST"):
        c = self._cluster(pid, location, cluster)
        key = (pid, location, cluster)
        self._cluster_busy(key)
        prev_status = c.get("status", "RUNNING")
        c["status"] = "RECONCILING"

        def ok():
            apply(c)
            c["status"] = prev_status if prev_status != "RECONCILING" else "RUNNING"
            c["etag"] = uuid.uuid4().hex[:8]

        def failed(error):
            c["status"] = prev_status

        return self._gke_op(pid, location, op_type, c["selfLink"], key, method, self._cur_path,
                            ok, failed)

    def gke_update_cluster(self, query, body, project, location, cluster, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        update = body.get("update")
        if not isinstance(update, dict) or not update:
            raise ApiError(400, "Update must specify at least one field.", "INVALID_ARGUMENT")
        pool_id = update.get("desiredNodePoolId")
        if pool_id:
            self._nodepool(pid, location, cluster, pool_id)
        op_type = "UPGRADE_MASTER" if "desiredMasterVersion" in update else (
            "UPGRADE_NODES" if "desiredNodeVersion" in update else "UPDATE_CLUSTER")
        return self._cluster_mutation(pid, location, cluster, op_type,
                                      lambda c: self._apply_cluster_update(c, pid, update), "PUT")

    def _apply_cluster_update(self, c: dict, pid: str, update: dict) -> None:
        key = (pid, c["location"], c["name"])
        pool_id = update.get("desiredNodePoolId")
        pool = self.state.nodepools.get(key + (pool_id,)) if pool_id else None
        for field, value in update.items():
            if field == "desiredNodePoolId" or value is None:
                continue
            if field == "desiredWorkloadIdentityConfig":
                if value.get("workloadPool"):
                    c["workloadIdentityConfig"] = copy.deepcopy(value)
                else:
                    c.pop("workloadIdentityConfig", None)
            elif field == "desiredAddonsConfig":
                _deep_merge(c.setdefault("addonsConfig", {}), value)
            elif field == "desiredGatewayApiConfig":
                c.setdefault("networkConfig", {})["gatewayApiConfig"] = copy.deepcopy(value)
            elif field == "desiredGcfsConfig":  # clusters update --enable-image-streaming
                gcfs = value
                defaults = c.setdefault("nodePoolDefaults", {}).setdefault("nodeConfigDefaults", {})
                defaults["gcfsConfig"] = copy.deepcopy(gcfs)
                for k, p in self.state.nodepools.items():  # GKE applies it to pools not opted out
                    if k[:3] == key and "gcfsConfig" not in p.get("_explicit", ()):
                        p.setdefault("config", {})["gcfsConfig"] = copy.deepcopy(gcfs)
            elif field == "desiredReleaseChannel":
                c["releaseChannel"] = copy.deepcopy(value)
            elif field == "desiredResourceLabels":
                c["resourceLabels"] = dict(value.get("labels") or {})
            elif field == "desiredMasterVersion":
                v = value if value not in ("latest", "-") else self._channel_version(
                    (c.get("releaseChannel") or {}).get("channel"))
                c["currentMasterVersion"] = v
            elif field == "desiredNodeVersion" and pool is not None:
                v = value if value not in ("latest", "-") else c["currentMasterVersion"]
                pool["version"] = v
                c["currentNodeVersion"] = v
            elif field == "desiredImageType" and pool is not None:
                pool.setdefault("config", {})["imageType"] = value
            elif field == "desiredNodePoolAutoscaling" and pool is not None:
                pool["autoscaling"] = copy.deepcopy(value)
            elif field == "desiredLocations":
                c["locations"] = list(value)
            elif field == "desiredLoggingService":
                c["loggingService"] = value
            elif field == "desiredMonitoringService":
                c["monitoringService"] = value
            elif field == "desiredDatapathProvider":
                c.setdefault("networkConfig", {})["datapathProvider"] = value
            elif field == "desiredNodePoolAutoConfigNetworkTags":
                c.setdefault("nodePoolAutoConfig", {})["networkTags"] = copy.deepcopy(value)
            elif field.startswith("desired"):
                target = _camel_lower(field[len("desired"):])
                if isinstance(value, dict) and isinstance(c.get(target), dict):
                    _deep_merge(c[target], value)
                else:
                    c[target] = copy.deepcopy(value)

    def gke_cluster_verb(self, query, body, project, location, cluster, verb, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        verb = {"resourceLabels": "setResourceLabels", "addons": "setAddons", "logging":
                "setLogging", "monitoring": "setMonitoring", "master": "updateMaster",
                "locations": "setLocations", "legacyAbac": "setLegacyAbac"}.get(verb, verb)

        def apply(c):
            if verb == "setResourceLabels":
                c["resourceLabels"] = dict(body.get("resourceLabels") or {})
                c["labelFingerprint"] = uuid.uuid4().hex[:8]
            elif verb == "setAddons":
                _deep_merge(c.setdefault("addonsConfig", {}), body.get("addonsConfig") or {})
            elif verb == "setLocations":
                c["locations"] = list(body.get("locations") or [])
            elif verb == "setLogging":
                c["loggingService"] = body.get("loggingService")
            elif verb == "setMonitoring":
                c["monitoringService"] = body.get("monitoringService")
            elif verb == "updateMaster":
                self._apply_cluster_update(c, pid, {"desiredMasterVersion": body.get("masterVersion")})
            elif verb == "setLegacyAbac":
                c["legacyAbac"] = {"enabled": bool(body.get("enabled"))}
            elif verb == "setNetworkPolicy":
                c["networkPolicy"] = copy.deepcopy(body.get("networkPolicy") or {})
            elif verb == "setMaintenancePolicy":
                c["maintenancePolicy"] = copy.deepcopy(body.get("maintenancePolicy") or {})

        known = {"setResourceLabels": "SET_LABELS", "setAddons": "UPDATE_CLUSTER",
                 "setLocations": "UPDATE_CLUSTER", "setLogging": "UPDATE_CLUSTER",
                 "setMonitoring": "UPDATE_CLUSTER", "updateMaster": "UPGRADE_MASTER",
                 "setLegacyAbac": "UPDATE_CLUSTER", "setNetworkPolicy": "SET_NETWORK_POLICY",
                 "setMaintenancePolicy": "SET_MAINTENANCE_POLICY"}
        if verb not in known:
            self.unhandled.append(RecordedRequest("POST", self._cur_path, query, body))
            raise ApiError(501, f"gcp emulator: cluster verb {verb} not implemented", "UNIMPLEMENTED")
        if verb == "setResourceLabels":
            c = self._cluster(pid, location, cluster)
            fp = body.get("labelFingerprint")
            if fp and fp != c.get("labelFingerprint"):
                raise ApiError(409, "Labels could not be set due to fingerprint mismatch.", "ABORTED")
        return self._cluster_mutation(pid, location, cluster, known[verb], apply)

    def gke_list_nodepools(self, query, body, project, location, cluster, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        self._cluster(pid, location, cluster)
        pools = [self._render_nodepool(p) for k, p in self.state.nodepools.items()
                 if k[:3] == (pid, location, cluster)]
        return {"nodePools": pools} if pools else {}

    def gke_get_nodepool(self, query, body, project, location, cluster, nodepool, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        return self._render_nodepool(self._nodepool(pid, location, cluster, nodepool))

    def gke_create_nodepool(self, query, body, project, location, cluster, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        c = self._cluster(pid, location, cluster)
        spec = body.get("nodePool") or {}
        name = spec.get("name")
        if not name:
            raise ApiError(400, "NodePool.name must be specified.", "INVALID_ARGUMENT")
        ckey = (pid, location, cluster)
        key = ckey + (name,)
        if key in self.state.nodepools:
            raise ApiError(409, f"Already exists: projects/{pid}/locations/{location}/clusters/"
                           f"{cluster}/nodePools/{name}.", "ALREADY_EXISTS")
        self._cluster_busy(ckey)
        np_ = self._new_nodepool(c, spec)
        np_["_explicit"] = sorted((spec.get("config") or {}).keys())
        self.state.nodepools[key] = np_

        def ok():
            np_["status"] = "RUNNING"

        def failed(error):
            np_["status"] = "ERROR"
            np_["statusMessage"] = error["message"]

        return self._gke_op(pid, location, "CREATE_NODE_POOL", np_["selfLink"], ckey, "POST",
                            self._cur_path, ok, failed)

    def gke_delete_nodepool(self, query, body, project, location, cluster, nodepool,
                            kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        np_ = self._nodepool(pid, location, cluster, nodepool)
        ckey = (pid, location, cluster)
        self._cluster_busy(ckey)
        np_["status"] = "STOPPING"

        def ok():
            self.state.nodepools.pop(ckey + (nodepool,), None)

        def failed(error):
            np_["status"] = "ERROR"

        return self._gke_op(pid, location, "DELETE_NODE_POOL", np_["selfLink"], ckey, "DELETE",
                            self._cur_path, ok, failed)

    def _nodepool_mutation(self, pid, location, cluster, nodepool, op_type, apply, method):
        np_ = self._nodepool(pid, location, cluster, nodepool)
        ckey = (pid, location, cluster)
        self._cluster_busy(ckey)
        prev = np_.get("status", "RUNNING")
        np_["status"] = "RECONCILING"

        def ok():
            apply(np_)
            np_["status"] = "RUNNING" if prev in ("RECONCILING", "PROVISIONING") else prev
            np_["etag"] = uuid.uuid4().hex[:8]

        def failed(error):
            np_["status"] = prev

        return self._gke_op(pid, location, op_type, np_["selfLink"], ckey, method, self._cur_path,
                            ok, failed)

    def gke_update_nodepool(self, query, body, project, location, cluster, nodepool,
                            kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        upd = {k: v for k, v in body.items()
               if k not in ("name", "projectId", "zone", "clusterId", "nodePoolId") and v is not None}
        if not upd:
            raise ApiError(400, "No update specified.", "INVALID_ARGUMENT")
        c = self._cluster(pid, location, cluster)

        def apply(np_):
            cfg = np_.setdefault("config", {})
            explicit = set(np_.get("_explicit", ()))
            for field, value in upd.items():
                if field == "nodeVersion":
                    np_["version"] = value if value not in ("latest", "-") else c["currentMasterVersion"]
                elif field == "locations":
                    np_["locations"] = list(value)
                elif field == "labels":
                    cfg["labels"] = dict((value or {}).get("labels") or {})
                elif field == "resourceLabels":
                    cfg["resourceLabels"] = dict((value or {}).get("labels") or {})
                elif field == "taints":
                    cfg["taints"] = copy.deepcopy((value or {}).get("taints") or [])
                elif field == "tags":
                    cfg["tags"] = list((value or {}).get("tags") or [])
                elif field == "resourceManagerTags":
                    cfg["resourceManagerTags"] = copy.deepcopy(value)
                elif field == "upgradeSettings":
                    _deep_merge(np_.setdefault("upgradeSettings", {}), value)
                elif field in ("workloadMetadataConfig", "gcfsConfig", "gvnic", "kubeletConfig",
                               "linuxNodeConfig", "loggingConfig", "confidentialNodes",
                               "windowsNodeConfig", "fastSocket", "containerdConfig",
                               "machineType", "diskSizeGb", "diskType", "imageType", "accelerators",
                               "storagePools", "maxRunDuration", "flexStart", "queuedProvisioning"):
                    cfg[field] = copy.deepcopy(value)
                    explicit.add(field)
                else:
                    cfg[field] = copy.deepcopy(value)
            np_["_explicit"] = sorted(explicit)

        return self._nodepool_mutation(pid, location, cluster, nodepool, "UPGRADE_NODES", apply, "PUT")

    def gke_nodepool_verb(self, query, body, project, location, cluster, nodepool, verb,
                          kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        verb = {"autoscaling": "setAutoscaling", "setManagement": "setManagement",
                "update": "update"}.get(verb, verb)
        if verb == "update":  # zones style POST .../nodePools/N/update
            return self.gke_update_nodepool(query, body, project, location, cluster, nodepool)
        if verb == "setSize":
            count = int(body.get("nodeCount", 0))

            def apply(np_):
                np_["_nodeCount"] = count * max(1, len(np_.get("locations") or [None]))
            return self._nodepool_mutation(pid, location, cluster, nodepool, "SET_NODE_POOL_SIZE",
                                           apply, "POST")
        if verb == "setAutoscaling":
            return self._nodepool_mutation(
                pid, location, cluster, nodepool, "UPDATE_CLUSTER",
                lambda np_: np_.__setitem__("autoscaling", copy.deepcopy(body.get("autoscaling") or {})),
                "POST")
        if verb == "setManagement":
            return self._nodepool_mutation(
                pid, location, cluster, nodepool, "SET_NODE_POOL_MANAGEMENT",
                lambda np_: np_.__setitem__("management", copy.deepcopy(body.get("management") or {})),
                "POST")
        self.unhandled.append(RecordedRequest("POST", self._cur_path, query, body))
        raise ApiError(501, f"gcp emulator: node pool verb {verb} not implemented", "UNIMPLEMENTED")

    def gke_get_operation(self, query, body, project, location, operation, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        for k in ("locations", "zones"):
            name = f"projects/{pid}/{k}/{location}/operations/{operation}"
            if name in self.state.operations:
                return self._render_op(self._poll(name))
        raise ApiError(404, f"Not found: operation {operation}.", "NOT_FOUND")

    def gke_list_operations(self, query, body, project, location, kind="locations"):
        pid = self._require_project(project, "container.googleapis.com")
        ops = [self._render_op(op) for op in self.state.operations.values()
               if op.kind == "container" and op.project == pid and location in ("-", op.location)]
        return {"operations": ops}

    # ================================================================== Service Usage v1
    def _service_obj(self, pid: str, service: str) -> dict:
        number = self.state.projects[pid]["projectNumber"]
        enabled = service in self.state.services.get(pid, set())
        return {
            "name": f"projects/{number}/services/{service}",
            "config": {"name": service, "title": SERVICE_TITLES.get(service, service),
                       "documentation": {}, "quota": {}, "authentication": {}, "usage": {
                           "requirements": ["serviceusage.googleapis.com/tos/cloud"]}},
            "state": "ENABLED" if enabled else "DISABLED",
            "parent": f"projects/{number}",
        }

    @staticmethod
    def _check_service_name(service: str) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*(\.[a-z0-9-]+)*\.(googleapis\.com|goog)", service):
            raise ApiError(403, f"Not found or permission denied for service(s): {service}.",
                           "PERMISSION_DENIED")

    def su_get_service(self, query, body, project, service):
        pid = self._require_project(project)
        self._check_service_name(service)
        return self._service_obj(pid, service)

    def su_list_services(self, query, body, project):
        pid = self._require_project(project)
        flt = query.get("filter", "")
        if flt and flt.replace(" ", "") not in ("state:ENABLED", "state:DISABLED"):
            raise ApiError(400, f"Invalid filter: {flt}", "INVALID_ARGUMENT")
        if flt.replace(" ", "") == "state:DISABLED":
            names = sorted(set(SERVICE_TITLES) - self.state.services.get(pid, set()))
        elif flt:
            names = sorted(self.state.services.get(pid, set()))
        else:
            names = sorted(set(SERVICE_TITLES) | self.state.services.get(pid, set()))
        size = int(query.get("pageSize") or 50)
        size = max(1, min(size, self.services_max_page_size))
        start = int(query.get("pageToken") or 0)
        page = names[start:start + size]
        out: dict[str, Any] = {}
        if page:
            out["services"] = [self._service_obj(pid, s) for s in page]
        if start + size < len(names):
            out["nextPageToken"] = str(start + size)
        return out

    def _su_op(self, pid, method, path, services, response_type, state_after: bool) -> dict:
        number = self.state.projects[pid]["projectNumber"]
        name = f"operations/acat.p2-{number}-{uuid.uuid4()}"

        def ok():
            target = self.state.services.setdefault(pid, set())
            for s in services:
                (target.add if state_after else target.discard)(s)
            objs = [self._service_obj(pid, s) for s in services]
            if response_type.endswith("BatchEnableServicesResponse"):
                return {"@type": response_type, "services": objs}
            return {"@type": response_type, "service": objs[0]}

        op = _Operation("serviceusage", name, self.op_polls_before_done, project=pid, location=None,
                        on_success=ok, metadata={
                            "@type": "type.googleapis.com/google.protobuf.Empty"})
        # Like Service Usage: a call that changes nothing answers an operation that is already
        # done; one that changes something (or will fail) answers done=false and the caller polls
        # (gcloud's first poll is immediate, so this costs no sleep with op_polls_before_done=0).
        current = self.state.services.get(pid, set())
        changes = any((s in current) != state_after for s in services)
        self._start_op(op, method, path, pending_in_reply=changes or self._has_op_failure(method, path))
        return self._render_op(op)

    def su_enable(self, query, body, project, service):
        pid = self._require_project(project)
        self._check_service_name(service)
        return self._su_op(pid, "POST", self._cur_path, [service],
                           "type.googleapis.com/google.api.serviceusage.v1.EnableServiceResponse",
                           True)

    def su_disable(self, query, body, project, service):
        pid = self._require_project(project)
        self._check_service_name(service)
        return self._su_op(pid, "POST", self._cur_path, [service],
                           "type.googleapis.com/google.api.serviceusage.v1.DisableServiceResponse",
                           False)

    def su_batch_enable(self, query, body, project):
        pid = self._require_project(project)
        ids = body.get("serviceIds") or []
        if not ids:
            raise ApiError(400, "serviceIds must not be empty.", "INVALID_ARGUMENT")
        if len(ids) > 20:
            raise ApiError(400, "Too many services in one batch (max 20).", "INVALID_ARGUMENT")
        for s in ids:
            self._check_service_name(s)
        return self._su_op(pid, "POST", self._cur_path, list(ids),
                           "type.googleapis.com/google.api.serviceusage.v1.BatchEnableServicesResponse",
                           True)

    def su_get_operation(self, query, body, operation):
        name = f"operations/{operation}"
        op = self.state.operations.get(name)
        if op is None or op.kind != "serviceusage":
            raise ApiError(404, f"Operation {name} not found.", "NOT_FOUND")
        return self._render_op(self._poll(name))

    # ================================================================== Resource Manager
    def crm_get_project_v1(self, query, body, project):
        pid = self._resolve_project(project)
        if not pid:
            raise ApiError(403, "The caller does not have permission", "PERMISSION_DENIED")
        p = self.state.projects[pid]
        out = {"projectNumber": p["projectNumber"], "projectId": pid,
               "lifecycleState": p.get("lifecycleState", "ACTIVE"), "name": p.get("name", pid),
               "createTime": p["createTime"], "parent": copy.deepcopy(p.get("parent"))}
        if p.get("labels"):
            out["labels"] = dict(p["labels"])
        return out

    def crm_get_project_v3(self, query, body, project):
        pid = self._resolve_project(project)
        if not pid:
            raise ApiError(403, "The caller does not have permission", "PERMISSION_DENIED")
        p = self.state.projects[pid]
        parent = p.get("parent") or {}
        state = {"ACTIVE": "ACTIVE", "DELETE_REQUESTED": "DELETE_REQUESTED"}.get(
            p.get("lifecycleState", "ACTIVE"), "STATE_UNSPECIFIED")
        out = {"name": f"projects/{p['projectNumber']}", "projectId": pid, "state": state,
               "displayName": p.get("name", pid), "createTime": p["createTime"],
               "etag": "W/\"" + p["projectNumber"][-6:] + "\""}
        if parent:
            out["parent"] = f"{parent.get('type', 'organization')}s/{parent.get('id')}"
        if p.get("labels"):
            out["labels"] = dict(p["labels"])
        return out

    # ================================================================== Artifact Registry v1
    _AR_FORMATS = {"DOCKER", "MAVEN", "NPM", "PYTHON", "APT", "YUM", "GO", "KFP", "GENERIC"}

    def _new_repository(self, pid, location, name, spec) -> dict:
        fmt = spec.get("format") or "DOCKER"
        mode = spec.get("mode")
        if not mode or mode == "MODE_UNSPECIFIED":
            mode = "STANDARD_REPOSITORY"
        repo = {
            "name": f"projects/{pid}/locations/{location}/repositories/{name}",
            "format": fmt,
            "createTime": _now(),
            "updateTime": _now(),
            "mode": mode,
            "satisfiesPzi": True,
        }
        if fmt == "DOCKER":
            repo["registryUri"] = f"{location}-docker.pkg.dev/{pid}/{name}"
        for k, v in spec.items():
            if k not in ("name", "createTime", "updateTime", "mode") and v not in (None, "", {}, []):
                repo[k] = copy.deepcopy(v)
        if repo["mode"] == "REMOTE_REPOSITORY":
            repo.setdefault("remoteRepositoryConfig", {})
        repo.setdefault("vulnerabilityScanningConfig", {
            "enablementState": "SCANNING_DISABLED",
            "enablementStateReason": "API containerscanning.googleapis.com is not enabled."})
        return repo

    def _lro(self, pid, location, method, path, on_success, on_failure=None,
             verb="create", target="") -> dict:
        name = f"projects/{pid}/locations/{location}/operations/{uuid.uuid4()}"
        meta = {"@type": "type.googleapis.com/google.devtools.artifactregistry.v1.OperationMetadata"}
        op = _Operation("lro", name, self.op_polls_before_done, project=pid, location=location,
                        on_success=on_success, on_failure=on_failure, metadata=meta, target=target,
                        op_type=verb)
        self._start_op(op, method, path)
        return self._render_op(op)

    def ar_list_repositories(self, query, body, project, location):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        names = sorted(k for k, r in self.state.repositories.items()
                       if k[0] == pid and location in ("-", k[1]) and not r.get("_pending"))
        size = int(query.get("pageSize") or self.repositories_max_page_size)
        size = max(1, min(size, self.repositories_max_page_size))
        start = int(query.get("pageToken") or 0)
        out: dict[str, Any] = {}
        page = names[start:start + size]
        if page:
            out["repositories"] = [_prune(self.state.repositories[k]) for k in page]
        if start + size < len(names):
            out["nextPageToken"] = str(start + size)
        return out

    def _repo(self, pid, location, name) -> dict:
        repo = self.state.repositories.get((pid, location, name))
        if repo is None or repo.get("_pending"):
            raise ApiError(404, "Requested entity was not found.", "NOT_FOUND")
        return repo

    def ar_get_repository(self, query, body, project, location, repository):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        return _prune(self._repo(pid, location, repository))

    def ar_create_repository(self, query, body, project, location):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        rid = query.get("repositoryId") or (body.get("name") or "").rsplit("/", 1)[-1]
        if not rid:
            raise ApiError(400, "repository_id is required", "INVALID_ARGUMENT")
        if not re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", rid):
            raise ApiError(400, f"Invalid repository id \"{rid}\".", "INVALID_ARGUMENT")
        fmt = body.get("format")
        if fmt not in self._AR_FORMATS:
            raise ApiError(400, f"Invalid repository format {fmt!r}.", "INVALID_ARGUMENT")
        key = (pid, location, rid)
        if key in self.state.repositories:
            raise ApiError(409, "the repository already exists", "ALREADY_EXISTS")
        repo = self._new_repository(pid, location, rid, body)
        # The repository appears when the operation succeeds; a concurrent create still conflicts.
        self.state.repositories[key] = dict(repo, _pending=True)

        def ok():
            self.state.repositories[key] = repo
            return {"@type": "type.googleapis.com/google.devtools.artifactregistry.v1.Repository",
                    **_prune(repo)}

        def failed(error):
            self.state.repositories.pop(key, None)

        return self._lro(pid, location, "POST", self._cur_path, ok, failed, "create", repo["name"])

    def ar_patch_repository(self, query, body, project, location, repository):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        repo = self._repo(pid, location, repository)
        mask = [m for m in (query.get("updateMask") or "").split(",") if m]
        fields = mask or [k for k in body if k not in ("name",)]
        for f in fields:
            if f in body:
                repo[f] = copy.deepcopy(body[f])
            else:
                repo.pop(f, None)
        repo["updateTime"] = _now()
        return _prune(repo)

    def ar_delete_repository(self, query, body, project, location, repository):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        repo = self._repo(pid, location, repository)
        key = (pid, location, repository)

        def ok():
            self.state.repositories.pop(key, None)
            return {"@type": "type.googleapis.com/google.protobuf.Empty"}

        return self._lro(pid, location, "DELETE", self._cur_path, ok, None, "delete", repo["name"])

    def ar_get_operation(self, query, body, project, location, operation):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        name = f"projects/{pid}/locations/{location}/operations/{operation}"
        op = self.state.operations.get(name)
        if op is None or op.kind != "lro":
            raise ApiError(404, f"Operation {name} not found.", "NOT_FOUND")
        return self._render_op(self._poll(name))

    def ar_get_location(self, query, body, project, location):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        return {"name": f"projects/{pid}/locations/{location}", "locationId": location}

    def ar_list_locations(self, query, body, project):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        locs = ["asia-east1", "europe-west4", "us", "us-central1", "us-east1", "us-east4",
                "us-east5", "us-west1", "us-west4"]
        return {"locations": [{"name": f"projects/{pid}/locations/{loc}", "locationId": loc}
                              for loc in locs]}

    def ar_get_project_settings(self, query, body, project):
        pid = self._require_project(project, "artifactregistry.googleapis.com")
        return {"name": f"projects/{pid}/projectSettings",
                "legacyRedirectionState": "REDIRECTION_FROM_GCR_IO_DISABLED"}

    # The path of the request being routed (set by _route's caller under the lock).
    _cur_path = ""


# --------------------------------------------------------------------------- routes
_SEG = r"[^/:]+"
_GKE = rf"/v1(?:beta1)?/projects/(?P<project>{_SEG})/(?P<kind>locations|zones)/(?P<location>{_SEG})"
_CL = rf"{_GKE}/clusters/(?P<cluster>{_SEG})"
_NP = rf"{_CL}/nodePools/(?P<nodepool>{_SEG})"
_AR = rf"/v1/projects/(?P<project>{_SEG})/locations/(?P<location>{_SEG})"

_ROUTE_TABLE = [
    # GKE
    ("GET", rf"{_GKE}/(?:serverConfig|serverconfig)", "gke_server_config"),
    ("GET", rf"{_GKE}/clusters", "gke_list_clusters"),
    ("POST", rf"{_GKE}/clusters", "gke_create_cluster"),
    ("GET", _CL, "gke_get_cluster"),
    ("PUT", _CL, "gke_update_cluster"),
    ("POST", rf"{_CL}/update", "gke_update_cluster"),  # zones-style update
    ("DELETE", _CL, "gke_delete_cluster"),
    ("GET", rf"{_CL}/nodePools", "gke_list_nodepools"),
    ("POST", rf"{_CL}/nodePools", "gke_create_nodepool"),
    ("GET", _NP, "gke_get_nodepool"),
    ("PUT", _NP, "gke_update_nodepool"),
    ("DELETE", _NP, "gke_delete_nodepool"),
    ("POST", rf"{_NP}[:/](?P<verb>[A-Za-z]+)", "gke_nodepool_verb"),
    ("POST", rf"{_CL}[:/](?P<verb>[A-Za-z]+)", "gke_cluster_verb"),
    # Service Usage (before the generic GKE/AR operation routes; disjoint anyway)
    ("GET", rf"/v1/projects/(?P<project>{_SEG})/services", "su_list_services"),
    ("GET", rf"/v1/projects/(?P<project>{_SEG})/services/(?P<service>{_SEG})", "su_get_service"),
    ("POST", rf"/v1/projects/(?P<project>{_SEG})/services:batchEnable", "su_batch_enable"),
    ("POST", rf"/v1/projects/(?P<project>{_SEG})/services/(?P<service>{_SEG}):enable", "su_enable"),
    ("POST", rf"/v1/projects/(?P<project>{_SEG})/services/(?P<service>{_SEG}):disable", "su_disable"),
    ("GET", r"/v1/operations/(?P<operation>[^/]+)", "su_get_operation"),
    # Resource Manager
    ("GET", rf"/v1/projects/(?P<project>{_SEG})", "crm_get_project_v1"),
    ("GET", rf"/v3/projects/(?P<project>{_SEG})", "crm_get_project_v3"),
    # Artifact Registry
    ("GET", rf"/v1/projects/(?P<project>{_SEG})/projectSettings", "ar_get_project_settings"),
    ("GET", rf"/v1/projects/(?P<project>{_SEG})/locations", "ar_list_locations"),
    ("GET", rf"{_AR}/repositories", "ar_list_repositories"),
    ("POST", rf"{_AR}/repositories", "ar_create_repository"),
    ("GET", rf"{_AR}/repositories/(?P<repository>{_SEG})", "ar_get_repository"),
    ("PATCH", rf"{_AR}/repositories/(?P<repository>{_SEG})", "ar_patch_repository"),
    ("DELETE", rf"{_AR}/repositories/(?P<repository>{_SEG})", "ar_delete_repository"),
]
_ROUTES = [(verb, re.compile(rx), handler) for verb, rx, handler in _ROUTE_TABLE]
_OPS_RX = re.compile(rf"{_GKE}/operations/(?P<operation>{_SEG})")
_OPS_LIST_RX = re.compile(rf"{_GKE}/operations")
_LOC_RX = re.compile(rf"{_AR}")


def _route(self: GcpEmulator, method: str, path: str, query: dict, body: dict) -> tuple[int, Any]:
    self._cur_path = path
    if method == "GET":
        m = _OPS_RX.fullmatch(path)
        if m:  # GKE and Artifact Registry share this path shape: find the operation's owner
            g = m.groupdict()
            pid = self._resolve_project(g["project"]) or g["project"]
            name = f"projects/{pid}/{g['kind']}/{g['location']}/operations/{g['operation']}"
            op = self.state.operations.get(name)
            if op is not None and op.kind == "lro":
                return 200, self.ar_get_operation(query, body, g["project"], g["location"],
                                                  g["operation"])
            if op is None and not g["operation"].startswith("operation-") and g["kind"] == "locations":
                return 200, self.ar_get_operation(query, body, g["project"], g["location"],
                                                  g["operation"])
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


GcpEmulator._route = _route  # type: ignore[method-assign]


# --------------------------------------------------------------------------- HTTP plumbing
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


# --------------------------------------------------------------------------- gcloud wiring
_OVERRIDDEN_APIS = ("CONTAINER", "ARTIFACTREGISTRY", "SERVICEUSAGE", "CLOUDRESOURCEMANAGER")


def gcloud_env(emu: GcpEmulator, tmp_path: Any, project: str = DEFAULT_PROJECT, *,
               storage_url: str | None = None, ensure_project: bool = True,
               extra: dict | None = None) -> dict:
    """Environment for running the real gcloud against ``emu`` (and nothing else).

    Creates ``tmp_path/gcloud-config`` (CLOUDSDK_CONFIG), ``tmp_path/gcloud-token`` (a dummy
    access token) and points KUBECONFIG at ``tmp_path/kubeconfig``. ``storage_url`` sets
    CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE (otherwise it is removed). With ``ensure_project``
    the project is registered in the emulator if it is unknown.
    """
    tmp = Path(tmp_path)
    config_dir = tmp / "gcloud-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    token = tmp / "gcloud-token"
    if not token.exists():
        token.write_text("ya29.emulator-dummy-token\n")
    if ensure_project and project not in emu.state.projects:
        emu.add_project(project)
    dropped = {"KUBECONFIG", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT",
               "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
    # No inherited gcloud settings, and no proxy that could carry loopback traffic elsewhere.
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("CLOUDSDK_") or k.upper() in dropped)}
    env.update({
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
        "CLOUDSDK_CONFIG": str(config_dir),
        "CLOUDSDK_CORE_CHECK_GCE_METADATA": "False",
        "CLOUDSDK_METRICS_ENVIRONMENT": "tests",
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "True",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "True",
        "CLOUDSDK_SURVEY_DISABLE_PROMPTS": "True",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
        "CLOUDSDK_CORE_PROJECT": project,
        "KUBECONFIG": str(tmp / "kubeconfig"),
    })
    for api in _OVERRIDDEN_APIS:
        env[f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api}"] = emu.url
    if storage_url:
        env["CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE"] = storage_url
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------- pytest fixture
if pytest is not None:

    @pytest.fixture
    def gcp_emulator():
        """A started :class:`GcpEmulator` (project ``test-project``, instant operations)."""
        emu = GcpEmulator(op_polls_before_done=0)
        emu.start()
        try:
            yield emu
        finally:
            emu.stop()
