"""What the API server refuses, with its words: decode errors (400) before validation, then the
validation and immutability rules that bite in practice (422): names and labels, selector vs template
labels, containers need a name and an image, Job ``restartPolicy``, Service ports, PVC access modes and
size, and the fields that cannot change (StatefulSet spec outside replicas/template/updateStrategy/...,
Deployment/Job selector, Job template, PVC spec, Service clusterIP, Pod spec, immutable ConfigMap/Secret)."""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

from .errors import bad_request, invalid
from .kinds import ResourceType
from .objects import dig, labels
from .selectors import LABEL_KEY, LABEL_VALUE, match_selector_object

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


def decode_checks(rt: ResourceType, obj: dict) -> None:
    """Type errors the real server reports while decoding (400), before validation."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise bad_request(f"json: cannot unmarshal {type(meta).__name__} into Go struct field "
                          f"{rt.kind}.metadata of type v1.ObjectMeta")
    for section in ("labels", "annotations"):
        values = meta.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise bad_request(f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{section} "
                              f"of type map[string]string")
        for k, v in values.items():
            if not isinstance(v, str):
                raise bad_request(f"json: cannot unmarshal {type(v).__name__} into Go struct field "
                                  f"ObjectMeta.metadata.{section} of type string")
    if rt.kind in ("ConfigMap", "Secret"):
        for section in ("data", "stringData") if rt.kind == "Secret" else ("data",):
            for k, v in (obj.get(section) or {}).items():
                if not isinstance(v, str):
                    go_type = "[]uint8" if section == "data" and rt.kind == "Secret" else "string"
                    raise bad_request(f"json: cannot unmarshal {type(v).__name__} into Go struct field "
                                      f"{rt.kind}.{section} of type {go_type}")
        if rt.kind == "Secret":
            for k, v in (obj.get("data") or {}).items():
                try:
                    base64.b64decode(v, validate=True)
                except Exception:
                    raise bad_request("illegal base64 data at input byte 0")


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


def validate(rt: ResourceType, obj: dict, old: dict | None) -> None:
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
        if not LABEL_KEY.match(k) or len(k.split("/")[-1]) > 63:
            causes.append(("metadata.labels", "FieldValueInvalid",
                           f'Invalid value: "{k}": name part must consist of alphanumeric characters, \'-\', '
                           f"'_' or '.', and must start and end with an alphanumeric character"))
        if len(v) > 63 or not LABEL_VALUE.match(v):
            causes.append(("metadata.labels", "FieldValueInvalid",
                           f'Invalid value: "{v}": a valid label must be an empty string or consist of '
                           f"alphanumeric characters, '-', '_' or '.', and must start and end with an "
                           f"alphanumeric character"))
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    if rt.kind in ("Deployment", "StatefulSet", "ReplicaSet", "Job"):
        selector = spec.get("selector")
        template = spec.get("template") or {}
        tlabels = labels(template)
        if not selector and rt.kind != "Job":
            causes.append(("spec.selector", "FieldValueRequired", "Required value"))
        elif selector and not match_selector_object(selector, tlabels):
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
            causes.append(("spec.accessModes", "FieldValueRequired",
                           "Required value: at least 1 access mode is required"))
        if not dig(spec, "resources.requests.storage"):
            causes.append(("spec.resources[storage]", "FieldValueRequired", "Required value"))
    if old is not None:
        _validate_update(rt, obj, old, causes)
    if causes:
        raise invalid(rt, name, causes)


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
        def strip(s):  # what a bound claim may still change
            return {k: (v if k != "resources" else {**v, "requests": None})
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
                               "Forbidden: field is immutable when `immutable` is set"))
