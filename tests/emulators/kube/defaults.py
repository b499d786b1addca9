"""What the API server fills in on create and update: per-kind defaults (Service cluster IPs and ports,
PVC storage class, pod spec and container fields, workload strategies, Job selectors), ``stringData``
folded into a Secret's base64 ``data``, and a pod's QoS class."""

from __future__ import annotations

import base64

from .kinds import ResourceType
from .objects import meta as obj_meta
from .store import Store


def prepare(rt: ResourceType, obj: dict, store: Store) -> None:
    """Kind-specific conversions and defaults applied on every create and update."""
    if rt.kind == "Secret" and "stringData" in obj:
        data = obj.setdefault("data", {}) or {}
        for k, v in (obj.pop("stringData") or {}).items():
            data[k] = base64.b64encode(v.encode()).decode()
        obj["data"] = data
    apply_defaults(rt, obj, store)


def _default_container(c: dict) -> None:
    image = c.get("image") or ""
    tag = image.rsplit("/", 1)[-1]
    if "imagePullPolicy" not in c:
        c["imagePullPolicy"] = "Always" if ("@" not in tag and (":" not in tag or tag.endswith(":latest"))) \
            else "IfNotPresent"
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})
    for kind in ("requests", "limits"):  # a Quantity is sent as a number or a string, always read back as a string
        for name, value in list((c["resources"].get(kind) or {}).items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                c["resources"][kind][name] = str(value)
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


def apply_defaults(rt: ResourceType, obj: dict, store: Store) -> None:
    """Fill what the API server defaults (in place); cluster IPs and node ports come from ``store``."""
    meta = obj_meta(obj)
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
                n = next(store.ip_seq)
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
                p.setdefault("nodePort", next(store.node_port_seq))
        if spec["type"] in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        if spec["type"] == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        obj.setdefault("status", {"loadBalancer": {}})
    elif rt.kind == "PersistentVolumeClaim" and isinstance(spec, dict):
        spec.setdefault("volumeMode", "Filesystem")
        if "storageClassName" not in spec and store.default_storage_class:
            spec["storageClassName"] = store.default_storage_class
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
        obj.setdefault("status", {"phase": "Pending", "qosClass": qos_class(obj)})
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


def qos_class(pod: dict) -> str:
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
