"""What the API server does with a routed request: reads (item, list, label selector), create (POST),
server-side apply (PATCH ``application/apply-patch+yaml``, create-if-absent), and delete (propagation
policy, preconditions, finalizers). ``dryRun=All`` everywhere; writes that change nothing keep the
object's ``resourceVersion``; ``metadata.generation`` follows spec changes of workloads.

Not emulated, because the playbooks never send them (each answers 405 saying so): PUT, the other PATCH
types, watch, deletecollection, list pagination, field selectors and writes to ``/status``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from .defaults import prepare
from .errors import (ApiError, already_exists, bad_request, conflict, details, invalid, not_emulated, not_found)
from .kinds import ResourceType
from .merge import leaves, managed_fields_entry, server_side_apply
from .objects import labels, now, terminating
from .selectors import match_label_selector, parse_label_selector
from .store import Store
from .validation import decode_checks, validate

_OTHER_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json",
                  "application/json-patch+json")


def parse_body(raw: bytes, ctype: str) -> Any:
    """A request body as the API server reads it: JSON, or YAML when the content type says so."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    if "yaml" in ctype:
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise bad_request(f"error converting YAML to JSON: {exc}")
    raise bad_request("the body of the request was in an unknown format - accepted media types include: "
                      "application/json, application/yaml")


class Api:
    def __init__(self, store: Store):
        self.store = store

    # ---- reads -----------------------------------------------------------------------------------------

    def get(self, rt: ResourceType, ns: str | None, name: str) -> dict:
        obj = self.store.objects.get(self.store.key(rt, ns, name))
        if obj is None:
            raise not_found(rt, name)
        return obj

    def select(self, rt: ResourceType, ns: str | None, label_selector: str) -> list[dict]:
        try:
            reqs = parse_label_selector(label_selector)
        except ValueError as exc:
            raise bad_request(str(exc))
        return [o for (k, ons, _), o in sorted(self.store.objects.items())
                if k == rt.kind and (ns is None or ons == ns) and match_label_selector(reqs, labels(o))]

    def list(self, rt: ResourceType, ns: str | None, query: dict) -> dict:
        for param in ("fieldSelector", "limit", "continue"):
            if query.get(param):
                raise not_emulated(f"a list with {param}")
        out = []
        for o in self.select(rt, ns, query.get("labelSelector", "")):
            o = copy.deepcopy(o)  # the API server does not set kind/apiVersion on list items
            o.pop("kind", None)
            o.pop("apiVersion", None)
            out.append(o)
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)}, "items": out}

    # ---- create ----------------------------------------------------------------------------------------

    def create(self, rt: ResourceType, ns: str | None, body: Any, manager: str, dry: bool, *,
               operation: str = "Update") -> tuple[int, dict]:
        self._check_body(rt, ns, None, body, apply=operation == "Apply")
        body = copy.deepcopy(body)
        meta = body["metadata"]
        if operation != "Apply" and meta.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        name = meta.get("name")
        if not name:
            if meta.get("generateName"):
                name = meta["generateName"] + self.store.suffix()
            else:
                raise invalid(rt, "", [("metadata.name", "FieldValueRequired",
                                        "Required value: name or generateName is required")])
        ns = (ns or meta.get("namespace")) if rt.namespaced else None
        key = self.store.key(rt, ns, name)
        if key in self.store.objects:
            raise already_exists(rt, name)
        self._check_namespace(rt, ns, name)
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        paths = set(leaves(obj, rt))
        if rt.has_status:
            obj.pop("status", None)
        m = obj["metadata"]
        for k in ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
                  "managedFields", "selfLink"):
            m.pop(k, None)
        m["name"] = name
        if rt.namespaced:
            m["namespace"] = ns
        else:
            m.pop("namespace", None)
        m["uid"] = self.store.uid()
        m["creationTimestamp"] = now()
        if rt.has_generation:
            m["generation"] = 1
        if paths:
            m["managedFields"] = [managed_fields_entry(rt, manager, operation, paths)]
        prepare(rt, obj, self.store)
        validate(rt, obj, None)
        if dry:
            obj["metadata"].pop("resourceVersion", None)
            return 201, obj
        self.store.put(key, obj)
        return 201, copy.deepcopy(obj)

    def _check_body(self, rt: ResourceType, ns: str | None, name: str | None, body: Any, *, apply: bool = False):
        if not isinstance(body, dict):
            raise bad_request(f"json: cannot unmarshal {type(body).__name__} into Go value of type "
                              f"struct {{ APIVersion string; Kind string }}")
        if apply and (not body.get("apiVersion") or not body.get("kind")):
            raise bad_request(f"invalid object type: {body.get('apiVersion') or ''}, Kind={body.get('kind') or ''}")
        if body.get("apiVersion") and body["apiVersion"] != rt.api_version:
            raise bad_request(f"the API version in the data ({body['apiVersion']}) does not match the expected "
                              f"API version ({rt.api_version})")
        if body.get("kind") and body["kind"] != rt.kind:
            raise bad_request(f"the kind in the data ({body['kind']}) does not match the expected kind ({rt.kind})")
        meta = body.setdefault("metadata", {})
        decode_checks(rt, body)
        if name is not None and meta.get("name") and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        if rt.namespaced and meta.get("namespace") and ns and meta["namespace"] != ns:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                              "request")

    def _check_namespace(self, rt: ResourceType, ns: str | None, name: str) -> None:
        if not rt.namespaced:
            return
        nsobj = self.store.objects.get(("Namespace", "", ns or ""))
        if nsobj is None:
            raise ApiError(404, f'namespaces "{ns}" not found', "NotFound", {"name": ns, "kind": "namespaces"})
        if terminating(nsobj):
            raise ApiError(403, f'{rt.resource} "{name}" is forbidden: unable to create new content in namespace '
                                f"{ns} because it is being terminated", "Forbidden",
                           details(rt, name, causes=[{"reason": "NamespaceTerminating",
                                                      "message": f"namespace {ns} is being terminated",
                                                      "field": "metadata.namespace"}]))

    # ---- server-side apply -----------------------------------------------------------------------------

    def patch(self, rt: ResourceType, ns: str | None, name: str, raw: bytes, ctype: str, query: dict,
              dry: bool) -> tuple[int, dict]:
        """PATCH: server-side apply is the only kind the playbooks send."""
        ctype = ctype.split(";")[0].strip()
        if ctype != "application/apply-patch+yaml":
            if ctype in _OTHER_PATCHES:
                raise not_emulated(f"PATCH with {ctype}")
            raise ApiError(415, "the body of the request was in an unknown format - accepted media types "
                                "include: application/json-patch+json, application/merge-patch+json, "
                                "application/apply-patch+yaml", "UnsupportedMediaType")
        manager = query.get("fieldManager")
        if not manager:
            raise ApiError(422, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is '
                                "required for apply patch", "Invalid",
                           {"group": "meta.k8s.io", "kind": "PatchOptions",
                            "causes": [{"reason": "FieldValueRequired",
                                        "message": "Required value: is required for apply patch",
                                        "field": "fieldManager"}]})
        body = parse_body(raw, "yaml")
        force = (query.get("force") or "").lower() in ("1", "t", "true")  # Go's strconv.ParseBool
        self._check_body(rt, ns, name, body, apply=True)
        key = self.store.key(rt, ns, name)
        old = self.store.objects.get(key)
        if old is None:
            body = copy.deepcopy(body)
            body["metadata"]["name"] = name
            return self.create(rt, ns, body, manager, dry, operation="Apply")
        rv = body["metadata"].get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt, name)
        return self._commit(rt, key, old, server_side_apply(rt, old, body, manager, force), dry)

    def _commit(self, rt: ResourceType, key: tuple, old: dict, new: dict, dry: bool) -> tuple[int, dict]:
        """Validate, default, bump generation, and store ``new`` unless it equals ``old``."""
        prepare(rt, new, self.store)
        validate(rt, new, old)
        if rt.has_generation:
            spec_old = {k: v for k, v in old.items() if k not in ("metadata", "status", "apiVersion", "kind")}
            spec_new = {k: v for k, v in new.items() if k not in ("metadata", "status", "apiVersion", "kind")}
            if spec_old != spec_new:
                new["metadata"]["generation"] = int(old["metadata"].get("generation") or 0) + 1
        new["metadata"]["resourceVersion"] = old["metadata"].get("resourceVersion")
        if new == old:
            return 200, copy.deepcopy(old)
        if dry:
            return 200, new
        if terminating(new) and not new["metadata"].get("finalizers"):
            self.store.remove(key)
            return 200, new
        self.store.put(key, new)
        return 200, copy.deepcopy(new)

    # ---- delete ----------------------------------------------------------------------------------------

    def delete(self, rt: ResourceType, ns: str | None, name: str, query: dict, opts: dict,
               dry: bool) -> tuple[int, dict]:
        key = self.store.key(rt, ns, name)
        obj = self.store.objects.get(key)
        if obj is None:
            raise not_found(rt, name)
        pre = (opts or {}).get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise conflict(rt, name, f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                                     f"meta: {obj['metadata']['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise conflict(rt, name, f"Precondition failed: ResourceVersion in precondition: "
                                     f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                     f"{obj['metadata']['resourceVersion']}")
        policy = query.get("propagationPolicy") or opts.get("propagationPolicy")
        if policy is None:
            orphan = query.get("orphanDependents", opts.get("orphanDependents"))
            if orphan is not None:
                policy = "Orphan" if str(orphan).lower() == "true" else "Background"
            else:
                policy = "Orphan" if rt.kind == "Job" else "Background"
        if policy not in ("Orphan", "Background", "Foreground"):
            raise bad_request(f'propagationPolicy: Unsupported value: "{policy}"')
        grace = query.get("gracePeriodSeconds", opts.get("gracePeriodSeconds"))
        new = copy.deepcopy(obj)
        m = new["metadata"]
        if terminating(obj):
            return 200, copy.deepcopy(obj)
        if rt.kind == "Namespace":  # the namespace controller empties it, then removes it
            m["deletionTimestamp"] = now()
            new["status"] = {"phase": "Terminating"}
            if not dry:
                self.store.put(key, new)
            return 200, copy.deepcopy(new)
        if policy == "Foreground" or m.get("finalizers") or (rt.kind == "Pod" and str(grace) != "0"):
            m["deletionTimestamp"] = now()
            if rt.kind == "Pod":
                m["deletionGracePeriodSeconds"] = int(grace) if grace is not None else 30
            if policy == "Foreground":
                m["finalizers"] = list(dict.fromkeys((m.get("finalizers") or []) + ["foregroundDeletion"]))
            if policy == "Orphan" and not dry:
                self._orphan(obj["metadata"]["uid"])
            if dry:
                return 200, new
            self.store.put(key, new)
            return 200, copy.deepcopy(new)
        if dry:
            return 200, new if rt.delete_returns_object else self._success(rt, obj)
        if policy == "Orphan":
            self._orphan(obj["metadata"]["uid"])
        gone = self.store.remove(key)
        return 200, gone if rt.delete_returns_object else self._success(rt, obj)

    @staticmethod
    def _success(rt: ResourceType, obj: dict) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": details(rt, obj["metadata"]["name"], uid=obj["metadata"]["uid"])}

    def _orphan(self, uid: str) -> None:
        """Propagation ``Orphan``: the dependents lose their owner reference and stay."""
        for key, o in list(self.store.objects.items()):
            refs = o["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                n = copy.deepcopy(o)
                n["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                if not n["metadata"]["ownerReferences"]:
                    del n["metadata"]["ownerReferences"]
                self.store.put(key, n)
