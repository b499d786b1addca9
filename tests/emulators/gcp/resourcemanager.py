"""Cloud Resource Manager: v1 ``projects get`` (what ``gcloud projects describe`` uses) and v3."""

from __future__ import annotations

import copy

from .errors import ApiError


class ResourceManager:
    """The Resource Manager handlers of :class:`~.server.GcpEmulator` (a mixin, like :class:`~.gke.Gke`)."""

    ROUTES = [
        ("GET", r"/v1/projects/(?P<project>[^/:]+)", "crm_get_project_v1"),
        ("GET", r"/v3/projects/(?P<project>[^/:]+)", "crm_get_project_v3"),
    ]

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
