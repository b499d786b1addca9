"""One step per object: observe live + server-side dry-run, diff, server-side apply with our manager."""

from __future__ import annotations

from typing import Any

import yaml

from gptoss_gke.core.step import Change, Plan, Step, noop
from gptoss_gke.errors import StepError
from gptoss_gke.k8s.client import SDK, kube

MANAGED_BY = "app.kubernetes.io/managed-by"
# Fields the server owns; they differ between any two reads and say nothing about our intent.
_VOLATILE = {("metadata", "resourceVersion"), ("metadata", "managedFields"), ("metadata", "generation"),
             ("metadata", "creationTimestamp"), ("metadata", "uid"), ("status",)}


def owned(obj: dict | None, settings) -> bool:
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in settings.ownership_labels.items())


def describe(obj: dict) -> str:
    meta = obj.get("metadata", {})
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def diff_objects(live: Any, want: Any, path: tuple = ()) -> list[str]:
    """Paths where `want` differs from `live` (server-added fields on the live side are ignored)."""
    if path in _VOLATILE or path[:1] == ("status",):
        return []
    if isinstance(want, dict) and isinstance(live, dict):
        out = []
        for key, value in want.items():
            out += diff_objects(live.get(key), value, path + (key,))
        return out
    if isinstance(want, list) and isinstance(live, list) and len(want) == len(live):
        out = []
        for i, (a, b) in enumerate(zip(live, want)):
            out += diff_objects(a, b, path + (i,))
        return out
    if live != want:
        shown = ".".join(str(p) for p in path)
        return [f"{shown}: {_short(live)} → {_short(want)}"]
    return []


def _short(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip() if value is not None else "(absent)"
    return text if len(text) <= 120 else text[:117] + "..."


class KubeObject(Step):
    section = "kubernetes"
    sdk_modules = SDK

    def __init__(self, obj: dict):
        self.obj = obj
        self.name = describe(obj)

    def _resource(self, ctx):
        return kube(ctx).resource(self.obj["apiVersion"], self.obj["kind"])

    def _ns(self):
        return self.obj["metadata"].get("namespace")

    def observe(self, ctx):
        from kubernetes.dynamic.exceptions import NotFoundError

        res = self._resource(ctx)
        meta = self.obj["metadata"]
        try:
            live = res.get(name=meta["name"], namespace=self._ns()).to_dict()
        except NotFoundError:
            live = None
        would = None
        if live is not None and owned(live, ctx.settings):
            # The server's own answer to "what would apply change?": defaults and all.
            would = res.server_side_apply(body=self.obj, name=meta["name"], namespace=self._ns(),
                                          field_manager=ctx.settings.kube.field_manager, force_conflicts=True,
                                          dry_run="All").to_dict()
        return {"live": live, "would": would}

    def plan(self, ctx, current) -> Plan:
        current = current or {"live": None, "would": None}
        live, would = current["live"], current["would"]
        if live is None:
            body = yaml.safe_dump(self.obj, sort_keys=False).splitlines() if ctx.dry_run else []
            return Plan([Change(f"create {self.name}", "create", apply=self._apply,
                                detail=["+ " + ln for ln in body])], diff={"create": self.name})
        if not owned(live, ctx.settings):
            if self.obj["kind"] == "Namespace":
                return noop(f"{self.name} exists and is not ours: used as is, never deleted by teardown")
            raise StepError(f"{self.name} exists but does not carry our labels ({MANAGED_BY}=gptoss-gke, "
                            f"env {ctx.settings.env_name}): refusing to take it over",
                            "delete or rename that object, or deploy into another kube.namespace")
        changes = diff_objects(live, would)
        if not changes:
            return noop(f"{self.name} matches the manifest (server-side dry run)")
        return Plan([Change(f"update {self.name} ({len(changes)} field{'s' if len(changes) > 1 else ''})",
                            "update", apply=self._apply, detail=["~ " + c for c in changes])],
                     diff={"fields": changes})

    def _apply(self, ctx) -> None:
        meta = self.obj["metadata"]
        self._resource(ctx).server_side_apply(body=self.obj, name=meta["name"], namespace=self._ns(),
                                              field_manager=ctx.settings.kube.field_manager, force_conflicts=True)
