"""One step per object: observe live + server-side dry-run, diff, server-side apply with our manager.

The plan compares the live object with the server's own answer to "what would apply make of it?"
(a server-side dry run), in both directions: a label, annotation, env var or argument we applied
before and no longer send is removed by the apply, so it is a change too. A change to a field that
cannot change in place is found before anything is sent and reported like node-pool drift: what
differs, why, and the exact commands; nothing is deleted for the user.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import StepError
from gptoss_gke.k8s.client import KubeStep, kube
from gptoss_gke.ownership import TARGET, kube_owner_problem

# Fields the server owns; they differ between any two reads and say nothing about our intent.
_VOLATILE = {("metadata", "resourceVersion"), ("metadata", "managedFields"), ("metadata", "generation"),
             ("metadata", "creationTimestamp"), ("metadata", "uid"), ("status",)}
# Objects every target shares (their target label is whichever target rendered them last).
SHARED_KINDS = {"Namespace", "ServiceAccount", "Secret"}
# What the API server refuses to change in place, per kind (the paths we set).
IMMUTABLE = {
    "StatefulSet": [("spec", "selector"), ("spec", "serviceName"), ("spec", "podManagementPolicy"),
                    ("spec", "volumeClaimTemplates")],
    "Deployment": [("spec", "selector")],
    "Job": [("spec", "selector"), ("spec", "template")],
    "PersistentVolumeClaim": [("spec", "storageClassName"), ("spec", "accessModes"), ("spec", "volumeName"),
                              ("spec", "resources", "requests", "storage")],
    "PersistentVolume": [("spec", "csi"), ("spec", "storageClassName"), ("spec", "capacity")],
}


def describe(obj: dict) -> str:
    meta = obj.get("metadata", {})
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def object_target(obj: dict) -> str | None:
    """The target an object belongs to (None for the objects every target shares)."""
    if obj.get("kind") in SHARED_KINDS:
        return None
    return ((obj.get("metadata") or {}).get("labels") or {}).get(TARGET)


def diff_objects(live: Any, want: Any, path: tuple = (), *, both_ways: bool = True) -> list[str]:
    """Paths where ``want`` differs from ``live``.

    ``both_ways``: a key only ``live`` has is a difference too (``want`` is the server's full answer,
    so it has every server-added field). Without it, only what ``want`` sets is compared (``want`` is
    a manifest: the server adds defaults)."""
    if path in _VOLATILE or path[:1] == ("status",):
        return []
    if isinstance(want, dict) and isinstance(live, dict):
        keys = list(want) + ([k for k in live if k not in want] if both_ways else [])
        out = []
        for key in keys:
            out += diff_objects(live.get(key), want.get(key), path + (key,), both_ways=both_ways)
        return out
    if isinstance(want, list) and isinstance(live, list):
        if len(want) == len(live):
            out = []
            for i, (a, b) in enumerate(zip(live, want)):
                out += diff_objects(a, b, path + (i,), both_ways=both_ways)
            return out
        named = _by_name(live), _by_name(want)
        if None not in named:  # containers, env, volumes, ports: matched by name, not position
            out = []
            for key in list(named[1]) + ([k for k in named[0] if k not in named[1]] if both_ways else []):
                out += diff_objects(named[0].get(key), named[1].get(key), path + (key,), both_ways=both_ways)
            return out
        if all(not isinstance(x, (dict, list)) for x in live + want):  # args, command: what went, what came
            shown = ".".join(str(p) for p in path)
            gone, came = [x for x in live if x not in want], [x for x in want if x not in live]
            words = ([f"removed {', '.join(_short(x) for x in gone)}"] if gone else []) + \
                ([f"added {', '.join(_short(x) for x in came)}"] if came else [])
            return [f"{shown}: {'; '.join(words) or 'same items, another order'}"]
    if live != want:
        shown = ".".join(str(p) for p in path)
        return [f"{shown}: {_short(live)} → {_short(want)}"]
    return []


def _by_name(items: list) -> dict | None:
    if not all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in items):
        return None
    named = {x["name"]: x for x in items}
    return named if len(named) == len(items) else None


def _short(value: Any) -> str:
    if value is None:
        return "(absent)"
    if isinstance(value, str):
        text = value
    else:  # flow YAML; a bare scalar would end with YAML's "..." document marker
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")
    return text if len(text) <= 120 else text[:117] + "..."


def _dig(obj: Any, path: tuple) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def immutable_drift(live: dict, want: dict) -> list[str]:
    """What differs in fields the API server will not change in place (only what we set counts)."""
    drift = []
    for path in IMMUTABLE.get(want.get("kind"), []):
        mine = _dig(want, path)
        if mine is None:
            continue
        drift += diff_objects(_dig(live, path), mine, path, both_ways=False)
    return drift


def _storage_only_grows(drift: list[str], live: dict, want: dict) -> bool:
    """True when the only immutable difference is a larger volumeClaimTemplate storage request."""
    from kubernetes.utils import parse_quantity

    if not all(".resources.requests.storage:" in d for d in drift):
        return False
    for old, new in zip(_dig(live, ("spec", "volumeClaimTemplates")) or [],
                        _dig(want, ("spec", "volumeClaimTemplates")) or []):
        have, ask = (_dig(t, ("spec", "resources", "requests", "storage")) for t in (old, new))
        if have and ask and parse_quantity(ask) < parse_quantity(have):
            return False
    return True


def immutable_fix(settings, live: dict, want: dict, drift: list[str]) -> str:
    """The exact commands that resolve an immutable difference, in order (or: set the setting back)."""
    kind, meta = want["kind"], want["metadata"]
    name, ns = meta["name"], meta.get("namespace")
    kubectl = f"kubectl --kubeconfig={settings.kubeconfig_path} --context={settings.kube_context}" + \
        (f" -n {ns}" if ns else "")
    target = object_target(want)
    commands: list[str] = []
    why = ""
    if kind == "StatefulSet":
        replicas = int(_dig(live, ("spec", "replicas")) or 1)
        templates = _dig(want, ("spec", "volumeClaimTemplates")) or []
        claims = {(t.get("metadata") or {}).get("name"): [f"{(t.get('metadata') or {}).get('name')}-{name}-{i}"
                                                          for i in range(replicas)] for t in templates}
        if _storage_only_grows(drift, live, want):
            for t in templates:
                size = _dig(t, ("spec", "resources", "requests", "storage"))
                patch = json.dumps({"spec": {"resources": {"requests": {"storage": size}}}})
                commands += [f"{kubectl} patch pvc {c} -p '{patch}'" for c in claims[t["metadata"]["name"]]]
            commands.append(f"{kubectl} delete statefulset {name} --cascade=orphan")
            why = ("the claims grow in place (if their storage class allows expansion; standard-rwo does), then the "
                   "StatefulSet is recreated around the running pods, which keep their data")
        else:
            commands.append(f"{kubectl} delete statefulset {name}")
            if any("volumeClaimTemplates" in d for d in drift):
                commands += [f"{kubectl} delete pvc {c}" for cs in claims.values() for c in cs]
                why = "the pods stop; new claims are made with the new template, so the model is downloaded again"
            else:
                why = "the pods stop and start again; the model cache claims are kept (retention policy)"
    else:
        commands.append(f"{kubectl} delete {kind.lower()} {name}")
    commands.append(f"inv deploy --target={target}" if target else "inv deploy")
    listed = "".join(f"\n      {c}" for c in commands)
    return (f"we never delete and recreate it for you. Set the setting back so the manifest matches the live "
            f"object, or run, in order:{listed}" + (f"\n    ({why})" if why else ""))


class KubeObject(KubeStep):
    section = "kubernetes"

    def __init__(self, obj: dict):
        self.obj = obj
        self.name = describe(obj)

    def _resource(self, ctx):
        return kube(ctx).resource(self.obj["apiVersion"], self.obj["kind"])

    def _ns(self):
        return self.obj["metadata"].get("namespace")

    def _not_ours(self, ctx, live: dict) -> str | None:
        return kube_owner_problem(live, ctx.settings, object_target(self.obj))

    def observe(self, ctx):
        from kubernetes.dynamic.exceptions import NotFoundError

        res = self._resource(ctx)
        meta = self.obj["metadata"]
        try:
            live = res.get(name=meta["name"], namespace=self._ns()).to_dict()
        except NotFoundError:
            live = None
        would = None
        drift = immutable_drift(live, self.obj) if live is not None else []
        if live is not None and not drift and self._not_ours(ctx, live) is None:
            # The server's own answer to "what would apply change?": defaults and all.
            would = res.server_side_apply(body=self.obj, name=meta["name"], namespace=self._ns(),
                                          field_manager=ctx.settings.kube.field_manager, force_conflicts=True,
                                          dry_run="All").to_dict()
        return {"live": live, "would": would, "drift": drift}

    def plan(self, ctx, current) -> Plan:
        current = current or {"live": None, "would": None, "drift": []}
        live, would = current["live"], current["would"]
        if live is None:
            body = yaml.safe_dump(self.obj, sort_keys=False).splitlines() if ctx.dry_run else []
            return Plan([Change(f"create {self.name}", "create", apply=self._apply,
                                detail=["+ " + ln for ln in body])], diff={"create": self.name})
        why = self._not_ours(ctx, live)
        if why is not None:
            if self.obj["kind"] == "Namespace":
                return noop(f"{self.name} exists and is {why}: used as is, never deleted by teardown")
            raise StepError(f"{self.name} exists and is {why}: refusing to take it over",
                            "delete or rename that object, or deploy into another kube.namespace")
        if current["drift"]:
            raise StepError(
                f"{self.name} differs in what the API server cannot change in place: "
                f"{'; '.join(current['drift'])}",
                immutable_fix(ctx.settings, live, self.obj, current["drift"]),
                facts={"immutable_drift": current["drift"]})
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
