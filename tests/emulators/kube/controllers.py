"""The controller loop: what runs on every tick, in order. A tick happens before every read (GET, list, log,
port-forward) unless ``auto_tick`` is off, or by hand (:meth:`KubeEmulator.tick`); writes and dry runs never
tick, so "apply, then apply again" sees exactly the first apply's result. Here too: the namespace
controller (``default`` ServiceAccount and ``kube-root-ca.crt`` in every namespace; a deleted namespace is
emptied, then removed), the garbage collector (``ownerReferences``, foreground deletion), the
pvc-protection controller, and removal of pods whose grace period ran out (one tick)."""

from __future__ import annotations

import copy

from .cloud import Cloud
from .endpointslices import reconcile_endpoint_slices
from .jobs import JobPods
from .kubelet import Kubelet
from .objects import now, terminating
from .store import Store
from .workloads import Workloads

_CA_DESCRIPTION = "kubernetes.io/description"
_CA_TEXT = ("Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such "
            "as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across "
            "distributions of Kubernetes clusters.")


class Controllers:
    def __init__(self, store: Store, kubelet: Kubelet, cloud: Cloud):
        self.store = store
        self.kubelet = kubelet
        self.cloud = cloud
        self.workloads = Workloads(store)
        self.jobs = JobPods(store, kubelet, self.workloads)  # Indexed Jobs (and opted-in ones): local processes
        self.workloads.runs_for_real = self.jobs.handles
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1
        self._remove_terminated_pods()
        self._namespaces()
        self._collect_garbage()
        self._release_pvc_protection()
        self.workloads.reconcile()
        self.jobs.tick()
        self.cloud.bind_claims()
        self.cloud.load_balancers_and_disks()
        self.kubelet.advance_pods()
        self.workloads.update_status()
        reconcile_endpoint_slices(self.store)

    def _remove_terminated_pods(self) -> None:
        for key, o in list(self.store.objects.items()):
            if key[0] == "Pod" and terminating(o) and not o["metadata"].get("finalizers"):
                self.store.remove(key)

    def _namespaces(self) -> None:
        for key, ns in list(self.store.objects.items()):
            if key[0] != "Namespace":
                continue
            name = key[2]
            if terminating(ns):
                for k in [k for k in self.store.objects if k[1] == name and k[0] != "Namespace"]:
                    self.store.remove(k)
                self.store.remove(key)
                continue
            if ("ServiceAccount", name, "default") not in self.store.objects:
                self.store.put(("ServiceAccount", name, "default"),
                               {"apiVersion": "v1", "kind": "ServiceAccount",
                                "metadata": {"name": "default", "namespace": name, "uid": self.store.uid(),
                                             "creationTimestamp": now()}})
            if ("ConfigMap", name, "kube-root-ca.crt") not in self.store.objects:
                self.store.put(("ConfigMap", name, "kube-root-ca.crt"),
                               {"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "kube-root-ca.crt", "namespace": name, "uid": self.store.uid(),
                                             "creationTimestamp": now(), "annotations": {_CA_DESCRIPTION: _CA_TEXT}},
                                "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nZW11bGF0b3I=\n"
                                                   "-----END CERTIFICATE-----\n"}})

    def _collect_garbage(self) -> None:
        changed = True
        while changed:
            changed = False
            uids = {o["metadata"].get("uid") for o in self.store.objects.values()}
            foreground = {o["metadata"]["uid"] for o in self.store.objects.values()
                          if terminating(o) and "foregroundDeletion" in (o["metadata"].get("finalizers") or [])}
            for key, o in list(self.store.objects.items()):
                if key not in self.store.objects:
                    continue
                refs = o["metadata"].get("ownerReferences") or []
                if refs and (not any(r.get("uid") in uids for r in refs)
                             or any(r.get("uid") in foreground for r in refs)):
                    self.store.remove(key)
                    changed = True
            for key, o in list(self.store.objects.items()):
                if o["metadata"].get("uid") in foreground:
                    uid = o["metadata"]["uid"]
                    if not any(r.get("uid") == uid for x in self.store.objects.values()
                               for r in x["metadata"].get("ownerReferences") or []):
                        self._drop_finalizer(key, o, "foregroundDeletion")
                        changed = True

    def _release_pvc_protection(self) -> None:
        """The pvc-protection controller: a terminating claim no pod uses loses its finalizer and goes."""
        for key, o in list(self.store.objects.items()):
            fins = o["metadata"].get("finalizers") or []
            if key[0] != "PersistentVolumeClaim" or not terminating(o) or "kubernetes.io/pvc-protection" not in fins:
                continue
            in_use = any(
                k[0] == "Pod" and k[1] == key[1]
                and any((v.get("persistentVolumeClaim") or {}).get("claimName") == key[2]
                        for v in (p.get("spec") or {}).get("volumes") or [])
                for k, p in self.store.objects.items())
            if in_use:
                continue
            self._drop_finalizer(key, o, "kubernetes.io/pvc-protection")

    def _drop_finalizer(self, key: tuple, o: dict, finalizer: str) -> None:
        """A terminating object loses one finalizer; with none left, it is gone."""
        rest = [f for f in o["metadata"].get("finalizers") or [] if f != finalizer]
        if rest:
            n = copy.deepcopy(o)
            n["metadata"]["finalizers"] = rest
            self.store.put(key, n)
        else:
            self.store.remove(key)
