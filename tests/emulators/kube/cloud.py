"""What GKE does with cloud resources behind Kubernetes objects: a claim is bound to a dynamically
provisioned disk (a PersistentVolume, reclaim policy Delete); a Service of type LoadBalancer (and a gce
Ingress) gets a load balancer, an address and a finalizer. Deleting them releases the finalizer only once
the cloud resource is gone: at least ``cleanup_ticks`` ticks and ``cleanup_s`` seconds later (real load
balancers take minutes), which is what teardown must wait for before it deletes the cluster."""

from __future__ import annotations

import copy
import time

from .objects import dig, now, terminating
from .store import Store

LB_FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
INGRESS_FINALIZER = "networking.gke.io/ingress-finalizer-V2"
PV_FINALIZERS = ["kubernetes.io/pv-protection", "external-provisioner.volume.kubernetes.io/finalizer"]


class Cloud:
    def __init__(self, store: Store):
        self.store = store
        self.cleanup_ticks = 2
        self.cleanup_s = 0.0
        self._countdown: dict[str, tuple[int, float]] = {}  # uid + finalizer → (ticks left, started)

    def bind_claims(self) -> None:
        for key in self.store.of_kind("PersistentVolumeClaim"):
            self._bind(key)

    def _bind(self, key: tuple) -> None:
        pvc = self.store.objects[key]
        if (pvc.get("status") or {}).get("phase") == "Bound" or terminating(pvc):
            return
        n = copy.deepcopy(pvc)
        spec = n.setdefault("spec", {})
        if not spec.get("volumeName") and spec.get("storageClassName"):
            self._provision(n)  # dynamic provisioning: a disk and its PersistentVolume
        spec.setdefault("volumeName", f"pvc-{n['metadata']['uid']}")
        n["status"] = {"phase": "Bound", "accessModes": list(spec.get("accessModes") or []),
                       "capacity": {"storage": dig(spec, "resources.requests.storage") or "1Gi"}}
        ann = n["metadata"].setdefault("annotations", {})
        ann.setdefault("pv.kubernetes.io/bind-completed", "yes")
        ann.setdefault("pv.kubernetes.io/bound-by-controller", "yes")
        self.store.set(key, n)

    def _provision(self, pvc: dict) -> None:
        meta, spec = pvc["metadata"], pvc["spec"]
        name = f"pvc-{meta['uid']}"
        if ("PersistentVolume", "", name) in self.store.objects:
            return
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": name, "uid": self.store.uid(), "creationTimestamp": now(),
                           "finalizers": list(PV_FINALIZERS),
                           "annotations": {"pv.kubernetes.io/provisioned-by": "pd.csi.storage.gke.io"}},
              "spec": {"accessModes": list(spec.get("accessModes") or []),
                       "capacity": {"storage": dig(spec, "resources.requests.storage") or "1Gi"},
                       "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": meta["name"],
                                    "namespace": meta["namespace"], "uid": meta["uid"]},
                       "csi": {"driver": "pd.csi.storage.gke.io",
                               "volumeHandle": f"projects/emulator/zones/us-central1-a/disks/{name}"},
                       "persistentVolumeReclaimPolicy": "Delete", "storageClassName": spec["storageClassName"],
                       "volumeMode": spec.get("volumeMode", "Filesystem")},
              "status": {"phase": "Bound"}}
        self.store.put(("PersistentVolume", "", name), pv)

    def load_balancers_and_disks(self) -> None:
        """What GKE's controllers do with cloud resources: a Service of type LoadBalancer (and a gce
        Ingress) gets a load balancer and a finalizer; a dynamically provisioned volume gets a disk.
        Deleting them releases the finalizer only after the cloud resource is gone (a few ticks)."""
        for key, obj in list(self.store.objects.items()):
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
            if terminating(obj):
                if finalizer in fins:
                    self._release_after_cleanup(key, obj, finalizer)
            elif has_lb and finalizer not in fins:
                n = copy.deepcopy(obj)
                n["metadata"]["finalizers"] = fins + [finalizer]
                ip = f"34.118.{next(self.store.ip_seq) % 250}.{len(self.store.objects) % 250 + 1}"
                n["status"] = {**(n.get("status") or {}), "loadBalancer": {"ingress": [{"ip": ip}]}}
                self.store.put(key, n)

    def _reclaim_volume(self, key: tuple, pv: dict) -> None:
        """A provisioned volume whose claim is gone: its disk is deleted (reclaim policy Delete), then it."""
        if not any(f in (pv["metadata"].get("finalizers") or []) for f in PV_FINALIZERS):
            return  # not one the provisioner made
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        claim = self.store.objects.get(("PersistentVolumeClaim", ref.get("namespace", ""), ref.get("name", "")))
        if claim is not None and claim["metadata"].get("uid") == ref.get("uid"):
            return
        if (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") != "Delete":
            return
        if not terminating(pv):
            n = copy.deepcopy(pv)
            n["metadata"]["deletionTimestamp"] = now()
            n["status"] = {"phase": "Released"}
            self.store.put(key, n)
            return
        for finalizer in list(pv["metadata"].get("finalizers") or []):
            if finalizer in PV_FINALIZERS:
                pv = self._release_after_cleanup(key, pv, finalizer)
                if pv is None:
                    return

    def _release_after_cleanup(self, key: tuple, obj: dict, finalizer: str) -> dict | None:
        """Count the cloud clean-up down; then drop ``finalizer`` (and the object, if it was the last)."""
        uid = obj["metadata"]["uid"] + finalizer
        ticks, started = self._countdown.setdefault(uid, (self.cleanup_ticks, time.monotonic()))
        self._countdown[uid] = (ticks - 1, started)
        if ticks - 1 > 0 or time.monotonic() - started < self.cleanup_s:
            return obj
        self._countdown.pop(uid, None)
        rest = [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer]
        if rest:
            n = copy.deepcopy(obj)
            n["metadata"]["finalizers"] = rest
            return self.store.put(key, n)
        self.store.remove(key)
        return None
