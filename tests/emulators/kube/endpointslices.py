"""The EndpointSlice controller: one slice per Service with a selector, listing the pods it selects with
the conditions kube-proxy routes by (``ready``: Ready and not terminating; ``serving``; ``terminating``)
and the zone of their node. Owned by the Service (garbage-collected with it), labelled
``kubernetes.io/service-name`` as the real controller does."""

from __future__ import annotations

from .objects import is_ready, labels, now, owner_ref, terminating
from .selectors import match_selector_object
from .store import Store

MANAGED_BY = "endpointslice-controller.k8s.io"


def reconcile_endpoint_slices(store: Store) -> None:
    for key in store.of_kind("Service"):
        svc = store.objects[key]
        ns, name = key[1], key[2]
        selector = (svc.get("spec") or {}).get("selector")
        if not selector or terminating(svc):
            continue
        endpoints = []
        for pkey, pod in sorted(store.objects.items(), key=lambda kv: str(kv[0])):
            if pkey[0] != "Pod" or pkey[1] != ns or not match_selector_object({"matchLabels": selector}, labels(pod)):
                continue
            ip = (pod.get("status") or {}).get("podIP")
            node = (pod.get("spec") or {}).get("nodeName")
            if not ip or not node:
                continue
            gone = terminating(pod)
            ep = {"addresses": [ip], "conditions": {"ready": is_ready(pod) and not gone,
                                                     "serving": is_ready(pod), "terminating": gone},
                  "nodeName": node, "targetRef": {"kind": "Pod", "namespace": ns, "name": pkey[2],
                                                  "uid": pod["metadata"]["uid"]}}
            zone = labels(store.objects.get(("Node", "", node)) or {}).get("topology.kubernetes.io/zone")
            if zone:
                ep["zone"] = zone
            endpoints.append(ep)
        ports = [{"name": p.get("name", ""), "port": p.get("targetPort") if isinstance(p.get("targetPort"), int)
                  else p.get("port"), "protocol": p.get("protocol", "TCP")} for p in svc["spec"].get("ports") or []]
        slice_key = ("EndpointSlice", ns, f"{name}-slice")
        old = store.objects.get(slice_key)
        new = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
               "metadata": {"name": f"{name}-slice", "namespace": ns,
                            "uid": (old or {}).get("metadata", {}).get("uid") or store.uid(),
                            "creationTimestamp": (old or {}).get("metadata", {}).get("creationTimestamp") or now(),
                            "labels": {"kubernetes.io/service-name": name,
                                       "endpointslice.kubernetes.io/managed-by": MANAGED_BY},
                            "ownerReferences": [owner_ref(svc)]},
               "endpoints": endpoints, "ports": ports}
        if old is None:
            store.put(slice_key, new)
        else:
            store.set(slice_key, new)
