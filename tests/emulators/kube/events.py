"""Events, as the controllers and the kubelet record them: one per (object, type, reason, message),
counted up when it repeats."""

from __future__ import annotations

import copy
import time

from .kinds import BY_KIND, RESOURCE_TYPES, resolve_kind
from .objects import now
from .store import Store

# Reasons the kubelet reports about one container (the event names it in ``fieldPath``).
_CONTAINER_REASONS = ("Pulling", "Pulled", "Created", "Started", "BackOff", "Failed")


def record_event(store: Store, obj: dict, typ: str, reason: str, message: str, source: str, *,
                 count: int = 1, at: str | None = None) -> dict:
    """Record (or count up) an Event about ``obj`` (``at``: when, if not now); returns the stored Event."""
    meta = obj["metadata"]
    ns = meta.get("namespace") or "default"
    for key, ev in store.objects.items():
        if key[0] == "Event" and key[1] == ns and ev["involvedObject"].get("uid") == meta.get("uid") \
                and ev["involvedObject"].get("name") == meta.get("name") \
                and ev.get("reason") == reason and ev.get("message") == message and ev.get("type") == typ:
            n = copy.deepcopy(ev)
            n["count"] = int(n.get("count") or 1) + count
            n["lastTimestamp"] = at or now()
            return store.put(key, n)
    name = f"{meta['name']}.{(time.time_ns() + next(store.event_seq)):x}"[:253]
    src = {"component": source}
    if source == "kubelet":
        src["host"] = store.node_name
    involved = {"kind": obj.get("kind"), "namespace": ns, "name": meta["name"], "uid": meta.get("uid", ""),
                "apiVersion": obj.get("apiVersion", "v1")}
    if meta.get("resourceVersion"):
        involved["resourceVersion"] = meta["resourceVersion"]
    if obj.get("kind") == "Pod" and source == "kubelet" and reason in _CONTAINER_REASONS:
        cname = ((obj.get("spec") or {}).get("containers") or [{}])[0].get("name")
        if cname:
            involved["fieldPath"] = f"spec.containers{{{cname}}}"
    stamp = at or now()
    ev = {"apiVersion": "v1", "kind": "Event",
          "metadata": {"name": name, "namespace": ns, "uid": store.uid(), "creationTimestamp": stamp},
          "involvedObject": involved, "reason": reason, "message": message, "source": src,
          "firstTimestamp": stamp, "lastTimestamp": stamp, "count": count, "type": typ, "eventTime": None,
          "reportingComponent": source, "reportingInstance": src.get("host", "")}
    return store.put(("Event", ns, name), ev)


def find_involved(store: Store, namespace: str, involved: dict | str) -> dict:
    """The object an event is about: an object dict, ``{"kind", "name"}``, or a name (pods first)."""
    if isinstance(involved, dict) and involved.get("metadata"):
        return involved
    if isinstance(involved, dict):
        kind, name = involved.get("kind", "Pod"), involved["name"]
        rt = resolve_kind(kind)
        found = store.objects.get(store.key(rt, namespace, name))
        if found:
            return found
        return {"apiVersion": involved.get("apiVersion", rt.api_version), "kind": rt.kind,
                "metadata": {"name": name, "namespace": namespace, "uid": involved.get("uid", "")}}
    for rt in [BY_KIND["Pod"]] + [r for r in RESOURCE_TYPES if r.kind != "Pod"]:
        found = store.objects.get(store.key(rt, namespace, involved))
        if found:
            return found
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": involved, "namespace": namespace, "uid": ""}}
