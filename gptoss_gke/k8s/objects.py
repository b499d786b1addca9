"""Kubernetes objects, applied and deleted: one step per object to apply, one per kind to delete.

Applying: observe live + server-side dry-run, diff, server-side apply with our manager.

The plan compares the live object with the server's own answer to "what would apply make of it?"
(a server-side dry run), in both directions: a label, annotation, env var or argument we applied
before and no longer send is removed by the apply, so it is a change too. A change to a field that
cannot change in place is found before anything is sent and reported like node-pool drift: what
differs, why, and the exact commands; nothing is deleted for the user.

Deleting (teardown): every object of one kind that carries this environment's ownership labels (and
the target's, unless shared), never a look-alike. GKE does not reliably clean up, when a cluster is
deleted, the load balancers of its Services and Ingresses or the disks of its claims. So before a
cluster deletion those objects are deleted and waited for until their finalizers are released (the
cloud resource is gone).
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import yaml

from gptoss_gke.core.report import format_duration
from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import StepError
from gptoss_gke.gcp.cluster import describe_cluster
from gptoss_gke.gcp.project import Credentials
from gptoss_gke.k8s.client import KubeCheck, KubernetesApi, KubeStep, kube, kube_for_cluster
from gptoss_gke.k8s.manifests import KIND_ORDER, render, selector
from gptoss_gke.ownership import TARGET, kube_owner_problem
from gptoss_gke.ownership import selector as ownership_selector

# Fields the server owns; they differ between any two reads and say nothing about our intent.
_VOLATILE = {("metadata", "resourceVersion"), ("metadata", "managedFields"), ("metadata", "generation"),
             ("metadata", "creationTimestamp"), ("metadata", "uid"), ("status",)}
# Objects every target shares (their target label is whichever target rendered them last).
SHARED_KINDS = {"Namespace", "ServiceAccount", "Secret"}
# What the API server refuses to change in place, per kind (the paths we set).
IMMUTABLE = {
    "StatefulSet": [("spec", "selector"), ("spec", "serviceName"), ("spec", "podManagementPolicy"),
                    ("spec", "volumeClaimTemplates")],
    "Deployment": [("spec", "selector")],
    "Job": [("spec", "selector"), ("spec", "template")],
    "PersistentVolumeClaim": [("spec", "storageClassName"), ("spec", "accessModes"), ("spec", "volumeName"),
                              ("spec", "resources", "requests", "storage")],
    "PersistentVolume": [("spec", "csi"), ("spec", "storageClassName"), ("spec", "capacity")],
}


def describe(obj: dict) -> str:
    meta = obj.get("metadata", {})
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')} {where}{meta.get('name')}"


def object_target(obj: dict) -> str | None:
    """The target an object belongs to (None for the objects every target shares)."""
    if obj.get("kind") in SHARED_KINDS:
        return None
    return ((obj.get("metadata") or {}).get("labels") or {}).get(TARGET)


def diff_objects(live: Any, want: Any, path: tuple = (), *, both_ways: bool = True) -> list[str]:
    """Paths where ``want`` differs from ``live``.

    ``both_ways``: a key only ``live`` has is a difference too (``want`` is the server's full answer,
    so it has every server-added field). Without it, only what ``want`` sets is compared (``want`` is
    a manifest: the server adds defaults)."""
    if path in _VOLATILE or path[:1] == ("status",):
        return []
    if isinstance(want, dict) and isinstance(live, dict):
        keys = list(want) + ([k for k in live if k not in want] if both_ways else [])
        out = []
        for key in keys:
            out += diff_objects(live.get(key), want.get(key), path + (key,), both_ways=both_ways)
        return out
    if isinstance(want, list) and isinstance(live, list):
        if len(want) == len(live):
            out = []
            for i, (a, b) in enumerate(zip(live, want)):
                out += diff_objects(a, b, path + (i,), both_ways=both_ways)
            return out
        named = _by_name(live), _by_name(want)
        if None not in named:  # containers, env, volumes, ports: matched by name, not position
            out = []
            for key in list(named[1]) + ([k for k in named[0] if k not in named[1]] if both_ways else []):
                out += diff_objects(named[0].get(key), named[1].get(key), path + (key,), both_ways=both_ways)
            return out
        if all(not isinstance(x, (dict, list)) for x in live + want):  # args, command: what went, what came
            shown = ".".join(str(p) for p in path)
            gone, came = [x for x in live if x not in want], [x for x in want if x not in live]
            words = ([f"removed {', '.join(_short(x) for x in gone)}"] if gone else []) + \
                ([f"added {', '.join(_short(x) for x in came)}"] if came else [])
            return [f"{shown}: {'; '.join(words) or 'same items, another order'}"]
    if live != want:
        shown = ".".join(str(p) for p in path)
        return [f"{shown}: {_short(live)} → {_short(want)}"]
    return []


def _by_name(items: list) -> dict | None:
    if not all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in items):
        return None
    named = {x["name"]: x for x in items}
    return named if len(named) == len(items) else None


def _short(value: Any) -> str:
    if value is None:
        return "(absent)"
    if isinstance(value, str):
        text = value
    else:  # flow YAML; a bare scalar would end with YAML's "..." document marker
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")
    return text if len(text) <= 120 else text[:117] + "..."


def _dig(obj: Any, path: tuple) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def immutable_drift(live: dict, want: dict) -> list[str]:
    """What differs in fields the API server will not change in place (only what we set counts)."""
    drift = []
    for path in IMMUTABLE.get(want.get("kind"), []):
        mine = _dig(want, path)
        if mine is None:
            continue
        drift += diff_objects(_dig(live, path), mine, path, both_ways=False)
    return drift


def _storage_only_grows(drift: list[str], live: dict, want: dict) -> bool:
    """True when the only immutable difference is a larger volumeClaimTemplate storage request."""
    from kubernetes.utils import parse_quantity

    if not all(".resources.requests.storage:" in d for d in drift):
        return False
    for old, new in zip(_dig(live, ("spec", "volumeClaimTemplates")) or [],
                        _dig(want, ("spec", "volumeClaimTemplates")) or []):
        have, ask = (_dig(t, ("spec", "resources", "requests", "storage")) for t in (old, new))
        if have and ask and parse_quantity(ask) < parse_quantity(have):
            return False
    return True


def immutable_fix(settings, live: dict, want: dict, drift: list[str]) -> str:
    """The exact commands that resolve an immutable difference, in order (or: set the setting back)."""
    kind, meta = want["kind"], want["metadata"]
    name, ns = meta["name"], meta.get("namespace")
    kubectl = f"kubectl --kubeconfig={settings.kubeconfig_path} --context={settings.kube_context}" + \
        (f" -n {ns}" if ns else "")
    target = object_target(want)
    commands: list[str] = []
    why = ""
    if kind == "StatefulSet":
        replicas = int(_dig(live, ("spec", "replicas")) or 1)
        templates = _dig(want, ("spec", "volumeClaimTemplates")) or []
        claims = {(t.get("metadata") or {}).get("name"): [f"{(t.get('metadata') or {}).get('name')}-{name}-{i}"
                                                          for i in range(replicas)] for t in templates}
        if _storage_only_grows(drift, live, want):
            for t in templates:
                size = _dig(t, ("spec", "resources", "requests", "storage"))
                patch = json.dumps({"spec": {"resources": {"requests": {"storage": size}}}})
                commands += [f"{kubectl} patch pvc {c} -p '{patch}'" for c in claims[t["metadata"]["name"]]]
            commands.append(f"{kubectl} delete statefulset {name} --cascade=orphan")
            why = ("the claims grow in place (if their storage class allows expansion; standard-rwo does), then the "
                   "StatefulSet is recreated around the running pods, which keep their data")
        else:
            commands.append(f"{kubectl} delete statefulset {name}")
            if any("volumeClaimTemplates" in d for d in drift):
                commands += [f"{kubectl} delete pvc {c}" for cs in claims.values() for c in cs]
                why = "the pods stop; new claims are made with the new template, so the model is downloaded again"
            else:
                why = "the pods stop and start again; the model cache claims are kept (retention policy)"
    else:
        commands.append(f"{kubectl} delete {kind.lower()} {name}")
    commands.append(f"inv deploy --target={target}" if target else "inv deploy")
    listed = "".join(f"\n      {c}" for c in commands)
    return (f"we never delete and recreate it for you. Set the setting back so the manifest matches the live "
            f"object, or run, in order:{listed}" + (f"\n    ({why})" if why else ""))


class KubeObject(KubeStep):
    section = "kubernetes"

    def __init__(self, obj: dict):
        self.obj = obj
        self.name = describe(obj)
        self.key = f"kube.{obj['kind']}.{describe(obj).split(' ', 1)[1]}"

    def _resource(self, ctx):
        return kube(ctx).resource(self.obj["apiVersion"], self.obj["kind"])

    def _ns(self):
        return self.obj["metadata"].get("namespace")

    def _not_ours(self, ctx, live: dict) -> str | None:
        return kube_owner_problem(live, ctx.settings, object_target(self.obj))

    def observe(self, ctx):
        return self._compare(ctx, self._read_live(ctx))

    def _read_live(self, ctx) -> dict | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        meta = self.obj["metadata"]
        try:
            return self._resource(ctx).get(name=meta["name"], namespace=self._ns()).to_dict()
        except NotFoundError:
            return None

    def _compare(self, ctx, live: dict | None) -> dict:
        res = self._resource(ctx)
        meta = self.obj["metadata"]
        would = None
        drift = immutable_drift(live, self.obj) if live is not None else []
        if live is not None and not drift and self._not_ours(ctx, live) is None:
            # The server's own answer to "what would apply change?": defaults and all.
            would = res.server_side_apply(body=self.obj, name=meta["name"], namespace=self._ns(),
                                          field_manager=ctx.settings.kube.field_manager, force_conflicts=True,
                                          dry_run="All").to_dict()
        return {"live": live, "would": would, "drift": drift}

    def plan(self, ctx, current) -> Plan:
        current = current or {"live": None, "would": None, "drift": []}
        live, would = current["live"], current["would"]
        if live is None:
            body = yaml.safe_dump(self.obj, sort_keys=False).splitlines() if ctx.dry_run else []
            return Plan([Change(f"create {self.name}", "create", apply=self._apply,
                                detail=["+ " + ln for ln in body])], diff={"create": self.name})
        why = self._not_ours(ctx, live)
        if why is not None:
            if self.obj["kind"] == "Namespace":
                return noop(f"{self.name} exists and is {why}: used as is, never deleted by teardown")
            raise StepError(f"{self.name} exists and is {why}: refusing to take it over",
                            "delete or rename that object, or deploy into another kube.namespace")
        if current["drift"]:
            raise StepError(
                f"{self.name} differs in what the API server cannot change in place: "
                f"{'; '.join(current['drift'])}",
                immutable_fix(ctx.settings, live, self.obj, current["drift"]),
                facts={"immutable_drift": current["drift"]})
        changes = diff_objects(live, would)
        if not changes:
            return noop(f"{self.name} matches the manifest (server-side dry run)")
        return Plan([Change(f"update {self.name} ({len(changes)} field{'s' if len(changes) > 1 else ''})",
                            "update", apply=self._apply, detail=["~ " + c for c in changes])],
                     diff={"fields": changes})

    def _apply(self, ctx) -> None:
        meta = self.obj["metadata"]
        self._resource(ctx).server_side_apply(body=self.obj, name=meta["name"], namespace=self._ns(),
                                              field_manager=ctx.settings.kube.field_manager, force_conflicts=True)


def with_image(obj: dict, image: str) -> dict:
    obj = copy.deepcopy(obj)
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        c["image"] = image
    return obj


def _vllm_container(obj: dict) -> dict | None:
    containers = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    return next((c for c in containers if c.get("name") == "vllm"), None)


def startup_probe_failures_of(obj: dict) -> int | None:
    """The vLLM container's startupProbe.failureThreshold (None: no such probe)."""
    probe = (_vllm_container(obj) or {}).get("startupProbe") or {}
    return probe.get("failureThreshold")


def with_startup_probe_failures(obj: dict, failures: int) -> dict:
    obj = copy.deepcopy(obj)
    _vllm_container(obj)["startupProbe"]["failureThreshold"] = failures
    return obj


def _template_changes(live: dict, would: dict) -> bool:
    return bool(diff_objects((live.get("spec") or {}).get("template"), (would.get("spec") or {}).get("template")))


class TargetObject(KubeObject):
    """A rendered object completed with what is known only at run time: the image digest mirror-image
    pinned, and the commit a branch-named revision resolved to while staging."""

    def __init__(self, obj: dict, target_name: str):
        super().__init__(obj)
        self.template = obj
        self.target_name = target_name

    def observe(self, ctx):
        from gptoss_gke.images import pinned_image
        from gptoss_gke.staging.steps import resolved_revision

        s = ctx.settings
        target = s.target(self.target_name)
        resolved = resolved_revision(ctx, self.target_name)
        obj = self.template
        if resolved != target.model_revision:
            kind, meta = self.template["kind"], self.template["metadata"]
            obj = next(o for o in render(s, target.with_overrides(model_revision=resolved), image="-")
                       if o["kind"] == kind and o["metadata"]["name"] == meta["name"])
        obj = with_image(obj, pinned_image(ctx, self.target_name))
        self.obj = obj
        live = self._read_live(ctx)
        if live is None or startup_probe_failures_of(obj) is None or self._not_ours(ctx, live) is not None:
            return self._compare(ctx, live)
        return self._with_measured_startup_probe(ctx, obj, live)

    def _with_measured_startup_probe(self, ctx, obj: dict, live: dict) -> dict:
        """The workload's startupProbe sized from its measured start (k8s/wait.py), without a restart for it.

        A new startupProbe is a new pod template, and a new template restarts the serving pod: a cold start
        to change a timeout. So the measured size is sent only when the template changes anyway (image,
        arguments, ...); until then the live value is kept and the plan says so."""
        from gptoss_gke.k8s.wait import last_startup, startup_probe_failures

        s = ctx.settings
        explicit = s.target_settings(self.target_name).load_timeout_s is not None
        measured = startup_probe_failures(s.target(self.target_name), explicit, last_startup(live))
        kept = startup_probe_failures_of(live)
        self.obj = with_startup_probe_failures(obj, measured)
        if kept is None or kept == measured:
            return self._compare(ctx, live)
        self.obj = with_startup_probe_failures(obj, kept)
        current = self._compare(ctx, live)
        if current["would"] is not None and not _template_changes(live, current["would"]):
            current["startup_probe_deferred"] = {"kept": kept, "measured": measured}
            return current
        self.obj = with_startup_probe_failures(obj, measured)
        return self._compare(ctx, live)

    def plan(self, ctx, current) -> Plan:
        plan = super().plan(ctx, current)
        deferred = (current or {}).get("startup_probe_deferred")
        if deferred:
            from gptoss_gke.k8s.wait import PROBE_PERIOD_S

            kept, measured = (format_duration(deferred[k] * PROBE_PERIOD_S) for k in ("kept", "measured"))
            why = (f"its startupProbe stays at {kept} (the measured start says {measured}) until the pod template "
                   f"changes for another reason: changing it alone would restart the serving pod")
            if not plan.changes:
                return noop(f"{plan.reason}; {why}", startup_probe=deferred)
            plan.note = "; ".join(x for x in (plan.note, why) if x)
        return plan


class OneWorkloadKind(KubeCheck):
    """Before a target's objects are applied: its workload of the other kind (on-demand l4 runs a StatefulSet,
    its spot profiles a Deployment, under one name) must not be ours and still there. Both would sit behind
    the one Service, and the old one would keep its nodes billing."""

    section = "kubernetes"

    def __init__(self, settings, target_name: str):
        self.target_name = target_name
        workload = next(o for o in render(settings, settings.target(target_name), image="-")
                        if o["kind"] in WORKLOAD_KINDS)
        self.other = {"apiVersion": "apps/v1", "kind": next(k for k in WORKLOAD_KINDS if k != workload["kind"]),
                      "metadata": {"name": workload["metadata"]["name"], "namespace": settings.kube.namespace}}
        self.name = f"no {describe(self.other)} of another capacity profile"
        self.key = f"kube.one-workload.{target_name}"

    def observe(self, ctx):
        from kubernetes.dynamic.exceptions import NotFoundError

        meta = self.other["metadata"]
        try:
            live = kube(ctx).resource("apps/v1", self.other["kind"]).get(name=meta["name"],
                                                                         namespace=meta["namespace"]).to_dict()
        except NotFoundError:
            return None
        return live if kube_owner_problem(live, ctx.settings, self.target_name) is None else None

    def verdict(self, ctx, found) -> Plan:
        if found is None:
            return noop(f"{describe(self.other)} of ours is not deployed")
        t = self.target_name
        raise StepError(
            f"{describe(self.other)} (this target's workload under another capacity profile) is still deployed: "
            f"the new one beside it would serve from both and keep its nodes billing",
            f"inv teardown --target={t} --yes (keeps the cluster, the bucket and the weights), then "
            f"inv setup-cluster --target={t} and inv deploy --target={t}; or set targets.{t}.capacity back")


WORKLOAD_KINDS = ("StatefulSet", "Deployment")

# ---------------------------------------------------------------------------------------------
# Deleting

# (apiVersion, kind, namespaced) in apply order; deleted in reverse.
KINDS = [
    ("v1", "Namespace", False),
    ("v1", "ServiceAccount", True),
    ("v1", "Secret", True),
    ("v1", "ConfigMap", True),  # the code our Jobs' pods run (k8s/podcode.py), left if a run stopped before its Job
    ("v1", "PersistentVolume", False),
    ("v1", "PersistentVolumeClaim", True),
    ("v1", "Service", True),
    ("policy/v1", "PodDisruptionBudget", True),
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
DELETE_ORDER = sorted(KINDS, key=lambda k: KIND_ORDER.index(k[1]), reverse=True)  # dependents first


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
        self.key = f"kube.{kind}.delete"
        # What is already gone (or failed) must not stop the rest; no credentials or no view inside
        # the cluster stops all of it.
        self.needs = (Credentials.key, KubernetesApi.key)
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

