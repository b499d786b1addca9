"""Service Usage v1: services get/list (paginated, ``state:ENABLED`` filters), enable, batchEnable, disable
and their ``operations/...``. A call that changes nothing answers an operation that is already done."""

from __future__ import annotations

import re
import uuid
from typing import Any

from .errors import ApiError
from .operations import Operation

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

_PROJECT = r"/v1/projects/(?P<project>[^/:]+)"
_SERVICE = r"(?P<service>[^/:]+)"


class ServiceUsage:
    """The Service Usage handlers of :class:`~.server.GcpEmulator` (a mixin, like :class:`~.gke.Gke`)."""

    ROUTES = [
        ("GET", rf"{_PROJECT}/services", "su_list_services"),
        ("GET", rf"{_PROJECT}/services/{_SERVICE}", "su_get_service"),
        ("POST", rf"{_PROJECT}/services:batchEnable", "su_batch_enable"),
        ("POST", rf"{_PROJECT}/services/{_SERVICE}:enable", "su_enable"),
        ("POST", rf"{_PROJECT}/services/{_SERVICE}:disable", "su_disable"),
        ("GET", r"/v1/operations/(?P<operation>[^/]+)", "su_get_operation"),
    ]

    def enable_services(self, project: str, *services: str) -> None:
        with self.lock:
            self.state.services.setdefault(project, set()).update(services)

    def disable_services(self, project: str, *services: str) -> None:
        with self.lock:
            self.state.services.setdefault(project, set()).difference_update(services)

    def enabled_services(self, project: str) -> set:
        with self.lock:
            return set(self.state.services.get(project, set()))

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

        op = Operation("serviceusage", name, self.op_polls_before_done, project=pid, location=None,
                       on_success=ok, metadata={"@type": "type.googleapis.com/google.protobuf.Empty"})
        # Like Service Usage: a call that changes nothing answers an operation that is already
        # done; one that changes something (or will fail) answers done=false and the caller polls
        # (gcloud's first poll is immediate, so this costs no sleep with op_polls_before_done=0).
        current = self.state.services.get(pid, set())
        changes = any((s in current) != state_after for s in services)
        return self._start_op(op, method, path,
                              pending_in_reply=changes or self._has_op_failure(method, path)).render()

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
        return self._poll(name).render()
