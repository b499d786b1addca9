"""The teardown playbook: delete only what this environment created, never blind, confirmed, idempotent.

Deletion steps are ordinary steps whose plan is "delete these" and whose no-op says why nothing is
left. The task runs them twice: a read-only preview that lists everything (and stops the whole
teardown, deleting nothing, if anything could not be seen), a confirmation, then the real pass, which
deletes only what the list showed and prints only what it deletes.

"Ours" is this tool *and* this environment (and target): see :mod:`gptoss_gke.ownership`.

GKE does not reliably clean up, when a cluster is deleted, the load balancers of its Services and
Ingresses or the disks of its claims. So with ``--delete-cluster`` those objects are deleted first
and waited for until their finalizers are released (the cloud resource is gone), and the cluster or a
node pool is deleted only when every Kubernetes step could see its objects. ``--force`` overrides
that one rule, saying what may be left behind.
"""

from __future__ import annotations

import time

from gptoss_gke.core.report import format_duration
from gptoss_gke.core.result import StepResult
from gptoss_gke.core.step import Change, Plan, Step, noop
from gptoss_gke.errors import CannotObserve, StepError
from gptoss_gke.gcp import gcloud
from gptoss_gke.gcp.cluster import OPERATION_TIMEOUT_S, _ClusterScoped, _location_flags, describe_cluster
from gptoss_gke.gcp.project import Credentials
from gptoss_gke.k8s.apply import SHARED_KINDS, describe
from gptoss_gke.k8s.client import KubeStep, kube, kube_for_cluster
from gptoss_gke.k8s.manifests import KIND_ORDER, render, selector
from gptoss_gke.ownership import TARGET, gcp_owner_problem, kube_owner_problem
from gptoss_gke.ownership import selector as ownership_selector

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
# What Kubernetes itself puts in every namespace: not a reason to keep one.
_BUILT_IN = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}
MODEL_CACHE_CLAIM = "model-cache"  # the l4 StatefulSet's volumeClaimTemplate
# Deleting these releases a cloud resource (a load balancer, a disk) once their finalizers run.
CLOUD_BACKED = {"Service", "Ingress", "PersistentVolumeClaim"}
GONE_TIMEOUT_S = 900  # a GKE load balancer takes minutes to go
MAY_BE_ORPHANED = ("external load balancers (gcloud compute forwarding-rules list "
                   "--filter='description~kubernetes.io/service-name') and persistent disks (gcloud compute disks "
                   "list --filter='description~kubernetes.io/created-for/pvc')")
FORCE_BLIND = ("--force: nothing is deleted through the Kubernetes API; the node pools/cluster are deleted anyway "
               "and may leave behind " + MAY_BE_ORPHANED)


def kube_api_name(settings) -> str:
    return f"Kubernetes API of cluster {settings.cluster.name}"


class KubernetesApi(KubeStep):
    """Can we see inside the cluster at all, through a context that really is this cluster's? Said
    once, here; every Kubernetes step (and, without --force, every pool/cluster deletion) needs it."""

    section = "kubernetes"
    needs = (Credentials.name,)

    def __init__(self, settings, *, force: bool):
        self.name = kube_api_name(settings)
        if force:
            self.if_unobservable = FORCE_BLIND

    def observe(self, ctx):
        cluster = describe_cluster(ctx)
        if cluster is None:
            return None
        k = kube_for_cluster(ctx, cluster)
        return {"server": k.api_client.configuration.host}

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        if current is None:
            return noop(f"cluster {s.cluster.name} does not exist: nothing of ours can be in it")
        return noop(f"context {s.kube_context} reaches cluster {s.cluster.name} ({current['server']})")


class DeleteKubeObjects(KubeStep):
    """Every object of one kind that carries our labels (and the target's, unless shared)."""

    section = "kubernetes"

    @staticmethod
    def title(kind: str, targets: list[str]) -> str:
        return f"{kind} objects" + ("" if kind in SHARED_KINDS else f" of {', '.join(targets)}")

    def __init__(self, settings, api_version: str, kind: str, namespaced: bool, targets: list[str], *,
                 all_targets: bool, purge_model: bool, delete_cluster: bool = False):
        self.api_version, self.kind, self.namespaced = api_version, kind, namespaced
        self.targets = targets
        self.all_targets = all_targets
        self.purge_model = purge_model
        # A claim left behind by a cluster deletion is an orphaned, billed disk nobody sees.
        self.keep_cache = not purge_model and not delete_cluster
        self.wait_gone = delete_cluster and kind in CLOUD_BACKED
        self.name = self.title(kind, targets)
        # What is already gone (or failed) must not stop the rest; no credentials or no view inside
        # the cluster stops all of it.
        self.needs = (Credentials.name, kube_api_name(settings))
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
        cluster = describe_cluster(ctx)
        if cluster is None:
            return None  # no cluster, no objects: nothing to delete
        k = kube_for_cluster(ctx, cluster)
        res = k.resource(self.api_version, self.kind)
        ns = s.kube.namespace if self.namespaced else None
        try:
            items = res.get(namespace=ns, label_selector=ownership_selector(s)).to_dict()["items"]
        except NotFoundError:  # the namespace itself is gone
            items = []
        if self.kind not in SHARED_KINDS:
            items = [o for o in items if (o["metadata"].get("labels") or {}).get(TARGET) in self.targets]
        # Already being deleted (finalizers running, e.g. pvc-protection): nothing left for us to do,
        # unless the cluster goes next: then we wait for it to be gone.
        terminating = [o for o in items if o["metadata"].get("deletionTimestamp")]
        items = [o for o in items if not o["metadata"].get("deletionTimestamp")]
        caches = []
        if self.kind == "Namespace" and self.keep_cache:
            # Deleting a namespace deletes what is in it: the kept model cache would go too.
            claims = k.resource("v1", "PersistentVolumeClaim").get(
                namespace=s.kube.namespace, label_selector=ownership_selector(s)).to_dict()["items"]
            caches = [describe(c) for c in claims if c["metadata"]["name"].startswith(MODEL_CACHE_CLAIM)]
        foreign = self._foreign_residents(ctx, k) if self.kind == "Namespace" and items else []
        lookalikes = []
        found = {(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in items + terminating}
        for ns_name, name in sorted(self.our_names - found, key=str):
            try:
                other = res.get(name=name, namespace=ns_name).to_dict()
            except NotFoundError:
                continue
            why = kube_owner_problem(other, s)
            if why is not None:
                lookalikes.append(f"{describe(other)}, {why}")
        return {"items": items, "terminating": terminating if self.wait_gone else [], "lookalikes": lookalikes,
                "caches": caches, "foreign": foreign}

    def _foreign_residents(self, ctx, k) -> list[str]:
        """Objects in our namespace that are not ours, of every kind the API server lists there (custom
        resources included): deleting the namespace would delete them too."""
        s = ctx.settings
        found = []
        for api_version, kind, plural in k.namespaced_kinds():
            for obj in k.list_namespaced(api_version, plural, s.kube.namespace):
                meta = obj.get("metadata") or {}
                if (kind, meta.get("name")) in _BUILT_IN or meta.get("ownerReferences"):
                    continue  # Kubernetes' own, or made by a controller for an owner we judge instead
                if kube_owner_problem(obj, s) is not None:
                    found.append(describe({**obj, "kind": kind}))
        return sorted(found)

    def plan(self, ctx, current) -> Plan:
        current = current or {"items": [], "terminating": [], "lookalikes": [], "caches": [], "foreign": []}
        if current["caches"] and current["items"]:
            return noop(f"namespace kept: it holds the model cache {', '.join(current['caches'])} "
                        f"(--purge-model deletes both)")
        if current.get("foreign") and current["items"]:
            more = f" and {len(current['foreign']) - 5} more" if len(current["foreign"]) > 5 else ""
            return noop(f"namespace kept: it also holds objects that are not ours "
                        f"({', '.join(current['foreign'][:5])}{more})", foreign=current["foreign"])
        keep_note = f"; left alone: {', '.join(current['lookalikes'])}" if current["lookalikes"] else ""
        if self.kind in SHARED_KINDS and not self.all_targets:
            return noop(f"shared by every target: kept (teardown --target=all removes it){keep_note}")
        doomed, kept = [], []
        for obj in current["items"]:
            is_cache = self.kind == "PersistentVolumeClaim" and obj["metadata"]["name"].startswith(MODEL_CACHE_CLAIM)
            (kept if is_cache and self.keep_cache else doomed).append(obj)
        kept_note = f"; kept model cache {', '.join(describe(o) for o in kept)} (--purge-model deletes it)" \
            if kept else ""
        changes = [Change(f"delete {describe(o)}", "delete", apply=self._deleter(o)) for o in doomed]
        # Deleted earlier but not gone yet (a load balancer still being removed): the cluster waits for it.
        changes += [Change(f"wait for {describe(o)} to be gone (being deleted)", "delete", apply=self._waiter(o))
                    for o in current["terminating"]]
        if not changes:
            return noop(f"no {self.kind} of ours left{kept_note}{keep_note}")
        why = " (the cluster is deleted next: waiting until its cloud resources are gone)" if self.wait_gone else ""
        return Plan(changes, diff={"delete": [describe(o) for o in doomed]}, note=f"{why}{kept_note}{keep_note}")

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
            if self.wait_gone:
                self._wait_gone(ctx, obj)

        return delete

    def _waiter(self, obj: dict):
        return lambda ctx: self._wait_gone(ctx, obj)

    def _wait_gone(self, ctx, obj: dict) -> None:
        """Until the object (and a claim's dynamically provisioned volume) no longer exists: their
        finalizers are released only once the load balancer or disk behind them is deleted."""
        meta = obj["metadata"]
        self._wait_absent(ctx, self.api_version, self.kind, meta["name"], meta.get("namespace"))
        volume = (obj.get("spec") or {}).get("volumeName") if self.kind == "PersistentVolumeClaim" else None
        if volume:
            self._wait_absent(ctx, "v1", "PersistentVolume", volume, None)

    def _wait_absent(self, ctx, api_version: str, kind: str, name: str, namespace: str | None) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError

        res = kube(ctx).resource(api_version, kind)
        started = time.monotonic()
        shown = None
        while True:
            try:
                live = res.get(name=name, namespace=namespace).to_dict()
            except NotFoundError:
                return
            if kind == "PersistentVolume" and (live.get("spec") or {}).get("persistentVolumeReclaimPolicy") != "Delete":
                return  # kept by its reclaim policy: no disk is deleted with it (ours are deleted as objects)
            finalizers = ", ".join(live["metadata"].get("finalizers") or []) or "none"
            line = f"  waiting for {kind} {name} to be gone (finalizers: {finalizers})"
            if line != shown:
                ctx.printer.line(line, "dim")
                shown = line
            waited = time.monotonic() - started
            if waited > GONE_TIMEOUT_S:
                raise StepError(f"{kind} {name} still exists {format_duration(waited)} after deletion "
                                f"(finalizers: {finalizers}); the cluster is not deleted while it does",
                                f"its controller has not released it: `kubectl describe {kind.lower()} {name}` "
                                f"says why; re-run teardown once it is gone")
            ctx.sleep(ctx.settings.kube.poll_interval_s)

    def _wait_pods_gone(self, ctx) -> None:
        s = ctx.settings
        deadline = time.monotonic() + 600
        for t in self.targets:
            sel = ",".join(f"{k}={v}" for k, v in selector(s.target(t)).items())
            while kube(ctx).core.list_namespaced_pod(s.kube.namespace, label_selector=sel).items:
                if time.monotonic() > deadline:
                    raise StepError(f"pods of {t} still terminating after 10m",
                                    "check `kubectl get pods` for stuck finalizers; re-run teardown")
                ctx.sleep(s.kube.poll_interval_s)


def _blind(ctx, cluster: dict) -> str | None:
    """Why the Kubernetes objects of ``cluster`` cannot be seen (None: they can)."""
    try:
        kube_for_cluster(ctx, cluster)
    except CannotObserve as exc:
        return exc.problem
    return None


class DeleteNodePool(_ClusterScoped):
    section = "node pools"

    def __init__(self, settings, target_name: str, *, scale_to_zero: bool, kube_steps: list[str] = (),
                 force: bool = False):
        self.pool = settings.target(target_name).node_pool.name
        self.scale_to_zero = scale_to_zero
        self.force = force
        self.name = f"node pool {self.pool}"
        # Never while the objects on it could not be seen (unless --force says so).
        self.needs = (Credentials.name, *kube_steps) + (() if force else (kube_api_name(settings),))

    def observe(self, ctx):
        cluster = describe_cluster(ctx)
        pool = next((p for p in (cluster or {}).get("nodePools", []) if p.get("name") == self.pool), None)
        if pool is None:
            return None
        return {"pool": pool, "blind": _blind(ctx, cluster) if self.force else None}

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        if current is None:
            return noop(f"node pool {self.pool} does not exist")
        pool = current["pool"]
        why = gcp_owner_problem(pool.get("config", {}).get("resourceLabels"), s)
        if why is not None:
            return noop(f"node pool {self.pool} is {why}: left alone")
        common = [f"--cluster={s.cluster.name}", *_location_flags(ctx)]
        blind = f" (--force: {current['blind']})" if current.get("blind") else ""
        if self.scale_to_zero:
            auto = pool.get("autoscaling") or {}
            if auto.get("enabled") and int(auto.get("minNodeCount", 0)) == 0:
                return noop(f"node pool {self.pool} already scales to zero (kept for a quick return)")
            return Plan([Change(f"scale node pool {self.pool} to zero (kept){blind}", "update",
                                timeout=OPERATION_TIMEOUT_S,
                                argv=gcloud.argv(ctx, "container", "node-pools", "update", self.pool, *common,
                                                 "--enable-autoscaling", "--min-nodes=0",
                                                 f"--max-nodes={max(1, int(auto.get('maxNodeCount', 1)))}"))])
        return Plan([Change(f"delete node pool {self.pool}{blind}", "delete", timeout=OPERATION_TIMEOUT_S,
                            argv=gcloud.argv(ctx, "container", "node-pools", "delete", self.pool, *common,
                                             "--quiet"))])


class DeleteCluster(_ClusterScoped):
    section = "cluster"

    def __init__(self, settings, *, kube_steps: list[str] = (), force: bool = False):
        self.name = f"cluster {settings.cluster.name}"
        self.force = force
        self.needs = (Credentials.name, *kube_steps) + (() if force else (kube_api_name(settings),))

    def observe(self, ctx):
        cluster = describe_cluster(ctx)
        if cluster is None:
            return None
        return {"cluster": cluster, "blind": _blind(ctx, cluster) if self.force else None}

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        if current is None:
            return noop(f"cluster {s.cluster.name} does not exist")
        why = gcp_owner_problem(current["cluster"].get("resourceLabels"), s)
        if why is not None:
            raise StepError(f"cluster {s.cluster.name} is {why}: refusing to delete it",
                            f"run teardown without --delete-cluster to remove only what environment {s.env_name} "
                            f"created in it; delete the cluster yourself if you mean it: gcloud container clusters "
                            f"delete {s.cluster.name} --location={s.cluster_location}")
        change = Change(f"delete cluster {s.cluster.name}", "delete", timeout=OPERATION_TIMEOUT_S,
                        argv=gcloud.argv(ctx, "container", "clusters", "delete", s.cluster.name,
                                         *_location_flags(ctx), "--quiet"))
        if current.get("blind"):
            change.summary += f" (--force: {current['blind']})"
            change.detail = [f"may be left behind: {MAY_BE_ORPHANED}"]
        return Plan([change])


def teardown_steps(settings, targets: list[str], *, all_targets: bool, purge_model: bool, purge_images: bool,
                   delete_cluster: bool, scale_to_zero: bool, force: bool = False,
                   others: dict | None = None) -> list[Step]:
    """``others``: every other environment (name → Settings, or the error loading it); what they share
    with this one (a bucket grant, a mirrored tag, staged weights, a repository) is kept."""
    steps: list[Step] = [Credentials(), KubernetesApi(settings, force=force)]
    kube_steps = []
    for api_version, kind, namespaced in sorted(KINDS, key=lambda k: KIND_ORDER.index(k[1]), reverse=True):
        step = DeleteKubeObjects(settings, api_version, kind, namespaced, targets, all_targets=all_targets,
                                 purge_model=purge_model, delete_cluster=delete_cluster)
        kube_steps.append(step.name)
        steps.append(step)
    if purge_model:
        from gptoss_gke.models import purge_model_steps

        steps += purge_model_steps(settings, [t for t in targets if settings.target(t).weights == "bucket"], others)
    if purge_images:
        from gptoss_gke.images import purge_image_steps

        steps += purge_image_steps(settings, targets, others)
    if not delete_cluster:
        steps += [DeleteNodePool(settings, t, scale_to_zero=scale_to_zero, kube_steps=kube_steps, force=force)
                  for t in targets]
    else:
        steps.append(DeleteCluster(settings, kube_steps=kube_steps, force=force))
    return steps


def not_deleted(preview: list[StepResult]) -> list[StepResult]:
    """The preview's results as the recap of a teardown that stopped before deleting: what it would
    have deleted is reported as not done, never as changed."""
    out = []
    for r in preview:
        if r.status == "changed":
            r.action, r.changed = "skip", False
            r.reason = "not deleted (teardown stopped before deleting anything): " + r.reason.removeprefix("would ")
        out.append(r)
    return out
