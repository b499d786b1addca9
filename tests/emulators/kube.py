"""Loopback Kubernetes API emulator, reached by the real ``kubernetes`` client through a kubeconfig.

One aiohttp server on ``127.0.0.1`` (ephemeral port, background thread). It keeps objects in memory and
implements, with the API server's semantics, what the playbooks use:

* Discovery (``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>[/v1]``) for the kinds in
  :data:`RESOURCE_TYPES`, so ``kubernetes.dynamic.DynamicClient`` resolves them.
* CRUD: GET (item, list, all-namespace list, ``labelSelector``, ``fieldSelector``, ``limit``/``continue``,
  ``watch=true``), POST, PUT (``resourceVersion`` conflicts), DELETE (item and collection,
  ``propagationPolicy``, preconditions, finalizers), PATCH with ``application/apply-patch+yaml``
  (server-side apply), ``merge-patch+json``, ``strategic-merge-patch+json`` and ``json-patch+json``;
  ``?dryRun=All`` everywhere. ``/status`` subresources. ``Status`` bodies for every error.
* ``resourceVersion`` is one global counter, bumped only by real changes: a no-op apply/patch/update returns
  the stored object untouched. ``metadata.generation`` is bumped on spec changes of workloads.
* Server-side apply (see :func:`_apply_merge` and :meth:`KubeEmulator._apply`):

  - the applied config is merged into the live object recursively: maps merge key by key, a field the
    config sets replaces the live value, ``null`` removes it;
  - lists that Kubernetes declares as *associative* are merged item by item on their key, every other list
    is atomic (replaced wholesale). Keys: ``containers``/``initContainers``/``ephemeralContainers``/
    ``env``/``volumes``/``imagePullSecrets``/``resourceClaims`` by ``name``, ``volumeMounts`` by
    ``mountPath``, ``volumeDevices`` by ``devicePath``, container ``ports`` by ``containerPort``+``protocol``,
    Service ``ports`` by ``port``+``protocol``, ``conditions`` by ``type``, ``ownerReferences`` by ``uid``,
    ``hostAliases`` by ``ip``, ``topologySpreadConstraints`` by ``topologyKey``+``whenUnsatisfiable``.
    Atomic (examples): ``args``, ``command``, ``tolerations``, ``envFrom``, ``volumeClaimTemplates``,
    Ingress ``rules``/``tls``, ``accessModes``, ``finalizers``;
  - ownership is tracked per manager in ``metadata.managedFields`` (real ``FieldsV1`` format): fields a
    manager applied before and omits now are removed unless another manager owns them; applying a value
    different from one owned by another manager (Apply or Update) is a 409 ``Conflict`` unless
    ``force=true``; POST/PUT/non-apply PATCH record an ``Update`` entry for the fields they changed
    (manager = ``fieldManager`` or the User-Agent product, e.g. ``OpenAPI-Generator``). ``status`` is not
    tracked, and status written by the emulated controllers records no manager.
* Defaulting and validation that bite in practice: names and labels (422), selector vs template labels,
  containers need name+image, Job ``restartPolicy``, non-string label/annotation/ConfigMap values (400),
  Secret ``stringData`` folded into base64 ``data``, immutable fields (StatefulSet spec outside
  replicas/template/updateStrategy/..., Deployment/Job selector, Job template, PVC spec, Service
  clusterIP, Pod spec, immutable ConfigMap/Secret), Service clusterIP/targetPort/protocol, PVC
  storageClassName (``standard-rwo``), container imagePullPolicy, etc.
* A tiny controller (:meth:`KubeEmulator.tick`) run before every read (GET, list, log, port-forward;
  ``auto_tick``), every ``watch_tick_s`` while a watch is open, on a timer (``tick_interval``), or by hand.
  Writes and dry-runs never tick, so "apply, then apply again" sees exactly the first apply's result: namespaces get ``default`` ServiceAccount and
  ``kube-root-ca.crt``; Deployment → ReplicaSet → Pods (``<deploy>-<hash>-<rand5>``); StatefulSet → Pods
  ``<sts>-<i>`` (OrderedReady or Parallel, rolling update one pod at a time) and PVCs from
  ``volumeClaimTemplates`` (``<tmpl>-<sts>-<i>``, retention policy honoured); Job → Pod; PVC binding;
  garbage collection through ``ownerReferences``; namespace termination; workload ``status``. Pods follow
  a scripted scenario (:meth:`KubeEmulator.script_pods`, :data:`SCENARIOS`), emitting Events.
* Pod logs (``/log``: ``container``, ``tailLines``, ``previous``, ``timestamps``, ``limitBytes``) from
  :meth:`KubeEmulator.set_logs`; port-forward over WebSocket (``v4.channel.k8s.io``) relaying to a
  loopback TCP target set with :meth:`KubeEmulator.set_port_forward_target`.

Using it with the kubernetes v37 client (all verified by ``test_kube_emulator.py``)::

    emu = KubeEmulator().start()                      # or the ``kube_emulator`` fixture
    emu.write_kubeconfig(path, context="test")        # plain http, token auth (any token)
    api = kubernetes.config.new_client_from_config(config_file=str(path), context="test")
    dyn = kubernetes.dynamic.DynamicClient(api, cache_file=str(tmp / "discovery.json"))
    res = dyn.resources.get(api_version="apps/v1", kind="StatefulSet")
    obj = res.server_side_apply(body=manifest, name=name, namespace=ns, field_manager="gptoss-gke")
    preview = res.server_side_apply(body=manifest, name=name, namespace=ns, field_manager="gptoss-gke",
                                    dry_run="All")          # force_conflicts=True to take fields over
    # typed client: apps.patch_namespaced_stateful_set(name, ns, manifest, field_manager="gptoss-gke",
    #                                                  _content_type="application/apply-patch+yaml")
    emu.set_port_forward_target("vllm-", 8000, ("127.0.0.1", fake_vllm.port))
    pf = kubernetes.stream.portforward(core.connect_get_namespaced_pod_portforward, "vllm-0", ns, ports="8000")
    conn = http.client.HTTPConnection("localhost", 8000); conn.sock = pf.socket(8000)   # then conn.request(...)
    # no target / refused: pf.socket(8000).recv() returns b"" and pf.error(8000) holds the kubelet-style message

``kubectl`` works too with ``KubeEmulator(anonymous=True)`` (client-go sends no bearer token over plain http)
and ``--validate=false`` (there is no OpenAPI document); it prints plain columns (no Table conversion).

Differences from a real cluster worth knowing: ticks are logical (one per API request by default), Pod
deletion is graceful for exactly one tick, no admission webhooks (no GCS FUSE sidecar injection), no
Endpoints/ControllerRevisions, Service ``LoadBalancer`` status stays empty, ``Node`` objects exist only when
seeded, list responses are never paginated unless ``limit`` is sent, no protobuf/CBOR, no aggregated
discovery.

Nothing here opens a socket to anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as _dt
import hashlib
import itertools
import json
import random
import re
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl

import yaml
from aiohttp import WSMsgType, web

from tests.emulators.aioserver import LoopbackAioServer

try:  # pytest is optional for importing the emulator itself.
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

__all__ = [
    "ApiError",
    "KubeEmulator",
    "RecordedRequest",
    "RESOURCE_TYPES",
    "SCENARIOS",
    "kube_emulator",
    "parse_label_selector",
    "match_label_selector",
]

LOOPBACK = "127.0.0.1"
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
GIT_VERSION = "v1.33.5-gke.1201000"
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated name suffixes and hashes


# --------------------------------------------------------------------------------------------------------
# Resource types
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple = ()
    extra_subresources: tuple = ()  # (name, kind, verbs) besides "status"
    has_status: bool = True
    has_generation: bool = False
    delete_returns_object: bool = False
    verbs: tuple = ALL_VERBS
    categories: tuple = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """``pods`` or ``statefulsets.apps``: how error messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def singular(self) -> str:
        return self.kind.lower()


_NS_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")

RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", False, ("ns",), delete_returns_object=True,
                 verbs=_NS_VERBS),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, ("sa",), has_status=False),
    ResourceType("", "v1", "Secret", "secrets", True, (), has_status=False),
    ResourceType("", "v1", "ConfigMap", "configmaps", True, ("cm",), has_status=False),
    ResourceType("", "v1", "PersistentVolume", "persistentvolumes", False, ("pv",), delete_returns_object=True),
    ResourceType("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ("pvc",),
                 delete_returns_object=True),
    ResourceType("", "v1", "Service", "services", True, ("svc",), delete_returns_object=True,
                 categories=("all",)),
    ResourceType("", "v1", "Pod", "pods", True, ("po",),
                 (("log", "Pod", ("get",)), ("portforward", "PodPortForwardOptions", ("create", "get"))),
                 delete_returns_object=True, categories=("all",)),
    ResourceType("", "v1", "Event", "events", True, ("ev",), has_status=False),
    ResourceType("", "v1", "Node", "nodes", False, ("no",)),
    ResourceType("apps", "v1", "Deployment", "deployments", True, ("deploy",), has_generation=True,
                 categories=("all",)),
    ResourceType("apps", "v1", "StatefulSet", "statefulsets", True, ("sts",), has_generation=True,
                 categories=("all",)),
    ResourceType("apps", "v1", "ReplicaSet", "replicasets", True, ("rs",), has_generation=True,
                 categories=("all",)),
    ResourceType("batch", "v1", "Job", "jobs", True, (), has_generation=True, categories=("all",)),
    ResourceType("networking.k8s.io", "v1", "Ingress", "ingresses", True, ("ing",), has_generation=True),
    # Kinds a namespace may hold that the playbooks never create: teardown must see them before it
    # deletes a namespace (it asks discovery for every namespaced, listable kind).
    ResourceType("", "v1", "Endpoints", "endpoints", True, ("ep",), has_status=False),
    ResourceType("apps", "v1", "ControllerRevision", "controllerrevisions", True, (), has_status=False),
    ResourceType("batch", "v1", "CronJob", "cronjobs", True, ("cj",), categories=("all",)),
    ResourceType("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True, ("netpol",),
                 has_status=False),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles", True, (), has_status=False),
    ResourceType("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True, (), has_status=False),
    ResourceType("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True, ("pdb",)),
    ResourceType("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True, ("hpa",),
                 categories=("all",)),
    # A custom resource (GKE installs the Gateway API CRDs with --gateway-api=standard).
    ResourceType("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes", True, (), has_generation=True),
    # Namespaced and listable, but a live view, not a resident (metrics-server serves it on GKE).
    ResourceType("metrics.k8s.io", "v1beta1", "PodMetrics", "pods", True, (), has_status=False,
                 verbs=("get", "list")),
    # Namespaced, but create-only: nothing to list.
    ResourceType("authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", True,
                 (), verbs=("create",)),
)

_BY_KIND = {rt.kind: rt for rt in RESOURCE_TYPES}
_BY_GVR = {(rt.group, rt.version, rt.plural): rt for rt in RESOURCE_TYPES}


def _resolve_kind(kind: str) -> ResourceType:
    k = kind.split("/")[-1].lower()
    for rt in RESOURCE_TYPES:
        if k in (rt.kind.lower(), rt.plural, rt.singular, *rt.short_names):
            return rt
    raise KeyError(f"unknown kind {kind!r}")


# --------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------

_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            406: "NotAcceptable", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid",
            429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


class ApiError(Exception):
    """An error answered as a ``Status`` object."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(rt: ResourceType, name: str, **extra) -> dict:
    d = {"name": name}
    if rt.group:
        d["group"] = rt.group
    d["kind"] = rt.plural
    d.update(extra)
    return d


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, f'{rt.resource} "{name}" not found', "NotFound", _details(rt, name))


def _already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, f'{rt.resource} "{name}" already exists', "AlreadyExists", _details(rt, name))


def _conflict(rt: ResourceType, name: str, why: str = "the object has been modified; please apply your "
              "changes to the latest version and try again") -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {rt.resource} "{name}": {why}', "Conflict",
                    _details(rt, name))


def _invalid(rt: ResourceType, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """causes: (field, reason e.g. FieldValueInvalid, message after ``field: ``)."""
    parts = [f"{f}: {m}" for f, _, m in causes]
    summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(422, f'{rt.qualified_kind} "{name}" is invalid: {summary}', "Invalid",
                    _details(rt, name, causes=[{"reason": r, "message": m, "field": f} for f, r, m in causes]))


def _bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")


# --------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _safe_hash(data: Any, n: int = 10) -> str:
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).digest()
    return "".join(SAFE_ALPHABET[b % len(SAFE_ALPHABET)] for b in digest[:n])


def _meta(obj: dict) -> dict:
    m = obj.get("metadata")
    if m is None:
        m = obj["metadata"] = {}
    return m


def _labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def _dig(obj: Any, dotted: str) -> Any:
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _is_ready(pod: dict) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def _terminating(obj: dict) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _owner_ref(owner: dict) -> dict:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _controller_uid(obj: dict) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def _is_loopback_target(addr: tuple) -> bool:
    return isinstance(addr, tuple) and len(addr) == 2 and addr[0] == LOOPBACK and isinstance(addr[1], int)


# --------------------------------------------------------------------------------------------------------
# Label and field selectors
# --------------------------------------------------------------------------------------------------------

_KEY_RE = re.compile(r"^(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(selector: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """``a=b,c!=d,e,!f,g in (h,i),j notin (k)`` → [(key, op, values)]; raises ValueError."""
    reqs = []
    for part in _split_top(selector or ""):
        m = re.fullmatch(r"(\S+?)\s+(in|notin)\s*\((.*)\)", part)
        if m:
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            if not values:
                raise ValueError(f"unable to parse requirement: for 'in', 'notin' operators, values set can't be empty")
            key, op = m.group(1), m.group(2)
        else:
            m = re.fullmatch(r"([^\s!=<>()]+)\s*(==|=|!=)\s*([^\s,()=!]*)", part)
            if m:
                key, op, values = m.group(1), {"==": "=", "=": "=", "!=": "!="}[m.group(2)], (m.group(3),)
            else:
                m = re.fullmatch(r"(!?)\s*([^\s!=<>()]+)", part)
                if not m:
                    raise ValueError(f"unable to parse requirement: found '{part}', expected: identifier")
                key, op, values = m.group(2), ("!" if m.group(1) else "exists"), ()
        if not _KEY_RE.match(key):
            raise ValueError(f"unable to parse requirement: invalid label key \"{key}\"")
        for v in values:
            if len(v) > 63 or not _VALUE_RE.match(v):
                raise ValueError(f"unable to parse requirement: invalid label value: \"{v}\"")
        reqs.append((key, op, values))
    return reqs


def match_label_selector(reqs: list, labels: dict) -> bool:
    for key, op, values in reqs:
        has = key in labels
        val = labels.get(key)
        if op == "=" and not (has and val == values[0]):
            return False
        if op == "!=" and has and val == values[0]:
            return False
        if op == "exists" and not has:
            return False
        if op == "!" and has:
            return False
        if op == "in" and not (has and val in values):
            return False
        if op == "notin" and has and val in values:
            return False
    return True


def _match_selector_dict(selector: dict | None, labels: dict) -> bool:
    """A ``LabelSelector`` object (matchLabels + matchExpressions). An empty selector matches everything."""
    if not selector:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


_FIELD_LABELS = {
    "Pod": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
            "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"},
    "Event": {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
              "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
              "reason", "reportingComponent", "source", "type"},
    "Secret": {"type"},
    "Namespace": {"status.phase"},
    "Node": {"spec.unschedulable"},
    "ReplicaSet": {"status.replicas"},
    "Job": {"status.successful"},
}


def _parse_field_selector(rt: ResourceType, selector: str) -> list[tuple[str, str, str]]:
    reqs = []
    for part in _split_top(selector or ""):
        m = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise _bad_request(f"invalid selector: '{selector}'; can't understand '{part}'")
        key = m.group(1)
        if key not in ("metadata.name", "metadata.namespace") and key not in _FIELD_LABELS.get(rt.kind, ()):
            raise _bad_request(f'field label not supported: {key}')
        reqs.append((key, "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return reqs


def _field_value(obj: dict, key: str) -> str:
    if key == "source":
        key = "source.component"
    v = _dig(obj, key)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    return str(v)


def _match_fields(reqs: list, obj: dict) -> bool:
    for key, op, val in reqs:
        actual = _field_value(obj, key)
        if (op == "=") != (actual == val):
            return False
    return True


# --------------------------------------------------------------------------------------------------------
# Server-side apply: field sets, FieldsV1, merges, patches
# --------------------------------------------------------------------------------------------------------

_LIST_KEYS = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",), "env": ("name",),
    "volumes": ("name",), "imagePullSecrets": ("name",), "resourceClaims": ("name",),
    "volumeMounts": ("mountPath",), "volumeDevices": ("devicePath",), "conditions": ("type",),
    "hostAliases": ("ip",), "ownerReferences": ("uid",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
}
_ITEM = object()  # marker for "this keyed list item exists" in a field set
_TRACKED_META = ("labels", "annotations", "ownerReferences", "finalizers")


def _list_key(field_name: str, item: Any) -> tuple | None:
    if not isinstance(item, dict):
        return None
    if field_name == "ports":
        if "containerPort" in item:
            return (("containerPort", item["containerPort"]), ("protocol", item.get("protocol") or "TCP"))
        if "port" in item:
            return (("port", item["port"]), ("protocol", item.get("protocol") or "TCP"))
        return None
    keys = _LIST_KEYS.get(field_name)
    if not keys or any(k not in item for k in keys):
        return None
    return tuple((k, item[k]) for k in keys)


def _keyed(field_name: str, value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(_list_key(field_name, it) is not None for it in value))


def _key_elem(key: tuple) -> str:
    return "k:" + json.dumps(dict(key), separators=(",", ":"))


def _leaves_into(node: dict, path: tuple, out: dict) -> None:
    for k, v in node.items():
        p = path + ("f:" + k,)
        if isinstance(v, dict) and v:
            _leaves_into(v, p, out)
        elif _keyed(k, v):
            for item in v:
                kp = p + (_key_elem(_list_key(k, item)),)
                out[kp] = _ITEM
                _leaves_into(item, kp, out)
        else:
            out[p] = v


def _trackable(obj: dict, rt: ResourceType, subresource: str = "") -> dict:
    """The part of an object that field ownership covers."""
    if subresource == "status":
        return {"status": obj.get("status") or {}}
    body = {k: v for k, v in obj.items()
            if k not in ("apiVersion", "kind", "metadata") and not (k == "status" and rt.has_status)}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k in _TRACKED_META}
    if meta:
        body["metadata"] = meta
    return body


def _leaves(obj: dict, rt: ResourceType, subresource: str = "") -> dict:
    out: dict = {}
    _leaves_into(_trackable(obj, rt, subresource), (), out)
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
                        if (_list_key(field_name, it) or ()) and dict(_list_key(field_name, it)) == key), None)
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


def _apply_merge(target: dict, patch: dict) -> dict:
    """Server-side-apply merge: maps recursive, associative lists by key, other lists atomic, None removes."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict) and v:
            _apply_merge(target[k], v)
        elif _keyed(k, v) and _keyed(k, target.get(k)):
            current = target[k]
            for item in v:
                key = _list_key(k, item)
                idx = next((j for j, it in enumerate(current) if _list_key(k, it) == key), None)
                if idx is None:
                    current.append(copy.deepcopy(item))
                else:
                    _apply_merge(current[idx], item)
        else:
            target[k] = copy.deepcopy(v)
    return target


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        else:
            target[k] = _merge_patch(target.get(k), v)
    return target


def _strategic_merge_patch(target: Any, patch: Any, field_name: str = "") -> Any:
    """Strategic merge patch: merge patch, plus associative lists merged by key (``$patch: delete`` removes
    an item, ``$patch: replace`` replaces a map); other ``$`` directives are ignored."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            target.pop(k, None)
        elif isinstance(v, list) and v and all(_list_key(k, it) is not None for it in v) \
                and isinstance(target.get(k), list):
            current = target[k]
            for item in v:
                key = _list_key(k, item)
                idx = next((j for j, it in enumerate(current) if _list_key(k, it) == key), None)
                if item.get("$patch") == "delete":
                    if idx is not None:
                        del current[idx]
                elif idx is None:
                    current.append({a: b for a, b in item.items() if not a.startswith("$")})
                else:
                    current[idx] = _strategic_merge_patch(current[idx], item, k)
        else:
            target[k] = _strategic_merge_patch(target.get(k), v, k)
    return target


def _json_pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: dict, ops: list) -> dict:
    def walk(parts):
        cur = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur, parts[-1]

    def get(path):
        cur = doc
        for p in _json_pointer(path):
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    def add(path, value):
        parent, last = walk(_json_pointer(path))
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value

    def remove(path):
        parent, last = walk(_json_pointer(path))
        if isinstance(parent, list):
            return parent.pop(int(last))
        return parent.pop(last)

    if not isinstance(ops, list):
        raise _bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    for op in ops:
        try:
            kind, path = op["op"], op["path"]
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                get(path)
                parent, last = walk(_json_pointer(path))
                parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
            elif kind == "move":
                add(path, remove(op["from"]))
            elif kind == "copy":
                add(path, copy.deepcopy(get(op["from"])))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(422, f"the server rejected our request due to an error in our request: "
                                        f"testing value {path} failed", "Invalid")
            else:
                raise _bad_request(f"Unexpected kind: {kind}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, f"the server rejected our request due to an error in our request: {exc!r}",
                           "Invalid")
    return doc


# --------------------------------------------------------------------------------------------------------
# Validation and defaulting
# --------------------------------------------------------------------------------------------------------

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                  "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                  "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
              "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
              "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
_DNS1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
_STS_MUTABLE = ("replicas", "ordinals", "template", "updateStrategy", "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy", "minReadySeconds")


def _decode_checks(rt: ResourceType, obj: dict) -> None:
    """Type errors the real server reports while decoding (400), before validation."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise _bad_request(f"json: cannot unmarshal {type(meta).__name__} into Go struct field "
                           f"{rt.kind}.metadata of type v1.ObjectMeta")
    for section in ("labels", "annotations"):
        values = meta.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise _bad_request(f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{section} "
                               f"of type map[string]string")
        for k, v in values.items():
            if not isinstance(v, str):
                raise _bad_request(f"json: cannot unmarshal {type(v).__name__} into Go struct field "
                                   f"ObjectMeta.metadata.{section} of type string")
    if rt.kind in ("ConfigMap", "Secret"):
        for section in ("data", "stringData") if rt.kind == "Secret" else ("data",):
            for k, v in (obj.get(section) or {}).items():
                if not isinstance(v, str):
                    raise _bad_request(f"json: cannot unmarshal {type(v).__name__} into Go struct field "
                                       f"{rt.kind}.{section} of type {'[]uint8' if section == 'data' and rt.kind == 'Secret' else 'string'}")
        if rt.kind == "Secret":
            for k, v in (obj.get("data") or {}).items():
                try:
                    base64.b64decode(v, validate=True)
                except Exception:
                    raise _bad_request("illegal base64 data at input byte 0")


def _validate_pod_spec(spec: Any, prefix: str, causes: list, *, job: bool = False) -> None:
    if not isinstance(spec, dict):
        causes.append((prefix, "FieldValueRequired", "Required value"))
        return
    containers = spec.get("containers")
    if not containers:
        causes.append((f"{prefix}.containers", "FieldValueRequired", "Required value"))
    seen = set()
    for kind in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(kind) or []):
            p = f"{prefix}.{kind}[{i}]"
            name = c.get("name")
            if not name:
                causes.append((f"{p}.name", "FieldValueRequired", "Required value"))
            elif not _DNS_LABEL.match(name) or len(name) > 63:
                causes.append((f"{p}.name", "FieldValueInvalid", f'Invalid value: "{name}": {_LABEL_MSG}'))
            elif name in seen:
                causes.append((f"{p}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
            seen.add(name)
            if not c.get("image"):
                causes.append((f"{p}.image", "FieldValueRequired", "Required value"))
            for j, e in enumerate(c.get("env") or []):
                if not e.get("name"):
                    causes.append((f"{p}.env[{j}].name", "FieldValueRequired", "Required value"))
    rp = spec.get("restartPolicy")
    if job and rp not in ("OnFailure", "Never"):
        if rp in (None, "Always"):
            causes.append((f"{prefix}.restartPolicy", "FieldValueRequired",
                           'Required value: valid values: "OnFailure", "Never"'))
        else:
            causes.append((f"{prefix}.restartPolicy", "FieldValueNotSupported",
                           f'Unsupported value: "{rp}": supported values: "OnFailure", "Never"'))


def _validate(rt: ResourceType, obj: dict, old: dict | None) -> None:
    meta = obj["metadata"]
    name = meta.get("name", "")
    causes: list[tuple[str, str, str]] = []
    if rt.kind in ("Namespace",):
        if not _DNS_LABEL.match(name) or len(name) > 63:
            causes.append(("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": {_LABEL_MSG}'))
    elif rt.kind == "Service":
        if not _DNS_1035.match(name) or len(name) > 63:
            causes.append(("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": {_DNS1035_MSG}'))
    elif not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        causes.append(("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": {_SUBDOMAIN_MSG}'))
    for k, v in (meta.get("labels") or {}).items():
        if not _KEY_RE.match(k) or len(k.split("/")[-1]) > 63:
            causes.append(("metadata.labels", "FieldValueInvalid",
                           f'Invalid value: "{k}": name part must consist of alphanumeric characters, \'-\', '
                           f"'_' or '.', and must start and end with an alphanumeric character"))
        if len(v) > 63 or not _VALUE_RE.match(v):
            causes.append(("metadata.labels", "FieldValueInvalid",
                           f'Invalid value: "{v}": a valid label must be an empty string or consist of '
                           f"alphanumeric characters, '-', '_' or '.', and must start and end with an "
                           f"alphanumeric character"))
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    if rt.kind in ("Deployment", "StatefulSet", "ReplicaSet", "Job"):
        selector = spec.get("selector")
        template = spec.get("template") or {}
        tlabels = _labels(template)
        if not selector and rt.kind != "Job":
            causes.append(("spec.selector", "FieldValueRequired", "Required value"))
        elif selector and not _match_selector_dict(selector, tlabels):
            causes.append(("spec.template.metadata.labels", "FieldValueInvalid",
                           f"Invalid value: {json.dumps(tlabels)}: `selector` does not match template `labels`"))
        _validate_pod_spec(template.get("spec"), "spec.template.spec", causes, job=rt.kind == "Job")
        if rt.kind in ("Deployment", "StatefulSet") and (template.get("spec") or {}).get("restartPolicy") \
                not in (None, "Always"):
            causes.append(("spec.template.spec.restartPolicy", "FieldValueNotSupported",
                           f'Unsupported value: "{template["spec"]["restartPolicy"]}": supported values: "Always"'))
    elif rt.kind == "Pod":
        _validate_pod_spec(obj.get("spec"), "spec", causes)
    elif rt.kind == "Service":
        ports = spec.get("ports") or []
        if not ports and spec.get("clusterIP") != "None" and spec.get("type") != "ExternalName":
            causes.append(("spec.ports", "FieldValueRequired", "Required value"))
        for i, p in enumerate(ports):
            if len(ports) > 1 and not p.get("name"):
                causes.append((f"spec.ports[{i}].name", "FieldValueRequired", "Required value"))
            if not isinstance(p.get("port"), int) or not 0 < p["port"] < 65536:
                causes.append((f"spec.ports[{i}].port", "FieldValueInvalid",
                               f"Invalid value: {p.get('port')}: must be between 1 and 65535, inclusive"))
    elif rt.kind in ("ConfigMap", "Secret"):
        for section in ("data", "binaryData"):
            for k in (obj.get(section) or {}):
                if not _CONFIG_KEY.match(k):
                    causes.append((f"{section}[{k}]", "FieldValueInvalid",
                                   f'Invalid value: "{k}": a valid config key must consist of alphanumeric '
                                   f"characters, '-', '_' or '.'"))
    elif rt.kind == "PersistentVolumeClaim":
        if not spec.get("accessModes"):
            causes.append(("spec.accessModes", "FieldValueRequired", "Required value: at least 1 access mode is required"))
        if not _dig(spec, "resources.requests.storage"):
            causes.append(("spec.resources[storage]", "FieldValueRequired", "Required value"))
    if old is not None:
        _validate_update(rt, obj, old, causes)
    if causes:
        raise _invalid(rt, name, causes)


def _validate_update(rt: ResourceType, new: dict, old: dict, causes: list) -> None:
    ns, os_ = new.get("spec") or {}, old.get("spec") or {}
    if rt.kind == "StatefulSet":
        a = {k: v for k, v in ns.items() if k not in _STS_MUTABLE}
        b = {k: v for k, v in os_.items() if k not in _STS_MUTABLE}
        if a != b:
            causes.append(("spec", "FieldValueForbidden",
                           "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', "
                           "'template', 'updateStrategy', 'revisionHistoryLimit', "
                           "'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"))
    elif rt.kind in ("Deployment", "ReplicaSet", "Job"):
        if ns.get("selector") != os_.get("selector"):
            causes.append(("spec.selector", "FieldValueInvalid",
                           f"Invalid value: {json.dumps(ns.get('selector'))}: field is immutable"))
        if rt.kind == "Job":
            for f in ("template", "completions", "completionMode"):
                if ns.get(f) != os_.get(f) and not (f == "completions" and ns.get("completionMode") == "Indexed"):
                    causes.append((f"spec.{f}", "FieldValueInvalid",
                                   f"Invalid value: {json.dumps(ns.get(f))[:200]}: field is immutable"))
    elif rt.kind == "Service":
        if os_.get("clusterIP") and ns.get("clusterIP") and ns["clusterIP"] != os_["clusterIP"]:
            causes.append(("spec.clusterIPs[0]", "FieldValueInvalid",
                           f'Invalid value: ["{ns["clusterIP"]}"]: may not change once set'))
    elif rt.kind == "PersistentVolumeClaim":
        strip = lambda s: {k: (v if k != "resources" else {**v, "requests": None})
                           for k, v in s.items() if k not in ("volumeAttributesClassName",)}
        if strip(ns) != strip(os_):
            causes.append(("spec", "FieldValueForbidden",
                           "Forbidden: spec is immutable after creation except resources.requests and "
                           "volumeAttributesClassName for bound claims"))
    elif rt.kind == "Pod":
        def strip(spec):
            s = copy.deepcopy(spec)
            for kind in ("containers", "initContainers"):
                for c in s.get(kind) or []:
                    c.pop("image", None)
            for k in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "nodeName"):
                s.pop(k, None)
            return s
        if strip(ns) != strip(os_):
            causes.append(("spec", "FieldValueForbidden",
                           "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
                           "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only "
                           "additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be "
                           "set to 1 if it was previously negative)"))
    elif rt.kind in ("ConfigMap", "Secret") and old.get("immutable"):
        for section in ("data", "binaryData", "immutable"):
            if new.get(section) != old.get(section):
                causes.append((section if section != "immutable" else "immutable", "FieldValueForbidden",
                               f"Forbidden: field is immutable when `immutable` is set"))


def _default_container(c: dict) -> None:
    image = c.get("image") or ""
    tag = image.rsplit("/", 1)[-1]
    if "imagePullPolicy" not in c:
        c["imagePullPolicy"] = "Always" if ("@" not in tag and (":" not in tag or tag.endswith(":latest"))) \
            else "IfNotPresent"
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})
    for p in c.get("ports") or []:
        p.setdefault("protocol", "TCP")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        pr = c.get(probe)
        if isinstance(pr, dict):
            pr.setdefault("timeoutSeconds", 1)
            pr.setdefault("periodSeconds", 10)
            pr.setdefault("successThreshold", 1)
            pr.setdefault("failureThreshold", 3)
            if isinstance(pr.get("httpGet"), dict):
                pr["httpGet"].setdefault("scheme", "HTTP")


def _default_pod_spec(spec: dict, *, restart: str = "Always") -> None:
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", restart)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("terminationGracePeriodSeconds", 30)
    for kind in ("initContainers", "containers"):
        for c in spec.get(kind) or []:
            if isinstance(c, dict):
                _default_container(c)
    for v in spec.get("volumes") or []:
        if isinstance(v.get("configMap"), dict):
            v["configMap"].setdefault("defaultMode", 420)
        if isinstance(v.get("secret"), dict):
            v["secret"].setdefault("defaultMode", 420)


# --------------------------------------------------------------------------------------------------------
# Pod scenarios
# --------------------------------------------------------------------------------------------------------

@dataclass
class PodView:
    """What a scenario decides for a pod at a given tick; rendered into ``status`` by the emulator."""
    phase: str = "Pending"
    scheduled: bool = True
    unschedulable_message: str = ""
    # state of the affected container (the others follow ``others_running``)
    waiting: tuple | None = ("ContainerCreating", "")  # (reason, message)
    running: bool = False
    ready: bool = False
    terminated: tuple | None = None  # (reason, exitCode)
    restarts: int = 0
    last_terminated: tuple | None = None  # (reason, exitCode)
    others_running: bool = False
    others_ready: bool | None = None  # None: same as ``ready``
    sandbox: bool | None = None  # PodReadyToStartContainers; None: once any container started
    events: list = field(default_factory=list)  # (type, reason, message, source component)


def _first_container(pod: dict, params: dict) -> dict:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    want = params.get("container")
    for c in containers:
        if c.get("name") == want:
            return c
    return containers[0]


def _started_events(pod: dict) -> list:
    events = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        img, name = c.get("image", ""), c.get("name", "")
        events += [("Normal", "Pulling", f'Pulling image "{img}"', "kubelet"),
                   ("Normal", "Pulled", f'Successfully pulled image "{img}" in 1.2s (1.2s including waiting). '
                                        f"Image size: 1048576 bytes.", "kubelet"),
                   ("Normal", "Created", f"Created container: {name}", "kubelet"),
                   ("Normal", "Started", f"Started container {name}", "kubelet")]
    return events


def _scenario_ready(pod, age, elapsed, p) -> PodView:
    ticks = int(p.get("ticks", 2))
    start = int(p.get("start_ticks", max(ticks - 1, 0)))
    if age < start:
        return PodView()
    ready = age >= ticks and elapsed >= float(p.get("seconds", 0))
    return PodView(phase="Running", waiting=None, running=True, ready=ready, others_running=True,
                   events=_started_events(pod))


def _scenario_pending(pod, age, elapsed, p) -> PodView:
    return PodView()


def _scenario_running_not_ready(pod, age, elapsed, p) -> PodView:
    if age < int(p.get("start_ticks", 1)):
        return PodView()
    probe = p.get("probe", "Startup")
    msg = p.get("message") or (f'{probe} probe failed: Get "http://{pod.get("status", {}).get("podIP", "10.8.0.10")}'
                               f':8000/health": dial tcp: connect: connection refused')
    return PodView(phase="Running", waiting=None, running=True, ready=False, others_running=True,
                   events=_started_events(pod) + [("Warning", "Unhealthy", msg, "kubelet")])


def _scenario_unschedulable(pod, age, elapsed, p) -> PodView:
    msg = p.get("message") or ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are "
                               "available: 3 No preemption victims found for incoming pod.")
    events = [("Warning", "FailedScheduling", msg, "default-scheduler")]
    nts = p.get("not_trigger_scale_up")
    if nts:
        if nts is True:
            nts = "pod didn't trigger scale-up: 1 Insufficient nvidia.com/gpu"
        events.append(("Normal", "NotTriggerScaleUp", nts, "cluster-autoscaler"))
    if p.get("scale_up"):
        events.append(("Normal", "TriggeredScaleUp", p["scale_up"], "cluster-autoscaler"))
    return PodView(scheduled=False, unschedulable_message=msg, waiting=None, events=events)


def _scenario_image_pull(pod, age, elapsed, p) -> PodView:
    if age < int(p.get("ticks", 1)):
        return PodView()
    c = _first_container(pod, p)
    img = p.get("image") or c.get("image", "")
    err = p.get("error") or (f'rpc error: code = NotFound desc = failed to pull and unpack image "{img}": failed '
                             f'to resolve reference "{img}": {img}: not found')
    return PodView(waiting=("ImagePullBackOff", f'Back-off pulling image "{img}": ErrImagePull: {err}'), sandbox=True,
                   events=[("Normal", "Pulling", f'Pulling image "{img}"', "kubelet"),
                           ("Warning", "Failed", f'Failed to pull image "{img}": {err}', "kubelet"),
                           ("Warning", "Failed", "Error: ErrImagePull", "kubelet"),
                           ("Normal", "BackOff", f'Back-off pulling image "{img}"', "kubelet"),
                           ("Warning", "Failed", "Error: ImagePullBackOff", "kubelet")])


def _crash(pod, age, elapsed, p, reason: str, exit_code: int) -> PodView:
    ticks = int(p.get("ticks", 1))
    if age < ticks:
        if age < max(ticks - 1, 0) or ticks == 0:
            return PodView()
        return PodView(phase="Running", waiting=None, running=True, others_running=True,
                       events=_started_events(pod))
    c = _first_container(pod, p)
    restarts = int(p.get("restarts", 0)) or (1 + age - ticks)
    msg = f"back-off {min(10 * 2 ** (restarts - 1), 300)}s restarting failed container={c.get('name')} " \
          f"pod={pod['metadata']['name']}_{pod['metadata']['namespace']}({pod['metadata']['uid']})"
    ev = f"Back-off restarting failed container {c.get('name')} in pod " \
         f"{pod['metadata']['name']}_{pod['metadata']['namespace']}({pod['metadata']['uid']})"
    return PodView(phase="Running", waiting=("CrashLoopBackOff", msg), restarts=restarts,
                   last_terminated=(reason, exit_code), others_running=True, others_ready=True, sandbox=True,
                   events=_started_events(pod) + [("Warning", "BackOff", ev, "kubelet")])


def _scenario_crashloop(pod, age, elapsed, p) -> PodView:
    return _crash(pod, age, elapsed, p, p.get("reason", "Error"), int(p.get("exit_code", 1)))


def _scenario_oomkilled(pod, age, elapsed, p) -> PodView:
    return _crash(pod, age, elapsed, p, "OOMKilled", int(p.get("exit_code", 137)))


def _scenario_gcsfuse_denied(pod, age, elapsed, p) -> PodView:
    if age < int(p.get("ticks", 1)):
        return PodView()
    bucket = p.get("bucket", "model-bucket")
    volume = p.get("volume", "gcs-fuse-csi-ephemeral")
    who = p.get("principal", "Caller")
    msg = p.get("message") or (
        f'MountVolume.SetUp failed for volume "{volume}" : rpc error: code = PermissionDenied desc = failed to get '
        f'GCS bucket "{bucket}": googleapi: Error 403: {who} does not have storage.objects.list access to the '
        f"Google Cloud Storage bucket. Permission 'storage.objects.list' denied on resource (or it may not "
        f"exist)., forbidden")
    return PodView(events=[("Warning", "FailedMount", msg, "kubelet")])


def _scenario_succeeded(pod, age, elapsed, p) -> PodView:
    ticks = int(p.get("ticks", 2))
    if age < max(ticks - 1, 0):
        return PodView()
    if age < ticks:
        return PodView(phase="Running", waiting=None, running=True, ready=True, others_running=True,
                       events=_started_events(pod))
    code = int(p.get("exit_code", 0))
    return PodView(phase="Succeeded", waiting=None, terminated=("Completed", code), events=_started_events(pod))


def _scenario_failed(pod, age, elapsed, p) -> PodView:
    ticks = int(p.get("ticks", 2))
    if age < max(ticks - 1, 0):
        return PodView()
    if age < ticks:
        return PodView(phase="Running", waiting=None, running=True, ready=True, others_running=True,
                       events=_started_events(pod))
    return PodView(phase="Failed", waiting=None, terminated=(p.get("reason", "Error"), int(p.get("exit_code", 1))),
                   events=_started_events(pod))


SCENARIOS: dict[str, Callable[..., PodView]] = {
    "ready": _scenario_ready,                  # ticks=2, start_ticks=ticks-1, seconds=0
    "pending": _scenario_pending,              # scheduled, ContainerCreating forever
    "running_not_ready": _scenario_running_not_ready,  # start_ticks=1, probe="Startup", message=
    "unschedulable": _scenario_unschedulable,  # message=, not_trigger_scale_up=str|True, scale_up=str
    "image_pull": _scenario_image_pull,        # ticks=1, image=, error=, container=
    "crashloop": _scenario_crashloop,          # ticks=1, exit_code=1, reason="Error", restarts=, container=
    "oomkilled": _scenario_oomkilled,          # ticks=1, exit_code=137, restarts=, container=
    "gcsfuse_denied": _scenario_gcsfuse_denied,  # ticks=1, bucket=, volume=, principal=, message=
    "succeeded": _scenario_succeeded,          # ticks=2, exit_code=0 (default for Job pods)
    "failed": _scenario_failed,                # ticks=2, exit_code=1, reason="Error"
}


# --------------------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------------------

_FAULT_MESSAGES = {429: "Too many requests, please try again later.",
                   500: "Internal error occurred: etcdserver: leader changed",
                   503: "the server is currently unable to handle the request",
                   504: "the server was unable to return a response in the time allotted"}
LB_FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
INGRESS_FINALIZER = "networking.gke.io/ingress-finalizer-V2"
PV_FINALIZERS = ["kubernetes.io/pv-protection", "external-provisioner.volume.kubernetes.io/finalizer"]


@dataclass
class _Fault:
    method: str | None
    regex: Any
    status: int
    remaining: int
    message: str
    headers: dict
    dry_run: bool | None
    reset: bool


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict
    content_type: str
    body: Any = None
    status: int = 0
    user_agent: str = ""
    time: float = 0.0

    @property
    def dry_run(self) -> bool:
        return "dryRun" in self.query

    @property
    def field_manager(self) -> str | None:
        return self.query.get("fieldManager")


class _Journal:
    def __init__(self, limit: int = 20000):
        self.events: list = []  # (rv, type, kind, obj)
        self.limit = limit

    def add(self, rv: int, typ: str, kind: str, obj: dict) -> None:
        self.events.append((rv, typ, kind, copy.deepcopy(obj)))
        if len(self.events) > self.limit:
            del self.events[: len(self.events) - self.limit]

    def oldest(self) -> int:
        return self.events[0][0] if self.events else 0


class KubeEmulator(LoopbackAioServer):
    thread_label = "kube-emulator"

    """A Kubernetes API server on 127.0.0.1 with a tiny controller. See the module docstring."""

    def __init__(self, *, seed: int = 0, auto_tick: bool = True, tick_interval: float | None = None,
                 tokens: Iterable[str] | None = None, anonymous: bool = False, git_version: str = GIT_VERSION,
                 default_storage_class: str = "standard-rwo", namespace_delete_ticks: int = 1,
                 node_name: str = "gke-emulator-default-pool-1a2b3c4d-x0x0",
                 default_scenario: str = "ready", default_scenario_params: dict | None = None,
                 job_scenario: str = "succeeded", job_scenario_params: dict | None = None,
                 cloud_cleanup_ticks: int = 2, cloud_cleanup_s: float = 0.0):
        self.auto_tick = auto_tick
        # How long the cloud controllers take to delete a load balancer or a disk before they release
        # the finalizer that holds a deleted Service, Ingress or PersistentVolume: at least this many
        # ticks and this many seconds (real load balancers take minutes).
        self.cloud_cleanup_ticks = cloud_cleanup_ticks
        self.cloud_cleanup_s = cloud_cleanup_s
        self._cleanup_countdown: dict[str, tuple[int, float]] = {}
        self.removed_at: dict[tuple, float] = {}  # (kind, namespace, name) → time.time() it left the store
        self._faults: list[_Fault] = []
        self.tick_interval = tick_interval
        self.tokens = set(tokens) if tokens is not None else None  # None: any non-empty bearer token
        self.anonymous = anonymous  # accept requests without a token (kubectl sends none over plain http)
        self.git_version = git_version
        self.default_storage_class = default_storage_class
        self.namespace_delete_ticks = namespace_delete_ticks
        self.node_name = node_name
        self.default_scenario = (default_scenario, dict(default_scenario_params or {}))
        self.job_scenario = (job_scenario, dict(job_scenario_params or {}))
        self.watch_tick_s = 0.05
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []  # tracebacks of emulator bugs (answered as 500 InternalError)
        self.ticks = 0
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._store: dict[tuple, dict] = {}
        self._rv = 1000
        self._journal = _Journal()
        self._scripts: list[tuple] = []  # (target, scenario, params, id)
        self._script_ids = itertools.count(1)
        self._podstate: dict[str, dict] = {}
        self._logs: list[tuple] = []  # (target, container, previous, lines)
        self._pf_targets: list[tuple] = []  # (target, port, addr)
        self._ns_countdown: dict[str, int] = {}
        self._event_seq = itertools.count(1)
        self._ip_seq = itertools.count(10)
        self._node_port_seq = itertools.count(30080)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self._timer: asyncio.Task | None = None
        self._long_running: set = set()  # watch and port-forward handlers, cancelled on stop()
        self.port: int | None = None
        self.kubeconfig_path: str | None = None
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self._bootstrap_namespace(ns)

    # ---- lifecycle -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def _astart(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()
        if self.tick_interval:
            self._timer = asyncio.get_running_loop().create_task(self._tick_timer())

    async def _tick_timer(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            with self._lock:
                self.tick()

    async def _astop(self) -> None:
        if self._timer:
            self._timer.cancel()
        for task in list(self._long_running):
            task.cancel()
        if self._runner:
            await self._runner.cleanup()


    def write_kubeconfig(self, path: str | Path, context: str = "test", *, namespace: str = "default",
                         token: str = "emulator-token", cluster: str | None = None, merge: bool = False) -> str:
        """Write (or with ``merge=True`` add to) a kubeconfig whose ``context`` reaches this emulator."""
        path = Path(path)
        cluster = cluster or f"{context}-cluster"
        user = f"{context}-user"
        cfg = {"apiVersion": "v1", "kind": "Config", "preferences": {}, "clusters": [], "users": [],
               "contexts": []}
        if merge and path.exists():
            cfg = yaml.safe_load(path.read_text()) or cfg
            for section in ("clusters", "users", "contexts"):
                cfg[section] = [e for e in cfg.get(section) or [] if e.get("name") not in (cluster, user, context)]
        for section in ("clusters", "users", "contexts"):
            cfg.setdefault(section, [])
        cfg["clusters"].append({"name": cluster, "cluster": {"server": self.url}})
        cfg["users"].append({"name": user, "user": {"token": token}})
        cfg["contexts"].append({"name": context, "context": {"cluster": cluster, "user": user,
                                                             "namespace": namespace}})
        cfg["current-context"] = context
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.kubeconfig_path = str(path)
        return str(path)

    # ---- public helpers --------------------------------------------------------------------------------

    def objects(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict]:
        rt = _resolve_kind(kind)
        reqs = parse_label_selector(label_selector) if label_selector else []
        with self._lock:
            return [copy.deepcopy(o) for (k, ns, _), o in sorted(self._store.items())
                    if k == rt.kind and (namespace is None or ns == namespace)
                    and match_label_selector(reqs, _labels(o))]

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        rt = _resolve_kind(kind)
        with self._lock:
            obj = self._store.get(self._key(rt, namespace, name))
            return copy.deepcopy(obj) if obj else None  # noqa

    def seed(self, obj: dict, *, manage_pod: bool = False) -> dict:
        """Store an object as pre-existing cluster state (no request logged). Missing namespaces are created.
        Seeded pods keep their status unless ``manage_pod`` (then a scenario drives them)."""
        obj = copy.deepcopy(obj)
        rt = _resolve_kind(obj.get("kind", ""))
        with self._lock:
            meta = _meta(obj)
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            if rt.namespaced:
                meta.setdefault("namespace", "default")
                if ("Namespace", "", meta["namespace"]) not in self._store:
                    self._bootstrap_namespace(meta["namespace"])
            else:
                meta.pop("namespace", None)
            meta.setdefault("uid", self._uid())
            meta.setdefault("creationTimestamp", _now())
            if rt.has_generation:
                meta.setdefault("generation", 1)
            had_status = "status" in obj
            self._defaults(rt, obj)
            if rt.kind == "Pod" and not had_status:
                obj.pop("status", None)
            key = self._key(rt, meta.get("namespace"), meta["name"])
            self._put(key, obj, "ADDED" if key not in self._store else "MODIFIED")
            if rt.kind == "Pod" and manage_pod:
                self._track_pod(obj)
            return copy.deepcopy(obj)

    def remove(self, kind: str, namespace: str | None, name: str) -> bool:
        """Delete an object behind the API's back (as another actor would), without GC or logging."""
        rt = _resolve_kind(kind)
        with self._lock:
            key = self._key(rt, namespace, name)
            if key in self._store:
                self._remove(key)
                return True
            return False

    def writes(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.method != "GET" and not r.dry_run]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def script_pods(self, target: str, scenario: str, **params) -> None:
        """Drive pods matching ``target`` (a label selector such as ``app=vllm``, a pod name, or a workload
        name: pods owned by it or named ``<target>-...``) through ``scenario`` (see :data:`SCENARIOS`).
        The latest matching script wins; ticks count from when it starts applying to a pod."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; one of {sorted(SCENARIOS)}")
        with self._lock:
            self._scripts.append((target, scenario, dict(params), next(self._script_ids)))

    def clear_scripts(self) -> None:
        with self._lock:
            self._scripts.clear()

    def set_logs(self, target: str, lines: list[str] | str, *, container: str | None = None,
                 previous: bool = False) -> None:
        """Logs served for pods matching ``target`` (pod name, workload name/prefix or label selector)."""
        if isinstance(lines, str):
            lines = lines.splitlines()
        with self._lock:
            self._logs.append((target, container, previous, list(lines)))

    def set_port_forward_target(self, target: str, port: int, addr: tuple[str, int]) -> None:
        """Port-forwards to ``port`` of pods named ``target`` (or starting with it) relay to ``addr``,
        which must be ``("127.0.0.1", port)``."""
        if not _is_loopback_target(addr):
            raise ValueError(f"port-forward targets must be (\"{LOOPBACK}\", port), got {addr!r}")
        with self._lock:
            self._pf_targets.append((target, int(port), addr))

    def add_event(self, namespace: str, involved_object: dict | str, type: str, reason: str, message: str, *,
                  source: str = "kubelet", count: int = 1) -> dict:
        """Record an Event. ``involved_object``: an object dict, ``{"kind", "name"}``, or a name (looked up in
        the namespace, pods first)."""
        with self._lock:
            obj = self._find_involved(namespace, involved_object)
            return copy.deepcopy(self._emit(obj, type, reason, message, source, count=count))

    def inject(self, method: str | None, path_regex: str, status: int, times: int = 1, *,
               retry_after: float | None = None, message: str | None = None, dry_run: bool | None = None,
               reset: bool = False) -> None:
        """Answer the next ``times`` requests whose method matches (None: any) and whose path matches
        ``path_regex`` (re.search) with ``status`` and a Status body, before they take effect, as an
        overloaded or restarting API server does (``retry_after``: the Retry-After header, seconds).
        ``dry_run``: only requests with (True) or without (False) ``dryRun``. ``reset``: drop the
        connection instead of answering."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self._lock:
            self._faults.append(_Fault(method.upper() if method else None, re.compile(path_regex), status, times,
                                       message or _FAULT_MESSAGES.get(status, "injected fault"), headers,
                                       dry_run, reset))

    def faults_left(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def _take_fault(self, method: str, path: str, query: dict):
        with self._lock:
            for f in self._faults:
                if f.remaining <= 0 or (f.method and f.method != method) or not f.regex.search(path):
                    continue
                if f.dry_run is not None and f.dry_run != ("dryRun" in query):
                    continue
                f.remaining -= 1
                return f
        return None

    def tick(self, n: int = 1) -> None:
        """Run the controller ``n`` times."""
        with self._lock:
            for _ in range(n):
                self._tick()

    # ---- storage primitives ----------------------------------------------------------------------------

    def _uid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _suffix(self, n: int = 5) -> str:
        return "".join(self._rng.choice(SAFE_ALPHABET) for _ in range(n))

    @staticmethod
    def _key(rt: ResourceType, namespace: str | None, name: str) -> tuple:
        return (rt.kind, (namespace or "") if rt.namespaced else "", name)

    def _put(self, key: tuple, obj: dict, typ: str = "MODIFIED") -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._store[key] = obj
        self._journal.add(self._rv, typ, key[0], obj)
        return obj

    def _remove(self, key: tuple) -> dict | None:
        obj = self._store.pop(key, None)
        if obj is not None:
            self.removed_at[key] = time.time()
            self._rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._journal.add(self._rv, "DELETED", key[0], obj)
            self._podstate.pop(obj["metadata"].get("uid"), None)
        return obj

    def _set(self, key: tuple, new: dict) -> bool:
        """Controller write: store ``new`` if it differs from the stored object."""
        old = self._store.get(key)
        if old is None:
            return False
        cmp_new = dict(new, metadata={k: v for k, v in new["metadata"].items() if k != "resourceVersion"})
        cmp_old = dict(old, metadata={k: v for k, v in old["metadata"].items() if k != "resourceVersion"})
        if cmp_new == cmp_old:
            return False
        self._put(key, new)
        return True

    def _bootstrap_namespace(self, name: str) -> None:
        obj = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "uid": self._uid(), "creationTimestamp": _now()}}
        self._defaults(_BY_KIND["Namespace"], obj)
        obj["status"] = {"phase": "Active"}
        self._put(("Namespace", "", name), obj, "ADDED")

    # ---- HTTP ------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        raw = await request.read() if request.can_read_body else b""
        ctype = request.headers.get("Content-Type", "")
        rec = RecordedRequest(request.method, request.path, query, ctype.split(";")[0].strip(),
                              user_agent=request.headers.get("User-Agent", ""), time=time.time())
        try:
            rec.body = self._parse_body(raw, ctype) if raw else None
        except ApiError:
            rec.body = raw.decode("utf-8", "replace")
        with self._lock:
            self.requests.append(rec)
        try:
            auth = request.headers.get("Authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if (not token and not self.anonymous) or (token and self.tokens is not None
                                                       and token not in self.tokens):
                raise ApiError(401, "Unauthorized", "Unauthorized")
            fault = self._take_fault(request.method, request.path, query)
            if fault is not None:
                rec.status = fault.status
                if fault.reset:  # the connection drops before any answer (a control-plane blip)
                    request.transport.close()
                    return web.Response(status=fault.status)
                body = ApiError(fault.status, fault.message, _REASONS.get(fault.status)).status()
                return web.Response(status=fault.status, body=json.dumps(body).encode(),
                                    content_type="application/json", headers=fault.headers)
            if request.method == "GET" and (request.path.endswith("/portforward")
                                             or query.get("watch") in ("true", "1")):
                task = asyncio.current_task()
                self._long_running.add(task)
                try:
                    if request.path.endswith("/portforward"):
                        return await self._portforward(request, rec)
                    return await self._watch(request, rec, query)
                finally:
                    self._long_running.discard(task)
            with self._lock:
                status, payload = self._dispatch(request.method, request.path, query, request.headers, raw, ctype)
        except ApiError as exc:
            status, payload = exc.code, exc.status()
        except Exception as exc:  # pragma: no cover - an emulator bug: answer like the server would
            self.errors.append(traceback.format_exc())
            status, payload = 500, ApiError(500, f"emulator error: {exc!r}").status()
        rec.status = status
        if isinstance(payload, str):
            return web.Response(status=status, text=payload, content_type="text/plain")
        return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")

    @staticmethod
    def _parse_body(raw: bytes, ctype: str) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            pass
        if "yaml" in ctype:
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise _bad_request(f"error converting YAML to JSON: {exc}")
        raise _bad_request("the body of the request was in an unknown format - accepted media types include: "
                           "application/json, application/yaml")

    # ---- discovery -------------------------------------------------------------------------------------

    def _resource_list(self, group: str, version: str) -> dict:
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

    def _groups(self) -> list[dict]:
        out = []
        for g in dict.fromkeys(rt.group for rt in RESOURCE_TYPES if rt.group):
            versions = [{"groupVersion": f"{g}/{v}", "version": v}
                        for v in dict.fromkeys(rt.version for rt in RESOURCE_TYPES if rt.group == g)]
            out.append({"name": g, "versions": versions, "preferredVersion": dict(versions[0])})
        return out

    def _discovery(self, path: str) -> dict | None:
        p = path.rstrip("/")
        if p == "/version":
            minor = self.git_version.split(".")[1]
            return {"major": "1", "minor": minor, "emulationMajor": "1", "emulationMinor": minor,
                    "minCompatibilityMajor": "1", "minCompatibilityMinor": str(int(minor) - 1),
                    "gitVersion": self.git_version, "gitCommit": "0" * 40, "gitTreeState": "clean",
                    "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.6", "compiler": "gc",
                    "platform": "linux/amd64"}
        if p == "/api":
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                    "serverAddress": f"{LOOPBACK}:{self.port}"}]}
        if p == "/api/v1":
            return self._resource_list("", "v1")
        if p == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": self._groups()}
        m = re.fullmatch(r"/apis/([^/]+)(?:/([^/]+))?", p)
        if m:
            group = next((g for g in self._groups() if g["name"] == m.group(1)), None)
            if group is None:
                return None
            if m.group(2) is None:
                return dict(group, kind="APIGroup", apiVersion="v1")
            if any(v["version"] == m.group(2) for v in group["versions"]):
                return self._resource_list(m.group(1), m.group(2))
        return None

    # ---- routing ---------------------------------------------------------------------------------------

    def _route(self, path: str) -> tuple[ResourceType, str | None, str | None, str | None]:
        parts = [p for p in path.split("/") if p]
        not_found = ApiError(404, "the server could not find the requested resource", "NotFound", {})
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise not_found
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces" and not (group == "" and rest[2] in ("status", "finalize")):
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise not_found
        rt = _BY_GVR.get((group, version, rest[0]))
        if rt is None or (ns is not None and not rt.namespaced):
            raise not_found
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub and not ((sub == "status" and rt.has_status) or sub in (s[0] for s in rt.extra_subresources)):
            raise not_found
        if rt.namespaced and name is not None and ns is None:
            raise not_found
        return rt, ns, name, sub

    def _dispatch(self, method: str, path: str, query: dict, headers, raw: bytes, ctype: str):
        disc = self._discovery(path)
        if disc is not None:
            if method != "GET":
                raise ApiError(405, f"the server does not allow this method on the requested resource",
                               "MethodNotAllowed", {})
            return 200, disc
        rt, ns, name, sub = self._route(path)
        if self.auto_tick and method == "GET":
            self._tick()
        dry = query.get("dryRun")
        if dry is not None and dry != "All":
            raise _bad_request(f'Invalid dry run value: "{dry}"; supported values: "All"')
        dry = dry == "All"
        manager = query.get("fieldManager") or (headers.get("User-Agent") or "unknown").split("/")[0]
        if method == "GET":
            if name is None:
                return 200, self._list(rt, ns, query)
            if sub == "log":
                return self._pod_logs(ns, name, query)
            return 200, copy.deepcopy(self._get_or_404(rt, ns, name))
        if method == "POST":
            if name is not None:
                raise ApiError(405, "the server does not allow this method on the requested resource",
                               "MethodNotAllowed", {})
            body = self._parse_body(raw, ctype)
            return self._create(rt, ns, body, manager, dry)
        if method == "PUT" and name is not None:
            body = self._parse_body(raw, ctype)
            return self._replace(rt, ns, name, body, manager, dry, sub)
        if method == "PATCH" and name is not None:
            return self._patch(rt, ns, name, raw, ctype, query, manager, dry, sub)
        if method == "DELETE":
            body = self._parse_body(raw, ctype) if raw else {}
            if name is None:
                return self._delete_collection(rt, ns, query, body or {}, dry)
            return self._delete(rt, ns, name, query, body or {}, dry)
        raise ApiError(405, "the server does not allow this method on the requested resource",
                       "MethodNotAllowed", {})

    def _get_or_404(self, rt: ResourceType, ns: str | None, name: str) -> dict:
        obj = self._store.get(self._key(rt, ns, name))
        if obj is None:
            raise _not_found(rt, name)
        return obj

    # ---- reads -----------------------------------------------------------------------------------------

    def _select(self, rt: ResourceType, ns: str | None, query: dict) -> list[dict]:
        try:
            lreqs = parse_label_selector(query.get("labelSelector", ""))
        except ValueError as exc:
            raise _bad_request(str(exc))
        freqs = _parse_field_selector(rt, query.get("fieldSelector", ""))
        return [o for (k, ons, _), o in sorted(self._store.items())
                if k == rt.kind and (ns is None or ons == ns)
                and match_label_selector(lreqs, _labels(o)) and _match_fields(freqs, o)]

    def _list(self, rt: ResourceType, ns: str | None, query: dict) -> dict:
        items = self._select(rt, ns, query)
        meta: dict = {"resourceVersion": str(self._rv)}
        start = 0
        if query.get("continue"):
            try:
                start = int(base64.urlsafe_b64decode(query["continue"].encode()).decode())
            except Exception:
                raise _bad_request("continue key is not valid")
        limit = int(query.get("limit") or 0)
        if limit > 0:
            if start + limit < len(items):
                meta["continue"] = base64.urlsafe_b64encode(str(start + limit).encode()).decode()
                meta["remainingItemCount"] = len(items) - start - limit
            items = items[start:start + limit]
        elif start:
            items = items[start:]
        out = []
        for o in items:  # the API server does not set kind/apiVersion on list items
            o = copy.deepcopy(o)
            o.pop("kind", None)
            o.pop("apiVersion", None)
            out.append(o)
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": out}

    async def _watch(self, request: web.Request, rec: RecordedRequest, query: dict) -> web.StreamResponse:
        with self._lock:
            rt, ns, name, sub = self._route(request.path)
            if name is not None or sub is not None:
                raise ApiError(405, "the server does not allow this method on the requested resource",
                               "MethodNotAllowed", {})
            if self.auto_tick:
                self._tick()
            try:
                lreqs = parse_label_selector(query.get("labelSelector", ""))
            except ValueError as exc:
                raise _bad_request(str(exc))
            freqs = _parse_field_selector(rt, query.get("fieldSelector", ""))
            rv_param = query.get("resourceVersion") or ""
            pending = []
            if rv_param in ("", "0"):
                for o in self._select(rt, ns, query):
                    pending.append(("ADDED", o))
                cursor = self._rv
            else:
                cursor = int(rv_param)
                if cursor < self._journal.oldest() - 1:
                    pending.append(("ERROR", {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                              "status": "Failure", "message": "too old resource version",
                                              "reason": "Expired", "code": 410}))
        timeout = float(query.get("timeoutSeconds") or 1800)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                       "Transfer-Encoding": "chunked"})
        rec.status = 200
        await resp.prepare(request)
        deadline = time.monotonic() + timeout

        def matches(kind, obj):
            return (kind == rt.kind and (ns is None or obj["metadata"].get("namespace") == ns)
                    and match_label_selector(lreqs, _labels(obj)) and _match_fields(freqs, obj))

        try:
            while True:
                expired = any(t == "ERROR" for t, _ in pending)
                for typ, obj in pending:
                    await resp.write((json.dumps({"type": typ, "object": obj}) + "\n").encode())
                pending = []
                if expired or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(self.watch_tick_s)
                with self._lock:
                    if self.auto_tick:
                        self._tick()
                    for erv, typ, kind, obj in self._journal.events:
                        if erv > cursor and matches(kind, obj):
                            pending.append((typ, copy.deepcopy(obj)))
                    cursor = self._rv
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    # ---- writes ----------------------------------------------------------------------------------------

    def _check_body(self, rt: ResourceType, ns: str | None, name: str | None, body: Any, *, apply: bool = False):
        if not isinstance(body, dict):
            raise _bad_request(f"json: cannot unmarshal {type(body).__name__} into Go value of type "
                               f"struct {{ APIVersion string; Kind string }}")
        if apply and (not body.get("apiVersion") or not body.get("kind")):
            raise _bad_request(f"invalid object type: {body.get('apiVersion') or ''}, Kind={body.get('kind') or ''}")
        if body.get("apiVersion") and body["apiVersion"] != rt.api_version:
            raise _bad_request(f"the API version in the data ({body['apiVersion']}) does not match the expected "
                               f"API version ({rt.api_version})")
        if body.get("kind") and body["kind"] != rt.kind:
            raise _bad_request(f"the kind in the data ({body['kind']}) does not match the expected kind ({rt.kind})")
        meta = body.setdefault("metadata", {})
        _decode_checks(rt, body)
        if name is not None and meta.get("name") and meta["name"] != name:
            raise _bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        if rt.namespaced and meta.get("namespace") and ns and meta["namespace"] != ns:
            raise _bad_request("the namespace of the provided object does not match the namespace sent on the "
                               "request")

    def _check_namespace(self, rt: ResourceType, ns: str | None, name: str) -> None:
        if not rt.namespaced:
            return
        nsobj = self._store.get(("Namespace", "", ns or ""))
        if nsobj is None:
            raise ApiError(404, f'namespaces "{ns}" not found', "NotFound", {"name": ns, "kind": "namespaces"})
        if _terminating(nsobj):
            raise ApiError(403, f'{rt.resource} "{name}" is forbidden: unable to create new content in namespace '
                                f"{ns} because it is being terminated", "Forbidden",
                           _details(rt, name, causes=[{"reason": "NamespaceTerminating",
                                                       "message": f"namespace {ns} is being terminated",
                                                       "field": "metadata.namespace"}]))

    def _create(self, rt: ResourceType, ns: str | None, body: Any, manager: str, dry: bool, *,
                operation: str = "Update") -> tuple[int, dict]:
        self._check_body(rt, ns, None, body, apply=operation == "Apply")
        body = copy.deepcopy(body)
        meta = body["metadata"]
        if operation != "Apply" and meta.get("resourceVersion"):
            raise _bad_request("resourceVersion should not be set on objects to be created")
        name = meta.get("name")
        if not name:
            if meta.get("generateName"):
                name = meta["generateName"] + self._suffix()
            else:
                raise _invalid(rt, "", [("metadata.name", "FieldValueRequired",
                                         "Required value: name or generateName is required")])
        ns = (ns or meta.get("namespace")) if rt.namespaced else None
        key = self._key(rt, ns, name)
        if key in self._store:
            raise _already_exists(rt, name)
        self._check_namespace(rt, ns, name)
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        paths = set(_leaves(obj, rt))
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
        m["uid"] = self._uid()
        m["creationTimestamp"] = _now()
        if rt.has_generation:
            m["generation"] = 1
        if paths:
            m["managedFields"] = [self._mf_entry(rt, manager, operation, paths)]
        self._prepare(rt, obj)
        _validate(rt, obj, None)
        if dry:
            obj["metadata"].pop("resourceVersion", None)
            return 201, obj
        self._put(key, obj, "ADDED")
        if rt.kind == "Pod":
            self._track_pod(obj)
        return 201, copy.deepcopy(obj)

    def _mf_entry(self, rt: ResourceType, manager: str, operation: str, paths: Iterable[tuple],
                  subresource: str = "") -> dict:
        entry = {"manager": manager, "operation": operation, "apiVersion": rt.api_version, "time": _now(),
                 "fieldsType": "FieldsV1", "fieldsV1": _fields_v1(paths)}
        if subresource:
            entry["subresource"] = subresource
        return entry

    def _prepare(self, rt: ResourceType, obj: dict) -> None:
        """Kind-specific conversions and defaults applied on every create/update."""
        if rt.kind == "Secret" and "stringData" in obj:
            data = obj.setdefault("data", {}) or {}
            for k, v in (obj.pop("stringData") or {}).items():
                data[k] = base64.b64encode(v.encode()).decode()
            obj["data"] = data
        self._defaults(rt, obj)

    def _defaults(self, rt: ResourceType, obj: dict) -> None:
        meta = _meta(obj)
        spec = obj.get("spec")
        if rt.kind == "Namespace":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})
        elif rt.kind == "Secret":
            obj.setdefault("type", "Opaque")
        elif rt.kind == "Service" and isinstance(spec, dict):
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            if spec["type"] != "ExternalName":
                if not spec.get("clusterIP"):
                    n = next(self._ip_seq)
                    spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 2}"
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
                if spec["clusterIP"] != "None":
                    spec.setdefault("ipFamilies", ["IPv4"])
                    spec.setdefault("ipFamilyPolicy", "SingleStack")
                spec.setdefault("internalTrafficPolicy", "Cluster")
            for p in spec.get("ports") or []:
                p.setdefault("protocol", "TCP")
                if spec.get("clusterIP") != "None":
                    p.setdefault("targetPort", p.get("port"))
                if spec["type"] in ("NodePort", "LoadBalancer"):
                    p.setdefault("nodePort", next(self._node_port_seq))
            if spec["type"] in ("NodePort", "LoadBalancer"):
                spec.setdefault("externalTrafficPolicy", "Cluster")
            if spec["type"] == "LoadBalancer":
                spec.setdefault("allocateLoadBalancerNodePorts", True)
            obj.setdefault("status", {"loadBalancer": {}})
        elif rt.kind == "PersistentVolumeClaim" and isinstance(spec, dict):
            spec.setdefault("volumeMode", "Filesystem")
            if "storageClassName" not in spec and self.default_storage_class:
                spec["storageClassName"] = self.default_storage_class
            obj.setdefault("status", {"phase": "Pending"})
        elif rt.kind == "PersistentVolume" and isinstance(spec, dict):
            spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
            spec.setdefault("volumeMode", "Filesystem")
            obj.setdefault("status", {"phase": "Available"})
        elif rt.kind == "Pod" and isinstance(spec, dict):
            _default_pod_spec(spec)
            spec.setdefault("serviceAccountName", "default")
            spec.setdefault("serviceAccount", spec["serviceAccountName"])
            spec.setdefault("enableServiceLinks", True)
            spec.setdefault("priority", 0)
            obj.setdefault("status", {"phase": "Pending", "qosClass": self._qos(obj)})
        elif rt.kind in ("Deployment", "StatefulSet", "ReplicaSet") and isinstance(spec, dict):
            spec.setdefault("replicas", 1)
            if rt.kind != "ReplicaSet":
                spec.setdefault("revisionHistoryLimit", 10)
            _default_pod_spec((spec.get("template") or {}).get("spec"))
            if rt.kind == "Deployment":
                spec.setdefault("progressDeadlineSeconds", 600)
                strategy = spec.setdefault("strategy", {})
                strategy.setdefault("type", "RollingUpdate")
                if strategy["type"] == "RollingUpdate":
                    strategy.setdefault("rollingUpdate", {"maxSurge": "25%", "maxUnavailable": "25%"})
            if rt.kind == "StatefulSet":
                spec.setdefault("podManagementPolicy", "OrderedReady")
                us = spec.setdefault("updateStrategy", {})
                us.setdefault("type", "RollingUpdate")
                if us["type"] == "RollingUpdate":
                    us.setdefault("rollingUpdate", {"partition": 0})
                spec.setdefault("persistentVolumeClaimRetentionPolicy",
                                {"whenDeleted": "Retain", "whenScaled": "Retain"})
                for vct in spec.get("volumeClaimTemplates") or []:
                    vct.setdefault("apiVersion", "v1")
                    vct.setdefault("kind", "PersistentVolumeClaim")
                    vct.setdefault("metadata", {})
                    vct.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
                    vct.setdefault("status", {"phase": "Pending"})
            obj.setdefault("status", {})
            if rt.kind == "StatefulSet":
                obj["status"].setdefault("replicas", 0)
                obj["status"].setdefault("availableReplicas", 0)
        elif rt.kind == "Job" and isinstance(spec, dict):
            uid = meta.get("uid", "")
            spec.setdefault("parallelism", 1)
            spec.setdefault("completions", 1)
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
            auto = {"batch.kubernetes.io/controller-uid": uid}
            if uid and not spec.get("manualSelector"):
                spec.setdefault("selector", {"matchLabels": dict(auto)})
                tmeta = spec.setdefault("template", {}).setdefault("metadata", {})
                tl = tmeta.setdefault("labels", {})
                tl.setdefault("batch.kubernetes.io/controller-uid", uid)
                tl.setdefault("batch.kubernetes.io/job-name", meta.get("name", ""))
                tl.setdefault("controller-uid", uid)
                tl.setdefault("job-name", meta.get("name", ""))
            _default_pod_spec((spec.get("template") or {}).get("spec"), restart="Always")
            obj.setdefault("status", {})
        elif rt.kind == "Ingress":
            obj.setdefault("status", {"loadBalancer": {}})

    @staticmethod
    def _qos(pod: dict) -> str:
        any_res, guaranteed = False, True
        for c in (pod.get("spec") or {}).get("containers") or []:
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            if req or lim:
                any_res = True
            for r in ("cpu", "memory"):
                if r not in lim or (r in req and str(req[r]) != str(lim[r])):
                    guaranteed = False
        if not any_res:
            return "BestEffort"
        return "Guaranteed" if guaranteed else "Burstable"

    def _commit(self, rt: ResourceType, key: tuple, old: dict, new: dict, dry: bool) -> tuple[int, dict]:
        """Validate, default, bump generation, and store ``new`` unless it equals ``old``."""
        self._prepare(rt, new)
        _validate(rt, new, old)
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
        if _terminating(new) and not new["metadata"].get("finalizers"):
            self._remove(key)
            return 200, new
        self._put(key, new)
        return 200, copy.deepcopy(new)

    def _managers(self, obj: dict) -> list[dict]:
        out = []
        for e in (obj.get("metadata") or {}).get("managedFields") or []:
            out.append({"entry": e, "paths": _parse_fields_v1(e.get("fieldsV1") or {})})
        return out

    def _write_managers(self, obj: dict, managers: list[dict]) -> None:
        entries = []
        for m in managers:
            if not m["paths"]:
                continue
            e = dict(m["entry"])
            fv1 = _fields_v1(m["paths"])
            if e.get("fieldsV1") != fv1:
                e["fieldsV1"] = fv1
                e["time"] = _now()
            entries.append(e)
        if entries:
            obj["metadata"]["managedFields"] = entries
        else:
            obj["metadata"].pop("managedFields", None)

    def _record_update(self, rt: ResourceType, old: dict, new: dict, manager: str, subresource: str = "") -> None:
        """Non-apply writes: ``manager`` takes the fields it changed; removed fields lose their owners."""
        if subresource == "status":
            new["metadata"]["managedFields"] = copy.deepcopy(old["metadata"].get("managedFields") or [])
            if not new["metadata"]["managedFields"]:
                new["metadata"].pop("managedFields")
            return
        old_l, new_l = _leaves(old, rt), _leaves(new, rt)
        changed = {p for p, v in new_l.items() if p not in old_l or (v is not _ITEM and old_l[p] != v)}
        removed = set(old_l) - set(new_l)
        managers = self._managers(old)
        mine = None
        for m in managers:
            e = m["entry"]
            if e.get("manager") == manager and e.get("operation") == "Update" and not e.get("subresource"):
                mine = m
            else:
                m["paths"] -= changed | removed
        if mine is None and changed:
            mine = {"entry": self._mf_entry(rt, manager, "Update", ()), "paths": set()}
            managers.append(mine)
        if mine is not None:
            mine["paths"] = (mine["paths"] | changed) - removed
        self._write_managers(new, managers)

    def _replace(self, rt: ResourceType, ns: str | None, name: str, body: Any, manager: str, dry: bool,
                 sub: str | None) -> tuple[int, dict]:
        self._check_body(rt, ns, name, body)
        key = self._key(rt, ns, name)
        old = self._store.get(key)
        if old is None:
            raise _not_found(rt, name)
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise _conflict(rt, name)
        if sub == "status":
            new = copy.deepcopy(old)
            new["status"] = copy.deepcopy(body.get("status") or {})
        else:
            new = copy.deepcopy(body)
            new["apiVersion"], new["kind"] = rt.api_version, rt.kind
            self._keep_system_meta(rt, old, new)
            if rt.has_status:
                new["status"] = copy.deepcopy(old.get("status"))
                if new["status"] is None:
                    new.pop("status")
            self._prepare(rt, new)
        self._record_update(rt, old, new, manager, sub or "")
        return self._commit(rt, key, old, new, dry)

    @staticmethod
    def _keep_system_meta(rt: ResourceType, old: dict, new: dict) -> None:
        m, om = new.setdefault("metadata", {}), old["metadata"]
        for k in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp",
                  "deletionGracePeriodSeconds"):
            if k in om:
                m[k] = om[k]
            else:
                m.pop(k, None)
        if "managedFields" not in m and "managedFields" in om:
            m["managedFields"] = copy.deepcopy(om["managedFields"])

    def _patch(self, rt: ResourceType, ns: str | None, name: str, raw: bytes, ctype: str, query: dict,
               manager: str, dry: bool, sub: str | None) -> tuple[int, dict]:
        ctype = ctype.split(";")[0].strip()
        if ctype == "application/apply-patch+yaml":
            if not query.get("fieldManager"):
                raise ApiError(422, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is '
                                    "required for apply patch", "Invalid",
                               {"group": "meta.k8s.io", "kind": "PatchOptions",
                                "causes": [{"reason": "FieldValueRequired",
                                            "message": "Required value: is required for apply patch",
                                            "field": "fieldManager"}]})
            body = self._parse_body(raw, "yaml")
            force = (query.get("force") or "").lower() in ("1", "t", "true")  # Go's strconv.ParseBool
            return self._apply(rt, ns, name, body, query["fieldManager"], force, dry, sub)
        if query.get("force") is not None:
            raise ApiError(422, 'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be specified '
                                "for non-apply patch", "Invalid")
        if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                         "application/json-patch+json"):
            raise ApiError(415, f"the body of the request was in an unknown format - accepted media types "
                                f"include: application/json-patch+json, application/merge-patch+json, "
                                f"application/apply-patch+yaml", "UnsupportedMediaType")
        patch = self._parse_body(raw, ctype)
        key = self._key(rt, ns, name)
        old = self._store.get(key)
        if old is None:
            raise _not_found(rt, name)
        base = copy.deepcopy(old)
        if ctype == "application/json-patch+json":
            new = _json_patch(base, patch)
        elif not isinstance(patch, dict):
            raise _bad_request("json: cannot unmarshal array into Go value of type map[string]interface {}")
        elif ctype == "application/merge-patch+json":
            new = _merge_patch(base, patch)
        else:
            new = _strategic_merge_patch(base, patch)
        if not isinstance(new, dict):
            raise _bad_request("patch produced a non-object")
        self._check_body(rt, ns, name, new)
        prv = new["metadata"].get("resourceVersion")
        if prv and prv != old["metadata"]["resourceVersion"]:
            raise _conflict(rt, name)
        if sub == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            new["status"] = status
        else:
            self._keep_system_meta(rt, old, new)
            if rt.has_status:
                new["status"] = copy.deepcopy(old.get("status"))
                if new["status"] is None:
                    new.pop("status")
            new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        self._record_update(rt, old, new, manager, sub or "")
        return self._commit(rt, key, old, new, dry)

    def _apply(self, rt: ResourceType, ns: str | None, name: str, body: Any, manager: str, force: bool,
               dry: bool, sub: str | None) -> tuple[int, dict]:
        self._check_body(rt, ns, name, body, apply=True)
        key = self._key(rt, ns, name)
        old = self._store.get(key)
        if old is None:
            if sub:
                raise _not_found(rt, name)
            body = copy.deepcopy(body)
            body["metadata"]["name"] = name
            return self._create(rt, ns, body, manager, dry, operation="Apply")
        rv = body["metadata"].get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise _conflict(rt, name)
        sub = sub or ""
        applied = _trackable(body, rt, sub)
        new_l: dict = {}
        _leaves_into(applied, (), new_l)
        cur_l = _leaves(old, rt, sub)
        managers = self._managers(old)
        mine = None
        for m in managers:
            e = m["entry"]
            if e.get("manager") == manager and e.get("operation") == "Apply" and (e.get("subresource") or "") == sub:
                mine = m
        conflicts = []
        for p, v in new_l.items():
            if v is _ITEM or p not in cur_l or cur_l[p] == v:
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
                           "Conflict", _details(rt, name, causes=causes))
        if force:
            for _, p in conflicts:
                for m in managers:
                    if m is not mine:
                        m["paths"].discard(p)
        new = copy.deepcopy(old)
        if sub == "status":
            new["status"] = _apply_merge(new.get("status") or {}, applied.get("status") or {})
        else:
            merged_meta = _apply_merge(new["metadata"], {k: v for k, v in body["metadata"].items()
                                                         if k in _TRACKED_META})
            new["metadata"] = merged_meta
            _apply_merge(new, {k: v for k, v in applied.items() if k != "metadata"})
        prev = mine["paths"] if mine else set()
        others = set().union(*(m["paths"] for m in managers if m is not mine)) if managers else set()
        removed: list[tuple] = []
        for p in sorted(prev - set(new_l) - others, key=len):  # parents first; their children go with them
            if any(p[:len(r)] == r for r in removed):
                continue
            _remove_path(new, p)
            removed.append(p)
        if mine is None:
            mine = {"entry": self._mf_entry(rt, manager, "Apply", (), sub), "paths": set()}
            managers.append(mine)
        mine["paths"] = set(new_l)
        self._write_managers(new, managers)
        return self._commit(rt, key, old, new, dry)

    # ---- deletes ---------------------------------------------------------------------------------------

    def _delete(self, rt: ResourceType, ns: str | None, name: str, query: dict, opts: dict,
                dry: bool) -> tuple[int, dict]:
        key = self._key(rt, ns, name)
        obj = self._store.get(key)
        if obj is None:
            raise _not_found(rt, name)
        pre = (opts or {}).get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise _conflict(rt, name, f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                                      f"meta: {obj['metadata']['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise _conflict(rt, name, f"Precondition failed: ResourceVersion in precondition: "
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
            raise _bad_request(f'propagationPolicy: Unsupported value: "{policy}"')
        grace = query.get("gracePeriodSeconds", opts.get("gracePeriodSeconds"))
        new = copy.deepcopy(obj)
        m = new["metadata"]
        if _terminating(obj):
            return 200, copy.deepcopy(obj)
        if rt.kind == "Namespace":
            m["deletionTimestamp"] = _now()
            new["status"] = {"phase": "Terminating"}
            if dry:
                return 200, new
            self._ns_countdown[name] = self.namespace_delete_ticks
            self._put(key, new)
            return 200, copy.deepcopy(new)
        if policy == "Foreground" or m.get("finalizers") or (rt.kind == "Pod" and str(grace) != "0"):
            m["deletionTimestamp"] = _now()
            if rt.kind == "Pod":
                m["deletionGracePeriodSeconds"] = int(grace) if grace is not None else 30
            if policy == "Foreground":
                m["finalizers"] = list(dict.fromkeys((m.get("finalizers") or []) + ["foregroundDeletion"]))
            if policy == "Orphan" and not dry:
                self._orphan(obj["metadata"]["uid"])
            if dry:
                return 200, new
            self._put(key, new)
            return 200, copy.deepcopy(new)
        if dry:
            return 200, new if rt.delete_returns_object else self._success(rt, obj)
        if policy == "Orphan":
            self._orphan(obj["metadata"]["uid"])
        gone = self._remove(key)
        return 200, gone if rt.delete_returns_object else self._success(rt, obj)

    @staticmethod
    def _success(rt: ResourceType, obj: dict) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": _details(rt, obj["metadata"]["name"], uid=obj["metadata"]["uid"])}

    def _orphan(self, uid: str) -> None:
        for key, o in list(self._store.items()):
            refs = o["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                n = copy.deepcopy(o)
                n["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                if not n["metadata"]["ownerReferences"]:
                    del n["metadata"]["ownerReferences"]
                self._put(key, n)

    def _delete_collection(self, rt: ResourceType, ns: str | None, query: dict, opts: dict,
                           dry: bool) -> tuple[int, dict]:
        if "deletecollection" not in rt.verbs:
            raise ApiError(405, "the server does not allow this method on the requested resource",
                           "MethodNotAllowed", {})
        items = []
        for o in self._select(rt, ns, query):
            _, res = self._delete(rt, o["metadata"].get("namespace"), o["metadata"]["name"], query, opts, dry)
            items.append(res if res.get("kind") != "Status" else o)
        return 200, {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                     "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    # ---- logs ------------------------------------------------------------------------------------------

    def _matches_target(self, target: str, pod: dict) -> bool:
        name = pod["metadata"]["name"]
        if any(ch in target for ch in "=!") or " in " in target or " notin " in target:
            try:
                return match_label_selector(parse_label_selector(target), _labels(pod))
            except ValueError:
                return False
        if name == target or name.startswith(target + "-"):
            return True
        return target in self._owner_names(pod)

    def _owner_names(self, obj: dict) -> set[str]:
        names, seen = set(), 0
        cur = obj
        while cur is not None and seen < 4:
            seen += 1
            nxt = None
            for ref in cur["metadata"].get("ownerReferences") or []:
                names.add(ref.get("name"))
                rt = _BY_KIND.get(ref.get("kind"))
                if rt:
                    nxt = self._store.get(self._key(rt, cur["metadata"].get("namespace"), ref.get("name")))
            cur = nxt
        return names

    def _find_logs(self, pod: dict, container: str, previous: bool) -> list[str] | None:
        for target, c, prev, lines in reversed(self._logs):
            if prev == previous and (c is None or c == container) and self._matches_target(target, pod):
                return lines
        return None

    def _pod_logs(self, ns: str, name: str, query: dict) -> tuple[int, str]:
        pod = self._get_or_404(_BY_KIND["Pod"], ns, name)
        spec = pod.get("spec") or {}
        names = [c.get("name") for c in spec.get("containers") or []]
        all_names = names + [c.get("name") for c in spec.get("initContainers") or []]
        container = query.get("container")
        if not container:
            if len(names) != 1:
                raise _bad_request(f"a container name must be specified for pod {name}, choose one of: "
                                   f"[{' '.join(names)}]")
            container = names[0]
        elif container not in all_names:
            raise _bad_request(f"container {container} is not valid for pod {name}")
        previous = query.get("previous") in ("true", "1")
        lines = self._find_logs(pod, container, previous)
        cs = next((s for s in (pod.get("status") or {}).get("containerStatuses") or []
                   if s.get("name") == container), None)
        if previous:
            if lines is None:
                raise _bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
        elif cs is not None:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and not cs.get("restartCount") and not cs.get("lastState"):
                raise _bad_request(f'container "{container}" in pod "{name}" is waiting to start: '
                                   f'{waiting.get("reason", "ContainerCreating")}')
        lines = list(lines or [])
        if query.get("tailLines") not in (None, ""):
            n = int(query["tailLines"])
            lines = lines[-n:] if n > 0 else []
        if query.get("timestamps") in ("true", "1"):
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
            lines = [f"{stamp} {line}" for line in lines]
        text = "".join(line + "\n" for line in lines)
        if query.get("limitBytes"):
            text = text.encode()[: int(query["limitBytes"])].decode("utf-8", "ignore")
        return 200, text

    # ---- port-forward ----------------------------------------------------------------------------------

    def _pf_target(self, pod_name: str, port: int) -> tuple | None:
        best = None
        for target, p, addr in self._pf_targets:
            if p != port:
                continue
            if target == pod_name:
                return addr
            if pod_name.startswith(target) and (best is None or len(target) >= len(best[0])):
                best = (target, addr)
        return best[1] if best else None

    async def _portforward(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        try:
            with self._lock:
                rt, ns, name, sub = self._route(request.path)
                if self.auto_tick:
                    self._tick()
                pod = copy.deepcopy(self._get_or_404(rt, ns, name))
                phase = (pod.get("status") or {}).get("phase")
                if phase and phase != "Running":
                    raise _bad_request(f"pod {name} is not running. Current status={phase}")
                try:
                    ports = [int(p) for p in query.get("ports", "").split(",") if p.strip()]
                except ValueError:
                    raise _bad_request(f"invalid port {query.get('ports')!r}")
                if not ports:
                    raise _bad_request('query parameter "port" is required')
                targets = {p: self._pf_target(name, p) for p in ports}
        except ApiError as exc:
            rec.status = exc.code
            return web.json_response(exc.status(), status=exc.code)
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",), max_msg_size=0, autoping=True)
        if not ws.can_prepare(request).ok:
            rec.status = 400
            exc = _bad_request("Upgrade request required")
            return web.json_response(exc.status(), status=400)
        await ws.prepare(request)
        rec.status = 101
        writers: dict[int, asyncio.StreamWriter] = {}
        pumps: list[asyncio.Task] = []
        open_count = 0

        async def pump(idx: int, reader: asyncio.StreamReader):
            nonlocal open_count
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    await ws.send_bytes(bytes([2 * idx]) + data)
            except (ConnectionError, RuntimeError):
                pass
            finally:
                open_count -= 1
                if open_count <= 0 and not ws.closed:
                    await asyncio.sleep(0.05)  # let the client drain the last data frame first
                    await ws.close()

        for i, port in enumerate(ports):
            head = bytes([port & 0xFF, port >> 8])
            await ws.send_bytes(bytes([2 * i]) + head)
            await ws.send_bytes(bytes([2 * i + 1]) + head)
        for i, port in enumerate(ports):
            addr = targets[port]
            error = None
            if addr is None:
                error = "connect: connection refused"
            else:
                try:
                    reader, writer = await asyncio.open_connection(addr[0], addr[1])
                    writers[i] = writer
                    open_count += 1
                    pumps.append(asyncio.get_running_loop().create_task(pump(i, reader)))
                except OSError as exc:
                    error = f"connect: {exc.strerror or exc}".lower()
            if error:
                await ws.send_bytes(bytes([2 * i + 1]) + (
                    f"error forwarding port {port} to pod {pod['metadata']['uid']}, uid : failed to execute "
                    f"portforward in network namespace \"/var/run/netns/cni-emulator\": failed to connect to "
                    f"localhost:{port} inside namespace \"{pod['metadata']['uid']}\", IPv4: dial tcp4 "
                    f"127.0.0.1:{port}: {error} ").encode())
        if not writers:
            await asyncio.sleep(0.05)
            await ws.close()
            return ws
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and msg.data:
                    ch, data = msg.data[0], msg.data[1:]
                    w = writers.get(ch // 2)
                    if ch % 2 == 0 and w is not None and data:
                        w.write(data)
                        await w.drain()
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        except (ConnectionError, RuntimeError):
            pass
        finally:
            for w in writers.values():
                w.close()
            for t in pumps:
                t.cancel()
        return ws

    # ---- controller ------------------------------------------------------------------------------------

    def _tick(self) -> None:
        self.ticks += 1
        self._tick_terminating()
        self._tick_namespaces()
        self._gc()
        for kind, fn in (("Deployment", self._reconcile_deployment), ("ReplicaSet", self._reconcile_replicaset),
                         ("StatefulSet", self._reconcile_statefulset), ("Job", self._reconcile_job)):
            for key in [k for k in self._store if k[0] == kind]:
                if key in self._store and not _terminating(self._store[key]):
                    fn(key, self._store[key])
        for key in [k for k in self._store if k[0] == "PersistentVolumeClaim"]:
            self._bind_pvc(key)
        self._cloud_controllers()
        for key in [k for k in self._store if k[0] == "Pod"]:
            if key in self._store:
                self._advance_pod(key)
        for kind, fn in (("ReplicaSet", self._status_replicaset), ("Deployment", self._status_deployment),
                         ("StatefulSet", self._status_statefulset), ("Job", self._status_job)):
            for key in [k for k in self._store if k[0] == kind]:
                if key in self._store:
                    fn(key, self._store[key])

    def _tick_terminating(self) -> None:
        for key, o in list(self._store.items()):
            if key[0] == "Pod" and _terminating(o) and not o["metadata"].get("finalizers"):
                self._remove(key)

    def _tick_namespaces(self) -> None:
        for key, ns in list(self._store.items()):
            if key[0] != "Namespace":
                continue
            name = key[2]
            if _terminating(ns):
                left = self._ns_countdown.get(name, 0) - 1
                self._ns_countdown[name] = left
                for k in [k for k in self._store if k[1] == name and k[0] != "Namespace"]:
                    self._remove(k)
                if left <= 0:
                    self._ns_countdown.pop(name, None)
                    self._remove(key)
                continue
            if ("ServiceAccount", name, "default") not in self._store:
                self._put(("ServiceAccount", name, "default"),
                          {"apiVersion": "v1", "kind": "ServiceAccount",
                           "metadata": {"name": "default", "namespace": name, "uid": self._uid(),
                                        "creationTimestamp": _now()}}, "ADDED")
            if ("ConfigMap", name, "kube-root-ca.crt") not in self._store:
                self._put(("ConfigMap", name, "kube-root-ca.crt"),
                          {"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "kube-root-ca.crt", "namespace": name, "uid": self._uid(),
                                        "creationTimestamp": _now(),
                                        "annotations": {"kubernetes.io/description": "Contains a CA bundle that "
                                                        "can be used to verify the kube-apiserver when using "
                                                        "internal endpoints such as the internal service IP or "
                                                        "kubernetes.default.svc. No other usage is guaranteed "
                                                        "across distributions of Kubernetes clusters."}},
                           "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nZW11bGF0b3I=\n-----END CERTIFICATE-----\n"}},
                          "ADDED")

    def _gc(self) -> None:
        changed = True
        while changed:
            changed = False
            uids = {o["metadata"].get("uid") for o in self._store.values()}
            foreground = {o["metadata"]["uid"] for o in self._store.values()
                          if _terminating(o) and "foregroundDeletion" in (o["metadata"].get("finalizers") or [])}
            for key, o in list(self._store.items()):
                if key not in self._store:
                    continue
                refs = o["metadata"].get("ownerReferences") or []
                if refs and (not any(r.get("uid") in uids for r in refs)
                             or any(r.get("uid") in foreground for r in refs)):
                    self._remove(key)
                    changed = True
            for key, o in list(self._store.items()):
                if o["metadata"].get("uid") in foreground:
                    uid = o["metadata"]["uid"]
                    if not any(r.get("uid") == uid for x in self._store.values()
                               for r in x["metadata"].get("ownerReferences") or []):
                        fins = [f for f in o["metadata"]["finalizers"] if f != "foregroundDeletion"]
                        if fins:
                            n = copy.deepcopy(o)
                            n["metadata"]["finalizers"] = fins
                            self._put(key, n)
                        else:
                            self._remove(key)
                        changed = True

        self._release_pvc_protection()

    def _release_pvc_protection(self) -> None:
        """The pvc-protection controller: a terminating claim no pod uses loses its finalizer and goes."""
        for key, o in list(self._store.items()):
            fins = o["metadata"].get("finalizers") or []
            if key[0] != "PersistentVolumeClaim" or not _terminating(o) or "kubernetes.io/pvc-protection" not in fins:
                continue
            in_use = any(
                k[0] == "Pod" and k[1] == key[1]
                and any((v.get("persistentVolumeClaim") or {}).get("claimName") == key[2]
                        for v in (p.get("spec") or {}).get("volumes") or [])
                for k, p in self._store.items())
            if in_use:
                continue
            rest = [f for f in fins if f != "kubernetes.io/pvc-protection"]
            if rest:
                n = copy.deepcopy(o)
                n["metadata"]["finalizers"] = rest
                self._put(key, n)
            else:
                self._remove(key)

    def _cloud_controllers(self) -> None:
        """What GKE's controllers do with cloud resources: a Service of type LoadBalancer (and a gce
        Ingress) gets a load balancer and a finalizer; a dynamically provisioned volume gets a disk.
        Deleting them releases the finalizer only after the cloud resource is gone (a few ticks)."""
        for key, obj in list(self._store.items()):
            kind = key[0]
            if kind == "Service":
                wants = ((obj.get("spec") or {}).get("type") == "LoadBalancer", LB_FINALIZER)
            elif kind == "Ingress":
                cls = (obj.get("spec") or {}).get("ingressClassName") or \
                    (obj["metadata"].get("annotations") or {}).get("kubernetes.io/ingress.class") or "gce"
                wants = (cls in ("gce", "gce-internal"), INGRESS_FINALIZER)
            elif kind == "PersistentVolume":
                self._reclaim_volume(key, obj)
                continue
            else:
                continue
            has_lb, finalizer = wants
            fins = obj["metadata"].get("finalizers") or []
            if _terminating(obj):
                if finalizer in fins:
                    self._release_after_cleanup(key, obj, finalizer)
            elif has_lb and finalizer not in fins:
                n = copy.deepcopy(obj)
                n["metadata"]["finalizers"] = fins + [finalizer]
                ip = f"34.118.{next(self._ip_seq) % 250}.{len(self._store) % 250 + 1}"
                n["status"] = {**(n.get("status") or {}), "loadBalancer": {"ingress": [{"ip": ip}]}}
                self._put(key, n)

    def _reclaim_volume(self, key: tuple, pv: dict) -> None:
        """A provisioned volume whose claim is gone: its disk is deleted (reclaim policy Delete), then it."""
        if not any(f in (pv["metadata"].get("finalizers") or []) for f in PV_FINALIZERS):
            return  # not one the provisioner made
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        claim = self._store.get(("PersistentVolumeClaim", ref.get("namespace", ""), ref.get("name", "")))
        if claim is not None and claim["metadata"].get("uid") == ref.get("uid"):
            return
        if (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") != "Delete":
            return
        if not _terminating(pv):
            n = copy.deepcopy(pv)
            n["metadata"]["deletionTimestamp"] = _now()
            n["status"] = {"phase": "Released"}
            self._put(key, n)
            return
        for finalizer in list(pv["metadata"].get("finalizers") or []):
            if finalizer in PV_FINALIZERS:
                pv = self._release_after_cleanup(key, pv, finalizer)
                if pv is None:
                    return

    def _release_after_cleanup(self, key: tuple, obj: dict, finalizer: str) -> dict | None:
        """Count the cloud clean-up down; then drop ``finalizer`` (and the object, if it was the last)."""
        uid = obj["metadata"]["uid"] + finalizer
        ticks, started = self._cleanup_countdown.setdefault(uid, (self.cloud_cleanup_ticks, time.monotonic()))
        self._cleanup_countdown[uid] = (ticks - 1, started)
        if ticks - 1 > 0 or time.monotonic() - started < self.cloud_cleanup_s:
            return obj
        self._cleanup_countdown.pop(uid, None)
        rest = [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer]
        if rest:
            n = copy.deepcopy(obj)
            n["metadata"]["finalizers"] = rest
            return self._put(key, n)
        self._remove(key)
        return None

    def _owned(self, kind: str, ns: str, owner_uid: str) -> list[tuple[tuple, dict]]:
        return [(k, o) for k, o in sorted(self._store.items())
                if k[0] == kind and k[1] == ns and _controller_uid(o) == owner_uid]

    def _new_pod(self, owner: dict, name: str, template: dict, extra_labels: dict, **spec_extra) -> dict:
        ns = owner["metadata"]["namespace"]
        tmeta = template.get("metadata") or {}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "uid": self._uid(), "creationTimestamp": _now(),
                            "labels": {**(tmeta.get("labels") or {}), **extra_labels},
                            "ownerReferences": [_owner_ref(owner)]},
               "spec": copy.deepcopy(template.get("spec") or {})}
        if tmeta.get("annotations"):
            pod["metadata"]["annotations"] = dict(tmeta["annotations"])
        if owner["kind"] == "Job":
            pod["metadata"]["generateName"] = owner["metadata"]["name"] + "-"
        pod["spec"].update(spec_extra)
        self._defaults(_BY_KIND["Pod"], pod)
        self._put(("Pod", ns, name), pod, "ADDED")
        self._track_pod(pod)
        verb = {"StatefulSet": f"create Pod {name} in StatefulSet {owner['metadata']['name']} successful",
                "ReplicaSet": f"Created pod: {name}", "Job": f"Created pod: {name}"}[owner["kind"]]
        source = {"StatefulSet": "statefulset-controller", "ReplicaSet": "replicaset-controller",
                  "Job": "job-controller"}[owner["kind"]]
        self._emit(owner, "Normal", "SuccessfulCreate", verb, source)
        return pod

    def _track_pod(self, pod: dict) -> None:
        self._podstate[pod["metadata"]["uid"]] = {"age": -1, "sid": None, "since": 0, "since_t": time.monotonic(),
                                                  "emitted": set(), "times": {}}

    def _delete_pod(self, key: tuple) -> None:
        pod = self._store.get(key)
        if pod is None or _terminating(pod):
            return
        n = copy.deepcopy(pod)
        n["metadata"]["deletionTimestamp"] = _now()
        n["metadata"]["deletionGracePeriodSeconds"] = 30
        self._put(key, n)

    def _reconcile_deployment(self, key: tuple, d: dict) -> None:
        spec = d.get("spec") or {}
        ns, name, uid = key[1], key[2], d["metadata"]["uid"]
        template = spec.get("template") or {}
        h = _safe_hash(template)
        rs_name = f"{name}-{h}"
        replicas = int(spec.get("replicas", 1))
        rs_key = ("ReplicaSet", ns, rs_name)
        owned = self._owned("ReplicaSet", ns, uid)
        if rs_key not in self._store:
            tmpl = copy.deepcopy(template)
            tmpl.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = h
            sel = copy.deepcopy(spec.get("selector") or {})
            sel.setdefault("matchLabels", {})["pod-template-hash"] = h
            rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                  "metadata": {"name": rs_name, "namespace": ns, "uid": self._uid(), "creationTimestamp": _now(),
                               "generation": 1, "labels": dict(tmpl["metadata"]["labels"]),
                               "annotations": {"deployment.kubernetes.io/desired-replicas": str(replicas),
                                               "deployment.kubernetes.io/max-replicas": str(replicas + 1),
                                               "deployment.kubernetes.io/revision": str(len(owned) + 1)},
                               "ownerReferences": [_owner_ref(d)]},
                  "spec": {"replicas": replicas, "selector": sel, "template": tmpl}, "status": {"replicas": 0}}
            self._defaults(_BY_KIND["ReplicaSet"], rs)
            self._put(rs_key, rs, "ADDED")
            self._emit(d, "Normal", "ScalingReplicaSet", f"Scaled up replica set {rs_name} from 0 to {replicas}",
                       "deployment-controller")
        else:
            rs = self._store[rs_key]
            if rs["spec"].get("replicas") != replicas:
                n = copy.deepcopy(rs)
                n["spec"]["replicas"] = replicas
                n["metadata"]["generation"] = int(n["metadata"].get("generation", 1)) + 1
                self._put(rs_key, n)
        for okey, o in owned:
            if okey != rs_key and o["spec"].get("replicas"):
                n = copy.deepcopy(o)
                self._emit(d, "Normal", "ScalingReplicaSet",
                           f"Scaled down replica set {okey[2]} from {o['spec']['replicas']} to 0",
                           "deployment-controller")
                n["spec"]["replicas"] = 0
                n["metadata"]["generation"] = int(n["metadata"].get("generation", 1)) + 1
                self._put(okey, n)

    def _reconcile_replicaset(self, key: tuple, rs: dict) -> None:
        ns, name, uid = key[1], key[2], rs["metadata"]["uid"]
        replicas = int((rs.get("spec") or {}).get("replicas", 1))
        pods = [(k, p) for k, p in self._owned("Pod", ns, uid) if not _terminating(p)]
        h = _labels(rs).get("pod-template-hash") or _safe_hash(rs["spec"].get("template") or {})
        for _ in range(replicas - len(pods)):
            self._new_pod(rs, f"{name}-{self._suffix()}", rs["spec"].get("template") or {},
                          {"pod-template-hash": h})
        if len(pods) > replicas:
            for k, _ in sorted(pods, key=lambda kp: kp[1]["metadata"]["creationTimestamp"],
                               reverse=True)[: len(pods) - replicas]:
                self._delete_pod(k)

    def _reconcile_statefulset(self, key: tuple, sts: dict) -> None:
        spec = sts.get("spec") or {}
        ns, name, uid = key[1], key[2], sts["metadata"]["uid"]
        replicas = int(spec.get("replicas", 1))
        rev = f"{name}-{_safe_hash(spec.get('template') or {})}"
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        pods: dict[int, tuple] = {}
        for k, p in self._owned("Pod", ns, uid):
            suffix = k[2][len(name) + 1:]
            if k[2].startswith(name + "-") and suffix.isdigit():
                pods[int(suffix)] = (k, p)
        for i in range(replicas):
            if i in pods:
                if ordered and not (_is_ready(pods[i][1]) and not _terminating(pods[i][1])):
                    break
                continue
            self._ensure_claims(sts, i)
            podname = f"{name}-{i}"
            volumes = [v for v in (spec.get("template") or {}).get("spec", {}).get("volumes") or []]
            for vct in spec.get("volumeClaimTemplates") or []:
                vname = (vct.get("metadata") or {}).get("name")
                volumes = [v for v in volumes if v.get("name") != vname]
                volumes.append({"name": vname, "persistentVolumeClaim": {"claimName": f"{vname}-{podname}"}})
            extra = {"hostname": podname}
            if spec.get("serviceName"):
                extra["subdomain"] = spec["serviceName"]
            if volumes:
                extra["volumes"] = volumes
            self._new_pod(sts, podname, spec.get("template") or {},
                          {"controller-revision-hash": rev, "statefulset.kubernetes.io/pod-name": podname,
                           "apps.kubernetes.io/pod-index": str(i)}, **extra)
            if ordered:
                break
        extra_pods = sorted((i for i in pods if i >= replicas), reverse=True)
        for i in extra_pods[:1] if ordered else extra_pods:
            self._delete_pod(pods[i][0])
            if (spec.get("persistentVolumeClaimRetentionPolicy") or {}).get("whenScaled") == "Delete":
                for vct in spec.get("volumeClaimTemplates") or []:
                    ck = ("PersistentVolumeClaim", ns, f"{(vct.get('metadata') or {}).get('name')}-{name}-{i}")
                    if ck in self._store:
                        self._remove(ck)
        if (spec.get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate":
            live = {i: kp for i, kp in pods.items() if i < replicas}
            if live and all(not _terminating(p) for _, p in live.values()):
                outdated = [i for i, (_, p) in live.items() if _labels(p).get("controller-revision-hash") != rev]
                partition = int(((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition") or 0)
                outdated = [i for i in outdated if i >= partition]
                current_ok = all(_is_ready(p) for i, (_, p) in live.items() if i not in outdated)
                if outdated and current_ok:
                    self._delete_pod(live[max(outdated)][0])

    def _ensure_claims(self, sts: dict, i: int) -> None:
        spec = sts.get("spec") or {}
        ns, name = sts["metadata"]["namespace"], sts["metadata"]["name"]
        policy = spec.get("persistentVolumeClaimRetentionPolicy") or {}
        for vct in spec.get("volumeClaimTemplates") or []:
            vmeta = vct.get("metadata") or {}
            cname = f"{vmeta.get('name')}-{name}-{i}"
            ckey = ("PersistentVolumeClaim", ns, cname)
            if ckey in self._store:
                continue
            labels = dict(vmeta.get("labels") or {})
            labels.update(((spec.get("selector") or {}).get("matchLabels") or {}))
            pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": cname, "namespace": ns, "uid": self._uid(), "creationTimestamp": _now(),
                                "labels": labels, "finalizers": ["kubernetes.io/pvc-protection"]},
                   "spec": copy.deepcopy(vct.get("spec") or {})}
            if vmeta.get("annotations"):
                pvc["metadata"]["annotations"] = dict(vmeta["annotations"])
            if policy.get("whenDeleted") == "Delete":
                ref = _owner_ref(sts)
                ref.pop("controller")
                pvc["metadata"]["ownerReferences"] = [ref]
            self._defaults(_BY_KIND["PersistentVolumeClaim"], pvc)
            self._put(ckey, pvc, "ADDED")
            self._emit(sts, "Normal", "SuccessfulCreate",
                       f"create Claim {cname} Pod {name}-{i} in StatefulSet {name} success", "statefulset-controller")

    def _bind_pvc(self, key: tuple) -> None:
        pvc = self._store[key]
        if (pvc.get("status") or {}).get("phase") == "Bound" or _terminating(pvc):
            return
        n = copy.deepcopy(pvc)
        spec = n.setdefault("spec", {})
        if not spec.get("volumeName") and spec.get("storageClassName"):
            self._provision_volume(n)  # dynamic provisioning: a disk and its PersistentVolume
        spec.setdefault("volumeName", f"pvc-{n['metadata']['uid']}")
        n["status"] = {"phase": "Bound", "accessModes": list(spec.get("accessModes") or []),
                       "capacity": {"storage": _dig(spec, "resources.requests.storage") or "1Gi"}}
        ann = n["metadata"].setdefault("annotations", {})
        ann.setdefault("pv.kubernetes.io/bind-completed", "yes")
        ann.setdefault("pv.kubernetes.io/bound-by-controller", "yes")
        self._set(key, n)

    def _provision_volume(self, pvc: dict) -> None:
        meta, spec = pvc["metadata"], pvc["spec"]
        name = f"pvc-{meta['uid']}"
        if ("PersistentVolume", "", name) in self._store:
            return
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": name, "uid": self._uid(), "creationTimestamp": _now(),
                           "finalizers": list(PV_FINALIZERS),
                           "annotations": {"pv.kubernetes.io/provisioned-by": "pd.csi.storage.gke.io"}},
              "spec": {"accessModes": list(spec.get("accessModes") or []),
                       "capacity": {"storage": _dig(spec, "resources.requests.storage") or "1Gi"},
                       "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": meta["name"],
                                    "namespace": meta["namespace"], "uid": meta["uid"]},
                       "csi": {"driver": "pd.csi.storage.gke.io",
                               "volumeHandle": f"projects/emulator/zones/us-central1-a/disks/{name}"},
                       "persistentVolumeReclaimPolicy": "Delete", "storageClassName": spec["storageClassName"],
                       "volumeMode": spec.get("volumeMode", "Filesystem")},
              "status": {"phase": "Bound"}}
        self._put(("PersistentVolume", "", name), pv, "ADDED")

    def _reconcile_job(self, key: tuple, job: dict) -> None:
        spec = job.get("spec") or {}
        status = job.get("status") or {}
        if any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in status.get("conditions") or []) or spec.get("suspend"):
            return
        ns, uid = key[1], job["metadata"]["uid"]
        pods = [p for _, p in self._owned("Pod", ns, uid)]
        active = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                  and not _terminating(p)]
        succeeded = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded")
        failed = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
        if succeeded >= int(spec.get("completions", 1)) or failed > int(spec.get("backoffLimit", 6)):
            return
        want = min(int(spec.get("parallelism", 1)), int(spec.get("completions", 1)) - succeeded)
        name = key[2]
        labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                  "controller-uid": uid, "job-name": name}
        for _ in range(want - len(active)):
            self._new_pod(job, f"{name}-{self._suffix()}", spec.get("template") or {}, labels)

    # ---- pods ------------------------------------------------------------------------------------------

    def _script_for(self, pod: dict) -> tuple:
        for target, scenario, params, sid in reversed(self._scripts):
            if self._matches_target(target, pod):
                return sid, scenario, params
        owner_kinds = {r.get("kind") for r in pod["metadata"].get("ownerReferences") or []}
        if "Job" in owner_kinds:
            return ("job-default",) + self.job_scenario
        return ("default",) + self.default_scenario

    def _advance_pod(self, key: tuple) -> None:
        pod = self._store[key]
        st = self._podstate.get(pod["metadata"]["uid"])
        if st is None or _terminating(pod):
            return
        st["age"] += 1
        sid, scenario, params = self._script_for(pod)
        if st["sid"] != sid:
            st["sid"], st["since"], st["since_t"] = sid, st["age"], time.monotonic()
        view = SCENARIOS[scenario](pod, st["age"] - st["since"], time.monotonic() - st["since_t"], params)
        new = copy.deepcopy(pod)
        if view.scheduled and not new["spec"].get("nodeName"):
            new["spec"]["nodeName"] = self.node_name
            self._emit(pod, "Normal", "Scheduled",
                       f"Successfully assigned {key[1]}/{key[2]} to {self.node_name}", "default-scheduler")
        new["status"] = self._render_status(new, view, st, params)
        self._set(key, new)
        for typ, reason, message, source in view.events:
            sig = (typ, reason, message)
            if sig not in st["emitted"]:
                st["emitted"].add(sig)
                self._emit(self._store[key], typ, reason, message, source)

    def _stamp(self, st: dict, name: str) -> str:
        return st["times"].setdefault(name, _now())

    def _render_status(self, pod: dict, v: PodView, st: dict, params: dict) -> dict:
        old = pod.get("status") or {}
        containers = (pod.get("spec") or {}).get("containers") or []
        target = _first_container(pod, params).get("name")
        finished = v.phase in ("Succeeded", "Failed")
        cstatuses, all_ready, any_started = [], True, False
        for c in containers:
            cname = c.get("name")
            mine = cname == target
            cs = {"name": cname, "image": c.get("image", ""), "imageID": "", "ready": False,
                  "restartCount": v.restarts if mine else 0, "started": False, "state": {}, "lastState": {}}
            if finished:
                reason, code = v.terminated if (mine and v.terminated) else ("Completed", 0)
                cs["state"] = {"terminated": {"exitCode": code, "reason": reason,
                                              "startedAt": self._stamp(st, f"{cname}:started"),
                                              "finishedAt": self._stamp(st, f"{cname}:finished"),
                                              "containerID": self._cid(pod, cname)}}
            elif mine and v.waiting:
                reason, message = v.waiting
                cs["state"] = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
            elif (mine and v.running) or (not mine and v.others_running):
                cs["state"] = {"running": {"startedAt": self._stamp(st, f"{cname}:started")}}
                cs["started"] = True
                cs["ready"] = v.ready if (mine or v.others_ready is None) else v.others_ready
            else:
                cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
            ran = cs["started"] or finished or (mine and v.restarts > 0)
            any_started = any_started or ran
            if ran:
                image = c.get("image", "")
                cs["imageID"] = f"{image.split('@')[0].rsplit(':', 1)[0]}@sha256:" + \
                    hashlib.sha256(image.encode()).hexdigest()
                cs["containerID"] = self._cid(pod, cname)
            if mine and v.last_terminated:
                reason, code = v.last_terminated
                cs["lastState"] = {"terminated": {"exitCode": code, "reason": reason,
                                                  "startedAt": self._stamp(st, f"{cname}:started"),
                                                  "finishedAt": self._stamp(st, f"{cname}:finished"),
                                                  "containerID": self._cid(pod, cname)}}
            all_ready = all_ready and cs["ready"]
            cstatuses.append(cs)
        sandbox = v.sandbox if v.sandbox is not None else any_started
        not_ready = [cs["name"] for cs in cstatuses if not cs["ready"]]
        conds = []
        if v.scheduled:
            conds.append(("PodReadyToStartContainers", sandbox, None, None))
            conds.append(("Initialized", True, None, None))
            if finished:
                conds.append(("Ready", False, "PodCompleted", None))
                conds.append(("ContainersReady", False, "PodCompleted", None))
            else:
                msg = f"containers with unready status: [{' '.join(not_ready)}]" if not_ready else None
                conds.append(("Ready", not not_ready, "ContainersNotReady" if not_ready else None, msg))
                conds.append(("ContainersReady", not not_ready, "ContainersNotReady" if not_ready else None, msg))
            conds.append(("PodScheduled", True, None, None))
        else:
            conds.append(("PodScheduled", False, "Unschedulable", v.unschedulable_message))
        old_conds = {c.get("type"): c for c in old.get("conditions") or []}
        status: dict = {"phase": v.phase, "conditions": []}
        for typ, ok, reason, message in conds:
            s = "True" if ok else "False"
            prev = old_conds.get(typ)
            c = {"type": typ, "status": s}
            if typ != "PodReadyToStartContainers":
                c["lastProbeTime"] = None
            c["lastTransitionTime"] = prev["lastTransitionTime"] if prev and prev.get("status") == s else _now()
            if reason:
                c["reason"] = reason
            if message:
                c["message"] = message
            status["conditions"].append(c)
        if v.scheduled:
            status["hostIP"] = "10.128.0.2"
            status["hostIPs"] = [{"ip": "10.128.0.2"}]
            if sandbox:
                if "podIP" not in st["times"]:
                    st["times"]["podIP"] = f"10.8.0.{next(self._ip_seq) % 250 + 2}"
                status["podIP"] = st["times"]["podIP"]
                status["podIPs"] = [{"ip": status["podIP"]}]
            status["startTime"] = self._stamp(st, "startTime")
            status["containerStatuses"] = cstatuses
        status["qosClass"] = self._qos(pod)
        return status

    @staticmethod
    def _cid(pod: dict, cname: str) -> str:
        return "containerd://" + hashlib.sha256(f"{pod['metadata']['uid']}/{cname}".encode()).hexdigest()

    # ---- workload status -------------------------------------------------------------------------------

    @staticmethod
    def _cond(old_status: dict, typ: str, ok: bool, reason: str, message: str, *, update_time: bool = False) -> dict:
        prev = next((c for c in old_status.get("conditions") or [] if c.get("type") == typ), None)
        s = "True" if ok else "False"
        same = prev is not None and prev.get("status") == s
        c = {"type": typ, "status": s}
        if update_time:
            c["lastUpdateTime"] = prev.get("lastUpdateTime") if same and prev.get("reason") == reason else _now()
        c["lastTransitionTime"] = prev["lastTransitionTime"] if same else _now()
        c["reason"] = reason
        c["message"] = message
        return c

    def _status_replicaset(self, key: tuple, rs: dict) -> None:
        pods = [p for _, p in self._owned("Pod", key[1], rs["metadata"]["uid"]) if not _terminating(p)]
        ready = sum(1 for p in pods if _is_ready(p))
        status = {"replicas": len(pods), "observedGeneration": rs["metadata"].get("generation", 1)}
        if pods:
            status["fullyLabeledReplicas"] = len(pods)
        if ready:
            status["readyReplicas"] = ready
            status["availableReplicas"] = ready
        n = copy.deepcopy(rs)
        n["status"] = status
        self._set(key, n)

    def _status_deployment(self, key: tuple, d: dict) -> None:
        spec = d.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        h = _safe_hash(spec.get("template") or {})
        owned = self._owned("ReplicaSet", key[1], d["metadata"]["uid"])
        total = ready = updated = 0
        for k, rs in owned:
            pods = [p for _, p in self._owned("Pod", key[1], rs["metadata"]["uid"]) if not _terminating(p)]
            total += len(pods)
            r = sum(1 for p in pods if _is_ready(p))
            ready += r
            if k[2] == f"{key[2]}-{h}":
                updated = len(pods)
        strategy = spec.get("strategy") or {}
        max_unavailable = 0
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            mu = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%")
            max_unavailable = int(replicas * int(mu[:-1]) / 100) if isinstance(mu, str) and mu.endswith("%") \
                else int(mu)
        old = d.get("status") or {}
        status: dict = {"observedGeneration": d["metadata"].get("generation", 1)}
        for k, v in (("replicas", total), ("updatedReplicas", updated), ("readyReplicas", ready),
                     ("availableReplicas", ready), ("unavailableReplicas", max(replicas - ready, 0))):
            if v:
                status[k] = v
        available = ready >= replicas - max_unavailable
        rs_name = f"{key[2]}-{h}"
        done = updated == replicas and ready >= replicas and total == replicas
        status["conditions"] = [
            self._cond(old, "Available", available,
                       "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                       "Deployment has minimum availability." if available
                       else "Deployment does not have minimum availability.", update_time=True),
            self._cond(old, "Progressing", True, "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
                       f'ReplicaSet "{rs_name}" has successfully progressed.' if done
                       else f'ReplicaSet "{rs_name}" is progressing.', update_time=True),
        ]
        n = copy.deepcopy(d)
        n["status"] = status
        self._set(key, n)

    def _status_statefulset(self, key: tuple, sts: dict) -> None:
        spec = sts.get("spec") or {}
        rev = f"{key[2]}-{_safe_hash(spec.get('template') or {})}"
        pods = [p for _, p in self._owned("Pod", key[1], sts["metadata"]["uid"]) if not _terminating(p)]
        ready = sum(1 for p in pods if _is_ready(p))
        updated = sum(1 for p in pods if _labels(p).get("controller-revision-hash") == rev)
        old = sts.get("status") or {}
        status: dict = {"observedGeneration": sts["metadata"].get("generation", 1), "replicas": len(pods),
                        "availableReplicas": ready}
        if ready:
            status["readyReplicas"] = ready
        current_rev = old.get("currentRevision") or rev
        if updated == len(pods) == int(spec.get("replicas", 1)):
            current_rev = rev
        current = sum(1 for p in pods if _labels(p).get("controller-revision-hash") == current_rev)
        if current:
            status["currentReplicas"] = current
        if updated:
            status["updatedReplicas"] = updated
        status["currentRevision"] = current_rev
        status["updateRevision"] = rev
        status["collisionCount"] = 0
        n = copy.deepcopy(sts)
        n["status"] = status
        self._set(key, n)

    def _status_job(self, key: tuple, job: dict) -> None:
        spec = job.get("spec") or {}
        pods = [p for _, p in self._owned("Pod", key[1], job["metadata"]["uid"])]
        phases = [(p.get("status") or {}).get("phase") for p in pods]
        active = sum(1 for p, ph in zip(pods, phases) if ph not in ("Succeeded", "Failed") and not _terminating(p))
        succeeded, failed = phases.count("Succeeded"), phases.count("Failed")
        old = job.get("status") or {}
        status: dict = {}
        if pods or old.get("startTime"):
            status["startTime"] = old.get("startTime") or _now()
        if active:
            status["active"] = active
        status["ready"] = sum(1 for p in pods if _is_ready(p))
        if succeeded:
            status["succeeded"] = succeeded
        if failed:
            status["failed"] = failed
        status["terminating"] = 0
        status["uncountedTerminatedPods"] = {}
        conds = []
        if succeeded >= int(spec.get("completions", 1)):
            conds.append(self._cond(old, "SuccessCriteriaMet", True, "CompletionsReached", "Reached expected "
                                    "number of succeeded pods"))
            conds.append(self._cond(old, "Complete", True, "CompletionsReached", "Reached expected number of "
                                    "succeeded pods"))
            status["completionTime"] = old.get("completionTime") or _now()
        elif failed > int(spec.get("backoffLimit", 6)):
            conds.append(self._cond(old, "FailureTarget", True, "BackoffLimitExceeded",
                                    "Job has reached the specified backoff limit"))
            conds.append(self._cond(old, "Failed", True, "BackoffLimitExceeded",
                                    "Job has reached the specified backoff limit"))
        for c in conds:
            c["lastProbeTime"] = c["lastTransitionTime"]
        if conds:
            status["conditions"] = conds
        was_done = any(c.get("type") in ("Complete", "Failed") for c in old.get("conditions") or [])
        n = copy.deepcopy(job)
        n["status"] = status
        if self._set(key, n) and conds and not was_done:
            typ = conds[-1]["type"]
            self._emit(job, "Normal" if typ == "Complete" else "Warning",
                       "Completed" if typ == "Complete" else "BackoffLimitExceeded",
                       "Job completed" if typ == "Complete" else "Job has reached the specified backoff limit",
                       "job-controller")

    # ---- events ----------------------------------------------------------------------------------------

    def _find_involved(self, namespace: str, involved: dict | str) -> dict:
        if isinstance(involved, dict) and involved.get("metadata"):
            return involved
        if isinstance(involved, dict):
            kind, name = involved.get("kind", "Pod"), involved["name"]
            rt = _resolve_kind(kind)
            found = self._store.get(self._key(rt, namespace, name))
            if found:
                return found
            return {"apiVersion": involved.get("apiVersion", rt.api_version), "kind": rt.kind,
                    "metadata": {"name": name, "namespace": namespace, "uid": involved.get("uid", "")}}
        for rt in [_BY_KIND["Pod"]] + [r for r in RESOURCE_TYPES if r.kind != "Pod"]:
            found = self._store.get(self._key(rt, namespace, involved))
            if found:
                return found
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": involved, "namespace": namespace, "uid": ""}}

    def _emit(self, obj: dict, typ: str, reason: str, message: str, source: str, *, count: int = 1) -> dict:
        meta = obj["metadata"]
        ns = meta.get("namespace") or "default"
        for key, ev in self._store.items():
            if key[0] == "Event" and key[1] == ns and ev["involvedObject"].get("uid") == meta.get("uid") \
                    and ev["involvedObject"].get("name") == meta.get("name") \
                    and ev.get("reason") == reason and ev.get("message") == message and ev.get("type") == typ:
                n = copy.deepcopy(ev)
                n["count"] = int(n.get("count") or 1) + count
                n["lastTimestamp"] = _now()
                return self._put(key, n)
        name = f"{meta['name']}.{(time.time_ns() + next(self._event_seq)):x}"[:253]
        src = {"component": source}
        if source == "kubelet":
            src["host"] = self.node_name
        involved = {"kind": obj.get("kind"), "namespace": ns, "name": meta["name"], "uid": meta.get("uid", ""),
                    "apiVersion": obj.get("apiVersion", "v1")}
        if meta.get("resourceVersion"):
            involved["resourceVersion"] = meta["resourceVersion"]
        if obj.get("kind") == "Pod" and source == "kubelet" and reason in ("Pulling", "Pulled", "Created",
                                                                           "Started", "BackOff", "Failed"):
            cname = ((obj.get("spec") or {}).get("containers") or [{}])[0].get("name")
            if cname:
                involved["fieldPath"] = f"spec.containers{{{cname}}}"
        stamp = _now()
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"name": name, "namespace": ns, "uid": self._uid(), "creationTimestamp": stamp},
              "involvedObject": involved, "reason": reason, "message": message, "source": src,
              "firstTimestamp": stamp, "lastTimestamp": stamp, "count": count, "type": typ, "eventTime": None,
              "reportingComponent": source, "reportingInstance": src.get("host", "")}
        return self._put(("Event", ns, name), ev, "ADDED")


# --------------------------------------------------------------------------------------------------------
# pytest fixture
# --------------------------------------------------------------------------------------------------------

if pytest is not None:
    @pytest.fixture
    def kube_emulator(tmp_path):
        """A started :class:`KubeEmulator`; its kubeconfig (context ``test``) is at ``emu.kubeconfig_path``."""
        emu = KubeEmulator()
        emu.start()
        emu.write_kubeconfig(tmp_path / "kubeconfig", context="test")
        try:
            yield emu
        finally:
            emu.stop()
