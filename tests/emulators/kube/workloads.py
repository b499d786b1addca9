"""The workload controllers: Deployment → ReplicaSet (``<deploy>-<hash>``) → Pods (``<rs>-<rand5>``);
StatefulSet → Pods ``<sts>-<i>`` (OrderedReady or Parallel, rolling update one pod at a time) and claims
from ``volumeClaimTemplates`` (``<template>-<sts>-<i>``, retention policy honoured); Job → Pods until
``completions`` succeed or ``backoffLimit`` fails; and each workload's ``status`` and conditions."""

from __future__ import annotations

import copy

from .defaults import apply_defaults
from .events import record_event
from .kinds import BY_KIND
from .objects import is_ready, labels, now, owner_ref, safe_hash, terminating
from .store import Store


class Workloads:
    def __init__(self, store: Store):
        self.store = store
        # Jobs whose pods .jobs runs as local processes (it says which): their pods and status are its own.
        self.runs_for_real = lambda job: False

    def reconcile(self) -> None:
        """Create and delete what each workload's spec asks for."""
        for kind, fn in (("Deployment", self._reconcile_deployment), ("ReplicaSet", self._reconcile_replicaset),
                         ("StatefulSet", self._reconcile_statefulset), ("Job", self._reconcile_job)):
            for key in self.store.of_kind(kind):
                if key in self.store.objects and not terminating(self.store.objects[key]):
                    fn(key, self.store.objects[key])

    def update_status(self) -> None:
        """Each workload's ``status``, from its pods as they are now."""
        for kind, fn in (("ReplicaSet", self._status_replicaset), ("Deployment", self._status_deployment),
                         ("StatefulSet", self._status_statefulset), ("Job", self._status_job)):
            for key in self.store.of_kind(kind):
                if key in self.store.objects:
                    fn(key, self.store.objects[key])

    def _new_pod(self, owner: dict, name: str, template: dict, extra_labels: dict, **spec_extra) -> dict:
        ns = owner["metadata"]["namespace"]
        tmeta = template.get("metadata") or {}
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "uid": self.store.uid(), "creationTimestamp": now(),
                            "labels": {**(tmeta.get("labels") or {}), **extra_labels},
                            "ownerReferences": [owner_ref(owner)]},
               "spec": copy.deepcopy(template.get("spec") or {})}
        if tmeta.get("annotations"):
            pod["metadata"]["annotations"] = dict(tmeta["annotations"])
        if owner["kind"] == "Job":
            pod["metadata"]["generateName"] = owner["metadata"]["name"] + "-"
        pod["spec"].update(spec_extra)
        apply_defaults(BY_KIND["Pod"], pod, self.store)
        self.store.put(("Pod", ns, name), pod)
        verb = {"StatefulSet": f"create Pod {name} in StatefulSet {owner['metadata']['name']} successful",
                "ReplicaSet": f"Created pod: {name}", "Job": f"Created pod: {name}"}[owner["kind"]]
        source = {"StatefulSet": "statefulset-controller", "ReplicaSet": "replicaset-controller",
                  "Job": "job-controller"}[owner["kind"]]
        record_event(self.store, owner, "Normal", "SuccessfulCreate", verb, source)
        return pod

    def _delete_pod(self, key: tuple) -> None:
        pod = self.store.objects.get(key)
        if pod is None or terminating(pod):
            return
        n = copy.deepcopy(pod)
        n["metadata"]["deletionTimestamp"] = now()
        n["metadata"]["deletionGracePeriodSeconds"] = 30
        self.store.put(key, n)

    def _reconcile_deployment(self, key: tuple, d: dict) -> None:
        spec = d.get("spec") or {}
        ns, name, uid = key[1], key[2], d["metadata"]["uid"]
        template = spec.get("template") or {}
        h = safe_hash(template)
        rs_name = f"{name}-{h}"
        replicas = int(spec.get("replicas", 1))
        rs_key = ("ReplicaSet", ns, rs_name)
        owned = self.store.owned("ReplicaSet", ns, uid)
        if rs_key not in self.store.objects:
            tmpl = copy.deepcopy(template)
            tmpl.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = h
            sel = copy.deepcopy(spec.get("selector") or {})
            sel.setdefault("matchLabels", {})["pod-template-hash"] = h
            rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                  "metadata": {"name": rs_name, "namespace": ns, "uid": self.store.uid(), "creationTimestamp": now(),
                               "generation": 1, "labels": dict(tmpl["metadata"]["labels"]),
                               "annotations": {"deployment.kubernetes.io/desired-replicas": str(replicas),
                                               "deployment.kubernetes.io/max-replicas": str(replicas + 1),
                                               "deployment.kubernetes.io/revision": str(len(owned) + 1)},
                               "ownerReferences": [owner_ref(d)]},
                  "spec": {"replicas": replicas, "selector": sel, "template": tmpl}, "status": {"replicas": 0}}
            apply_defaults(BY_KIND["ReplicaSet"], rs, self.store)
            self.store.put(rs_key, rs)
            record_event(self.store, d, "Normal", "ScalingReplicaSet",
                         f"Scaled up replica set {rs_name} from 0 to {replicas}", "deployment-controller")
        else:
            rs = self.store.objects[rs_key]
            if rs["spec"].get("replicas") != replicas:
                n = copy.deepcopy(rs)
                n["spec"]["replicas"] = replicas
                n["metadata"]["generation"] = int(n["metadata"].get("generation", 1)) + 1
                self.store.put(rs_key, n)
        for okey, o in owned:
            if okey != rs_key and o["spec"].get("replicas"):
                n = copy.deepcopy(o)
                record_event(self.store, d, "Normal", "ScalingReplicaSet",
                             f"Scaled down replica set {okey[2]} from {o['spec']['replicas']} to 0",
                             "deployment-controller")
                n["spec"]["replicas"] = 0
                n["metadata"]["generation"] = int(n["metadata"].get("generation", 1)) + 1
                self.store.put(okey, n)

    def _reconcile_replicaset(self, key: tuple, rs: dict) -> None:
        ns, name, uid = key[1], key[2], rs["metadata"]["uid"]
        replicas = int((rs.get("spec") or {}).get("replicas", 1))
        pods = [(k, p) for k, p in self.store.owned("Pod", ns, uid) if not terminating(p)]
        h = labels(rs).get("pod-template-hash") or safe_hash(rs["spec"].get("template") or {})
        for _ in range(replicas - len(pods)):
            self._new_pod(rs, f"{name}-{self.store.suffix()}", rs["spec"].get("template") or {},
                          {"pod-template-hash": h})
        if len(pods) > replicas:
            for k, _ in sorted(pods, key=lambda kp: kp[1]["metadata"]["creationTimestamp"],
                               reverse=True)[: len(pods) - replicas]:
                self._delete_pod(k)

    def _reconcile_statefulset(self, key: tuple, sts: dict) -> None:
        spec = sts.get("spec") or {}
        ns, name, uid = key[1], key[2], sts["metadata"]["uid"]
        replicas = int(spec.get("replicas", 1))
        rev = f"{name}-{safe_hash(spec.get('template') or {})}"
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        pods: dict[int, tuple] = {}
        for k, p in self.store.owned("Pod", ns, uid):
            suffix = k[2][len(name) + 1:]
            if k[2].startswith(name + "-") and suffix.isdigit():
                pods[int(suffix)] = (k, p)
        for i in range(replicas):
            if i in pods:
                if ordered and not (is_ready(pods[i][1]) and not terminating(pods[i][1])):
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
                    if ck in self.store.objects:
                        self.store.remove(ck)
        if (spec.get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate":
            live = {i: kp for i, kp in pods.items() if i < replicas}
            if live and all(not terminating(p) for _, p in live.values()):
                outdated = [i for i, (_, p) in live.items() if labels(p).get("controller-revision-hash") != rev]
                partition = int(((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition") or 0)
                outdated = [i for i in outdated if i >= partition]
                current_ok = all(is_ready(p) for i, (_, p) in live.items() if i not in outdated)
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
            if ckey in self.store.objects:
                continue
            labels = dict(vmeta.get("labels") or {})
            labels.update(((spec.get("selector") or {}).get("matchLabels") or {}))
            pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": cname, "namespace": ns, "uid": self.store.uid(), "creationTimestamp": now(),
                                "labels": labels, "finalizers": ["kubernetes.io/pvc-protection"]},
                   "spec": copy.deepcopy(vct.get("spec") or {})}
            if vmeta.get("annotations"):
                pvc["metadata"]["annotations"] = dict(vmeta["annotations"])
            if policy.get("whenDeleted") == "Delete":
                ref = owner_ref(sts)
                ref.pop("controller")
                pvc["metadata"]["ownerReferences"] = [ref]
            apply_defaults(BY_KIND["PersistentVolumeClaim"], pvc, self.store)
            self.store.put(ckey, pvc)
            record_event(self.store, sts, "Normal", "SuccessfulCreate",
                         f"create Claim {cname} Pod {name}-{i} in StatefulSet {name} success", "statefulset-controller")

    def _reconcile_job(self, key: tuple, job: dict) -> None:
        spec = job.get("spec") or {}
        if self.runs_for_real(job):
            return  # run for real by .jobs
        status = job.get("status") or {}
        if any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in status.get("conditions") or []) or spec.get("suspend"):
            return
        ns, uid = key[1], job["metadata"]["uid"]
        pods = [p for _, p in self.store.owned("Pod", ns, uid)]
        active = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                  and not terminating(p)]
        succeeded = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded")
        failed = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
        if succeeded >= int(spec.get("completions", 1)) or failed > int(spec.get("backoffLimit", 6)):
            return
        want = min(int(spec.get("parallelism", 1)), int(spec.get("completions", 1)) - succeeded)
        name = key[2]
        labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                  "controller-uid": uid, "job-name": name}
        for _ in range(want - len(active)):
            self._new_pod(job, f"{name}-{self.store.suffix()}", spec.get("template") or {}, labels)

    @staticmethod
    def _cond(old_status: dict, typ: str, ok: bool, reason: str, message: str, *, update_time: bool = False) -> dict:
        prev = next((c for c in old_status.get("conditions") or [] if c.get("type") == typ), None)
        s = "True" if ok else "False"
        same = prev is not None and prev.get("status") == s
        c = {"type": typ, "status": s}
        if update_time:
            c["lastUpdateTime"] = prev.get("lastUpdateTime") if same and prev.get("reason") == reason else now()
        c["lastTransitionTime"] = prev["lastTransitionTime"] if same else now()
        c["reason"] = reason
        c["message"] = message
        return c

    def _status_replicaset(self, key: tuple, rs: dict) -> None:
        pods = [p for _, p in self.store.owned("Pod", key[1], rs["metadata"]["uid"]) if not terminating(p)]
        ready = sum(1 for p in pods if is_ready(p))
        status = {"replicas": len(pods), "observedGeneration": rs["metadata"].get("generation", 1)}
        if pods:
            status["fullyLabeledReplicas"] = len(pods)
        if ready:
            status["readyReplicas"] = ready
            status["availableReplicas"] = ready
        n = copy.deepcopy(rs)
        n["status"] = status
        self.store.set(key, n)

    def _status_deployment(self, key: tuple, d: dict) -> None:
        spec = d.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        h = safe_hash(spec.get("template") or {})
        owned = self.store.owned("ReplicaSet", key[1], d["metadata"]["uid"])
        total = ready = updated = 0
        for k, rs in owned:
            pods = [p for _, p in self.store.owned("Pod", key[1], rs["metadata"]["uid"]) if not terminating(p)]
            total += len(pods)
            r = sum(1 for p in pods if is_ready(p))
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
        self.store.set(key, n)

    def _status_statefulset(self, key: tuple, sts: dict) -> None:
        spec = sts.get("spec") or {}
        rev = f"{key[2]}-{safe_hash(spec.get('template') or {})}"
        pods = [p for _, p in self.store.owned("Pod", key[1], sts["metadata"]["uid"]) if not terminating(p)]
        ready = sum(1 for p in pods if is_ready(p))
        updated = sum(1 for p in pods if labels(p).get("controller-revision-hash") == rev)
        old = sts.get("status") or {}
        status: dict = {"observedGeneration": sts["metadata"].get("generation", 1), "replicas": len(pods),
                        "availableReplicas": ready}
        if ready:
            status["readyReplicas"] = ready
        current_rev = old.get("currentRevision") or rev
        if updated == len(pods) == int(spec.get("replicas", 1)):
            current_rev = rev
        current = sum(1 for p in pods if labels(p).get("controller-revision-hash") == current_rev)
        if current:
            status["currentReplicas"] = current
        if updated:
            status["updatedReplicas"] = updated
        status["currentRevision"] = current_rev
        status["updateRevision"] = rev
        status["collisionCount"] = 0
        n = copy.deepcopy(sts)
        n["status"] = status
        self.store.set(key, n)

    def _status_job(self, key: tuple, job: dict) -> None:
        spec = job.get("spec") or {}
        if self.runs_for_real(job):
            return  # .jobs keeps its status
        pods = [p for _, p in self.store.owned("Pod", key[1], job["metadata"]["uid"])]
        phases = [(p.get("status") or {}).get("phase") for p in pods]
        active = sum(1 for p, ph in zip(pods, phases) if ph not in ("Succeeded", "Failed") and not terminating(p))
        succeeded, failed = phases.count("Succeeded"), phases.count("Failed")
        old = job.get("status") or {}
        status: dict = {}
        if pods or old.get("startTime"):
            status["startTime"] = old.get("startTime") or now()
        if active:
            status["active"] = active
        status["ready"] = sum(1 for p in pods if is_ready(p))
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
            status["completionTime"] = old.get("completionTime") or now()
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
        if self.store.set(key, n) and conds and not was_done:
            typ = conds[-1]["type"]
            record_event(self.store, job, "Normal" if typ == "Complete" else "Warning",
                         "Completed" if typ == "Complete" else "BackoffLimitExceeded",
                         "Job completed" if typ == "Complete" else "Job has reached the specified backoff limit",
                         "job-controller")
