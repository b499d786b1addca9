"""The teardown playbook: delete only what carries our ownership labels, confirmed, idempotent.

Deletion steps are ordinary steps whose plan is "delete these" and whose no-op says why nothing is
left. The task runs them twice: a dry pass that lists everything, a confirmation, then the real pass.
"""

from __future__ import annotations

import time

from gptoss_gke.core.step import Change, Plan, Step, noop
from gptoss_gke.errors import StepError
from gptoss_gke.gcp import gcloud
from gptoss_gke.gcp.cluster import OPERATION_TIMEOUT_S, _ClusterScoped, _location_flags, describe_cluster
from gptoss_gke.gcp.project import Credentials
from gptoss_gke.k8s.apply import describe, owned
from gptoss_gke.k8s.client import SDK, kube
from gptoss_gke.k8s.manifests import KIND_ORDER, render, selector

# (apiVersion, kind, namespaced) in apply order; deleted in reverse.
KINDS = [
    ("v1", "Namespace", False),
    ("v1", "ServiceAccount", True),
    ("v1", "Secret", True),
    ("v1", "PersistentVolume", False),
    ("v1", "PersistentVolumeClaim", True),
    ("v1", "Service", True),
    ("apps/v1", "StatefulSet", True),
    ("apps/v1", "Deployment", True),
    ("batch/v1", "Job", True),
    ("networking.k8s.io/v1", "Ingress", True),
]
SHARED_KINDS = {"Namespace", "ServiceAccount", "Secret"}  # used by every target: removed with --target=all
# What Kubernetes itself puts in every namespace: not a reason to keep one.
_BUILT_IN = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}
MODEL_CACHE_CLAIM = "model-cache"  # the l4 StatefulSet's volumeClaimTemplate


def _label_selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class DeleteKubeObjects(Step):
    """Every object of one kind that carries our labels (and the target's, unless shared)."""

    section = "kubernetes"
    needs = ()  # what is already gone must not stop the rest
    sdk_modules = SDK

    def __init__(self, settings, api_version: str, kind: str, namespaced: bool, targets: list[str], *,
                 all_targets: bool, purge_model: bool):
        self.api_version, self.kind, self.namespaced = api_version, kind, namespaced
        self.targets = targets
        self.all_targets = all_targets
        self.purge_model = purge_model
        self.name = f"{kind} objects" + ("" if kind in SHARED_KINDS else f" of {', '.join(targets)}")
        # Names our manifests use, to report look-alikes we will not touch.
        self.our_names = set()
        for t in targets:
            for obj in render(settings, settings.target(t), image="-"):
                if obj["kind"] == kind:
                    self.our_names.add((obj["metadata"].get("namespace"), obj["metadata"]["name"]))
        if kind == "Secret":
            self.our_names.add((settings.kube.namespace, settings.kube.api_key_secret))

    def observe(self, ctx):
        from kubernetes.dynamic.exceptions import NotFoundError

        s = ctx.settings
        if describe_cluster(ctx) is None:
            return None  # no cluster, no objects: nothing to delete
        res = kube(ctx).resource(self.api_version, self.kind)
        ns = s.kube.namespace if self.namespaced else None
        try:
            items = res.get(namespace=ns, label_selector=_label_selector(s.ownership_labels)).to_dict()["items"]
        except NotFoundError:  # the namespace itself is gone
            items = []
        if self.kind not in SHARED_KINDS:
            items = [o for o in items if (o["metadata"].get("labels") or {}).get("gptoss-gke/target") in self.targets]
        # Already being deleted (finalizers running, e.g. pvc-protection): nothing left for us to do.
        items = [o for o in items if not o["metadata"].get("deletionTimestamp")]
        caches = []
        if self.kind == "Namespace" and not self.purge_model:
            # Deleting a namespace deletes what is in it: the kept model cache would go too.
            claims = kube(ctx).resource("v1", "PersistentVolumeClaim").get(
                namespace=s.kube.namespace, label_selector=_label_selector(s.ownership_labels)).to_dict()["items"]
            caches = [describe(c) for c in claims if c["metadata"]["name"].startswith(MODEL_CACHE_CLAIM)]
        foreign = self._foreign_residents(ctx) if self.kind == "Namespace" and items else []
        lookalikes = []
        found = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in items}
        for ns_name, name in sorted(self.our_names - found, key=str):
            try:
                other = res.get(name=name, namespace=ns_name).to_dict()
            except NotFoundError:
                continue
            if not owned(other, s):
                lookalikes.append(describe(other))
        return {"items": items, "lookalikes": lookalikes, "caches": caches, "foreign": foreign}

    def _foreign_residents(self, ctx) -> list[str]:
        """Objects in our namespace that are not ours: deleting the namespace would delete them too."""
        s = ctx.settings
        found = []
        for api_version, kind, namespaced in KINDS + [("v1", "ConfigMap", True), ("v1", "Pod", True)]:
            if not namespaced:
                continue
            for obj in kube(ctx).resource(api_version, kind).get(namespace=s.kube.namespace).to_dict()["items"]:
                meta = obj["metadata"]
                if not owned(obj, s) and (kind, meta["name"]) not in _BUILT_IN and not meta.get("ownerReferences"):
                    found.append(describe({**obj, "kind": kind}))
        return found

    def plan(self, ctx, current) -> Plan:
        current = current or {"items": [], "lookalikes": [], "caches": [], "foreign": []}
        if current["caches"] and current["items"]:
            return noop(f"namespace kept: it holds the model cache {', '.join(current['caches'])} "
                        f"(--purge-model deletes both)")
        if current.get("foreign") and current["items"]:
            return noop(f"namespace kept: it also holds objects that are not ours "
                        f"({', '.join(current['foreign'][:5])})")
        keep_note = f"; left alone (not ours): {', '.join(current['lookalikes'])}" if current["lookalikes"] else ""
        if self.kind in SHARED_KINDS and not self.all_targets:
            return noop(f"shared by every target: kept (teardown --target=all removes it){keep_note}")
        doomed, kept = [], []
        for obj in current["items"]:
            is_cache = self.kind == "PersistentVolumeClaim" and obj["metadata"]["name"].startswith(MODEL_CACHE_CLAIM)
            (kept if is_cache and not self.purge_model else doomed).append(obj)
        kept_note = f"; kept model cache {', '.join(describe(o) for o in kept)} (--purge-model deletes it)" \
            if kept else ""
        if not doomed:
            return noop(f"no {self.kind} of ours left{kept_note}{keep_note}")
        changes = [Change(f"delete {describe(o)}", "delete", apply=self._deleter(o)) for o in doomed]
        return Plan(changes, diff={"delete": [describe(o) for o in doomed]}, note=f"{kept_note}{keep_note}")

    def _deleter(self, obj: dict):
        def delete(ctx) -> None:
            from kubernetes.dynamic.exceptions import NotFoundError

            meta = obj["metadata"]
            try:
                kube(ctx).resource(self.api_version, self.kind).delete(
                    name=meta["name"], namespace=meta.get("namespace"), propagation_policy="Foreground")
            except NotFoundError:
                return  # already gone: that is what we wanted
            if self.kind in ("StatefulSet", "Deployment"):
                self._wait_pods_gone(ctx)

        return delete

    def _wait_pods_gone(self, ctx) -> None:
        s = ctx.settings
        deadline = time.monotonic() + 600
        for t in self.targets:
            sel = _label_selector(selector(s.target(t)))
            while kube(ctx).core.list_namespaced_pod(s.kube.namespace, label_selector=sel).items:
                if time.monotonic() > deadline:
                    raise StepError(f"pods of {t} still terminating after 10m",
                                    "check `kubectl get pods` for stuck finalizers; re-run teardown")
                ctx.sleep(s.kube.poll_interval_s)


class DeleteNodePool(_ClusterScoped):
    section = "node pools"
    needs = ()

    def __init__(self, settings, target_name: str, *, scale_to_zero: bool):
        self.pool = settings.target(target_name).node_pool.name
        self.scale_to_zero = scale_to_zero
        self.name = f"node pool {self.pool}"

    def observe(self, ctx):
        cluster = describe_cluster(ctx)
        return next((p for p in (cluster or {}).get("nodePools", []) if p.get("name") == self.pool), None)

    def plan(self, ctx, pool) -> Plan:
        s = ctx.settings
        if pool is None:
            return noop(f"node pool {self.pool} does not exist")
        labels = pool.get("config", {}).get("resourceLabels") or {}
        if labels.get("managed-by") != s.gcp_labels["managed-by"]:
            return noop(f"node pool {self.pool} was not created by us (no managed-by label): left alone")
        common = [f"--cluster={s.cluster.name}", *_location_flags(ctx)]
        if self.scale_to_zero:
            auto = pool.get("autoscaling") or {}
            if auto.get("enabled") and int(auto.get("minNodeCount", 0)) == 0:
                return noop(f"node pool {self.pool} already scales to zero (kept for a quick return)")
            return Plan([Change(f"scale node pool {self.pool} to zero (kept)", "update", timeout=OPERATION_TIMEOUT_S,
                                argv=gcloud.argv(ctx, "container", "node-pools", "update", self.pool, *common,
                                                 "--enable-autoscaling", "--min-nodes=0",
                                                 f"--max-nodes={max(1, int(auto.get('maxNodeCount', 1)))}"))])
        return Plan([Change(f"delete node pool {self.pool}", "delete", timeout=OPERATION_TIMEOUT_S,
                            argv=gcloud.argv(ctx, "container", "node-pools", "delete", self.pool, *common,
                                             "--quiet"))])


class DeleteCluster(_ClusterScoped):
    section = "cluster"
    needs = ()

    def __init__(self, settings):
        self.name = f"cluster {settings.cluster.name}"

    def observe(self, ctx):
        return describe_cluster(ctx)

    def plan(self, ctx, cluster) -> Plan:
        s = ctx.settings
        if cluster is None:
            return noop(f"cluster {s.cluster.name} does not exist")
        if (cluster.get("resourceLabels") or {}).get("managed-by") != s.gcp_labels["managed-by"]:
            raise StepError(f"cluster {s.cluster.name} was not created by this tool (no managed-by=gptoss-gke "
                            f"label): refusing to delete it",
                            "delete it yourself if you mean it: gcloud container clusters delete "
                            f"{s.cluster.name} --location={s.cluster_location}")
        return Plan([Change(f"delete cluster {s.cluster.name}", "delete", timeout=OPERATION_TIMEOUT_S,
                            argv=gcloud.argv(ctx, "container", "clusters", "delete", s.cluster.name,
                                             *_location_flags(ctx), "--quiet"))])


def teardown_steps(settings, targets: list[str], *, all_targets: bool, purge_model: bool, purge_images: bool,
                   delete_cluster: bool, scale_to_zero: bool) -> list[Step]:
    steps: list[Step] = [Credentials()]
    for api_version, kind, namespaced in sorted(KINDS, key=lambda k: KIND_ORDER.index(k[1]), reverse=True):
        steps.append(DeleteKubeObjects(settings, api_version, kind, namespaced, targets, all_targets=all_targets,
                                       purge_model=purge_model))
    if purge_model:
        from gptoss_gke.models import purge_model_steps

        steps += purge_model_steps(settings, [t for t in targets if settings.target(t).weights == "bucket"])
    if purge_images:
        from gptoss_gke.images import purge_image_steps

        steps += purge_image_steps(settings, targets)
    if not delete_cluster:
        steps += [DeleteNodePool(settings, t, scale_to_zero=scale_to_zero) for t in targets]
    else:
        steps.append(DeleteCluster(settings))
    return steps
