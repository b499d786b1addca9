"""Discovery documents (``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>[/<version>]``) for the
kinds in :data:`~.kinds.RESOURCE_TYPES`, so ``kubernetes.dynamic.DynamicClient`` resolves them and teardown
can ask for every namespaced, listable kind. No aggregated discovery, no OpenAPI document."""

from __future__ import annotations

import re

from .kinds import RESOURCE_TYPES

GIT_VERSION = "v1.33.5-gke.1201000"


def _resource_list(group: str, version: str) -> dict:
    resources = []
    for rt in RESOURCE_TYPES:
        if (rt.group, rt.version) != (group, version):
            continue
        entry = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind,
                 "verbs": list(rt.verbs)}
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        resources.append(entry)
        if rt.has_status:
            resources.append({"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": ["get", "patch", "update"]})
        for sub, kind, verbs in rt.extra_subresources:
            resources.append({"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                              "kind": kind, "verbs": list(verbs)})
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": resources}


def _groups() -> list[dict]:
    out = []
    for g in dict.fromkeys(rt.group for rt in RESOURCE_TYPES if rt.group):
        versions = [{"groupVersion": f"{g}/{v}", "version": v}
                    for v in dict.fromkeys(rt.version for rt in RESOURCE_TYPES if rt.group == g)]
        out.append({"name": g, "versions": versions, "preferredVersion": dict(versions[0])})
    return out


def discovery_document(path: str, *, git_version: str, address: str) -> dict | None:
    """The document served at ``path``, or None when ``path`` is not a discovery path."""
    p = path.rstrip("/")
    if p == "/version":
        minor = git_version.split(".")[1]
        return {"major": "1", "minor": minor, "emulationMajor": "1", "emulationMinor": minor,
                "minCompatibilityMajor": "1", "minCompatibilityMinor": str(int(minor) - 1),
                "gitVersion": git_version, "gitCommit": "0" * 40, "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.6", "compiler": "gc",
                "platform": "linux/amd64"}
    if p == "/api":
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]}
    if p == "/api/v1":
        return _resource_list("", "v1")
    if p == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": _groups()}
    m = re.fullmatch(r"/apis/([^/]+)(?:/([^/]+))?", p)
    if m:
        group = next((g for g in _groups() if g["name"] == m.group(1)), None)
        if group is None:
            return None
        if m.group(2) is None:
            return dict(group, kind="APIGroup", apiVersion="v1")
        if any(v["version"] == m.group(2) for v in group["versions"]):
            return _resource_list(m.group(1), m.group(2))
    return None
