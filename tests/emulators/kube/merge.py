"""Server-side apply: field sets, ownership per manager in ``metadata.managedFields`` (real ``FieldsV1``),
conflicts, and the merge of an applied configuration into the live object.

* Maps merge key by key; a field the configuration sets replaces the live value; ``null`` removes it.
* Lists Kubernetes declares *associative* merge item by item on their key (:data:`LIST_KEYS`, plus
  ``ports`` by ``containerPort``/``port`` + ``protocol``); every other list is atomic (``args``,
  ``command``, ``tolerations``, ``envFrom``, ``volumeClaimTemplates``, Ingress ``rules``, ``finalizers``...).
* Fields a manager applied before and omits now are removed unless another manager owns them; applying a
  value different from one another manager owns is a 409 ``Conflict`` unless ``force``. A create by
  POST records an ``Update`` entry for its manager. ``status`` is not tracked.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Iterable

from .errors import ApiError, details
from .kinds import ResourceType
from .objects import now

LIST_KEYS = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",), "env": ("name",),
    "volumes": ("name",), "imagePullSecrets": ("name",), "resourceClaims": ("name",),
    "volumeMounts": ("mountPath",), "volumeDevices": ("devicePath",), "conditions": ("type",),
    "hostAliases": ("ip",), "ownerReferences": ("uid",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
}
ITEM = object()  # marker for "this keyed list item exists" in a field set
TRACKED_META = ("labels", "annotations", "ownerReferences", "finalizers")


def list_key(field_name: str, item: Any) -> tuple | None:
    if not isinstance(item, dict):
        return None
    if field_name == "ports":
        if "containerPort" in item:
            return (("containerPort", item["containerPort"]), ("protocol", item.get("protocol") or "TCP"))
        if "port" in item:
            return (("port", item["port"]), ("protocol", item.get("protocol") or "TCP"))
        return None
    keys = LIST_KEYS.get(field_name)
    if not keys or any(k not in item for k in keys):
        return None
    return tuple((k, item[k]) for k in keys)


def _keyed(field_name: str, value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(list_key(field_name, it) is not None for it in value))


def _key_elem(key: tuple) -> str:
    return "k:" + json.dumps(dict(key), separators=(",", ":"))


def _leaves_into(node: dict, path: tuple, out: dict) -> None:
    for k, v in node.items():
        p = path + ("f:" + k,)
        if isinstance(v, dict) and v:
            _leaves_into(v, p, out)
        elif _keyed(k, v):
            for item in v:
                kp = p + (_key_elem(list_key(k, item)),)
                out[kp] = ITEM
                _leaves_into(item, kp, out)
        else:
            out[p] = v


def _trackable(obj: dict, rt: ResourceType) -> dict:
    """The part of an object that field ownership covers."""
    body = {k: v for k, v in obj.items()
            if k not in ("apiVersion", "kind", "metadata") and not (k == "status" and rt.has_status)}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k in TRACKED_META}
    if meta:
        body["metadata"] = meta
    return body


def leaves(obj: dict, rt: ResourceType) -> dict:
    """Field path (``f:``/``k:`` elements) → value, for every leaf ownership covers."""
    out: dict = {}
    _leaves_into(_trackable(obj, rt), (), out)
    return out


def _fields_v1(paths: Iterable[tuple]) -> dict:
    root: dict = {}
    paths = set(paths)
    for p in sorted(paths):
        node = root
        for e in p:
            node = node.setdefault(e, {})
    for p in paths:
        node = root
        for e in p:
            node = node[e]
        if node and "." not in node:
            node["."] = {}
    return root


def _parse_fields_v1(fv1: dict, path: tuple = (), out: set | None = None) -> set:
    out = set() if out is None else out
    for k, v in (fv1 or {}).items():
        if k == ".":
            out.add(path)
            continue
        p = path + (k,)
        if not v:
            out.add(p)
        else:
            _parse_fields_v1(v, p, out)
    return out


def _human_path(p: tuple) -> str:
    out = ""
    for e in p:
        if e.startswith("f:"):
            out += "." + e[2:]
        elif e.startswith("k:"):
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(e[2:]).items()) + "]"
        else:
            out += "." + e
    return out


def _remove_path(obj: dict, path: tuple) -> None:
    """Remove a field (``f:``) or a keyed list item (``k:``) from obj, pruning maps/lists it leaves empty."""
    trail = []
    cur: Any = obj
    for i, e in enumerate(path):
        last = i == len(path) - 1
        if e.startswith("f:"):
            if not isinstance(cur, dict) or e[2:] not in cur:
                return
            if last:
                del cur[e[2:]]
            else:
                trail.append((cur, e[2:]))
                cur = cur[e[2:]]
        elif e.startswith("k:"):
            key = json.loads(e[2:])
            field_name = path[i - 1][2:] if i else ""
            if not isinstance(cur, list):
                return
            idx = next((j for j, it in enumerate(cur)
                        if (list_key(field_name, it) or ()) and dict(list_key(field_name, it)) == key), None)
            if idx is None:
                return
            if last:
                del cur[idx]
            else:
                trail.append((cur, idx))
                cur = cur[idx]
        else:
            return
    for parent, k in reversed(trail):  # prune containers the removal left empty
        child = parent[k]
        if child in ({}, []):
            del parent[k]
        else:
            break


def apply_merge(target: dict, patch: dict) -> dict:
    """Server-side-apply merge: maps recursive, associative lists by key, other lists atomic, None removes."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict) and v:
            apply_merge(target[k], v)
        elif _keyed(k, v) and _keyed(k, target.get(k)):
            current = target[k]
            for item in v:
                key = list_key(k, item)
                idx = next((j for j, it in enumerate(current) if list_key(k, it) == key), None)
                if idx is None:
                    current.append(copy.deepcopy(item))
                else:
                    apply_merge(current[idx], item)
        else:
            target[k] = copy.deepcopy(v)
    return target


def managed_fields_entry(rt: ResourceType, manager: str, operation: str, paths: Iterable[tuple]) -> dict:
    return {"manager": manager, "operation": operation, "apiVersion": rt.api_version, "time": now(),
            "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(paths)}


def _managers(obj: dict) -> list[dict]:
    return [{"entry": e, "paths": _parse_fields_v1(e.get("fieldsV1") or {})}
            for e in (obj.get("metadata") or {}).get("managedFields") or []]


def _write_managers(obj: dict, managers: list[dict]) -> None:
    entries = []
    for m in managers:
        if not m["paths"]:
            continue
        e = dict(m["entry"])
        fv1 = _fields_v1(m["paths"])
        if e.get("fieldsV1") != fv1:
            e["fieldsV1"] = fv1
            e["time"] = now()
        entries.append(e)
    if entries:
        obj["metadata"]["managedFields"] = entries
    else:
        obj["metadata"].pop("managedFields", None)


def server_side_apply(rt: ResourceType, live: dict, body: dict, manager: str, force: bool) -> dict:
    """The object after ``manager`` applies ``body`` to ``live`` (neither is changed); raises the 409
    ``Conflict`` the API server answers when another manager owns a field with another value."""
    name = live["metadata"]["name"]
    applied = _trackable(body, rt)
    new_leaves: dict = {}
    _leaves_into(applied, (), new_leaves)
    live_leaves = leaves(live, rt)
    managers = _managers(live)
    mine = None
    for m in managers:
        e = m["entry"]
        if e.get("manager") == manager and e.get("operation") == "Apply" and not e.get("subresource"):
            mine = m
    conflicts = []
    for p, v in new_leaves.items():
        if v is ITEM or p not in live_leaves or live_leaves[p] == v:
            continue
        for m in managers:
            if m is not mine and m["entry"].get("manager") != manager and p in m["paths"]:
                conflicts.append((m["entry"], p))
    if conflicts and not force:
        causes = [{"reason": "FieldManagerConflict",
                   "message": f'conflict with "{e.get("manager")}"'
                              + (f' using {e.get("apiVersion")}' if e.get("operation") == "Update" else ""),
                   "field": _human_path(p)} for e, p in conflicts]
        lines = "\n".join(f"- {c['message']}: {c['field']}" for c in causes)
        n = len(causes)
        raise ApiError(409, f"Apply failed with {n} conflict{'s' if n > 1 else ''}: "
                            + (f"{causes[0]['message']}: {causes[0]['field']}" if n == 1 else lines),
                       "Conflict", details(rt, name, causes=causes))
    if force:
        for _, p in conflicts:
            for m in managers:
                if m is not mine:
                    m["paths"].discard(p)
    new = copy.deepcopy(live)
    new["metadata"] = apply_merge(new["metadata"], {k: v for k, v in body["metadata"].items() if k in TRACKED_META})
    apply_merge(new, {k: v for k, v in applied.items() if k != "metadata"})
    prev = mine["paths"] if mine else set()
    others = set().union(*(m["paths"] for m in managers if m is not mine)) if managers else set()
    removed: list[tuple] = []
    for p in sorted(prev - set(new_leaves) - others, key=len):  # parents first; their children go with them
        if any(p[:len(r)] == r for r in removed):
            continue
        _remove_path(new, p)
        removed.append(p)
    if mine is None:
        mine = {"entry": managed_fields_entry(rt, manager, "Apply", ()), "paths": set()}
        managers.append(mine)
    mine["paths"] = set(new_leaves)
    _write_managers(new, managers)
    return new
