"""The GKE ComputeClass of a spot capacity profile: created by setup-cluster, deleted by teardown.

It ranks the profile's own node pools (gptoss_gke/profiles.py): spot first and, for
``spot-with-fallback``, the on-demand fallback after it, with active migration back to spot once spot
capacity returns. GKE's autoscaler does the rest; nothing of ours watches the cluster. Never a node
pool GKE would create on its own (``nodePoolAutoCreation`` off, ``DoNotScaleUp``): nothing is billed
outside the pools setup-cluster shows and teardown deletes.
"""

from __future__ import annotations

from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import StepError
from gptoss_gke.gcp.cluster import describe_cluster, gke_version
from gptoss_gke.gcp.project import Credentials
from gptoss_gke.k8s.client import KubernetesApi, KubeStep, kube, kube_for_cluster
from gptoss_gke.k8s.objects import KubeObject
from gptoss_gke.ownership import kube_owner_problem
from gptoss_gke.ownership import selector as ownership_selector
from gptoss_gke.profiles import COMPUTE_CLASS_MIN_GKE, SPOT_WITH_FALLBACK, compute_class_name, is_spot, pools, profile

API_VERSION, KIND = "cloud.google.com/v1", "ComputeClass"


def compute_class(settings, target_name: str) -> dict:
    """The ComputeClass object of the target's spot profile."""
    from gptoss_gke.k8s.manifests import object_labels

    target = settings.target(target_name)
    ranked = [p.shape.name for p in pools(settings, target_name)]
    fallback = profile(settings, target_name) == SPOT_WITH_FALLBACK
    spec = {
        "description": f"gpt-oss {target_name}: spot L4 first" + (", then on-demand" if fallback else ""),
        "priorities": [{"nodepools": [name]} for name in ranked],
        # Only our pools: GKE creates none of its own, and never scales up outside the priorities.
        "nodePoolAutoCreation": {"enabled": False},
        "whenUnsatisfiable": "DoNotScaleUp",
    }
    if fallback:
        # Back to spot when it returns: GKE replaces fallback nodes by higher-priority ones.
        spec["activeMigration"] = {"optimizeRulePriority": True}
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": compute_class_name(target), "labels": object_labels(settings, target)},
            "spec": spec}


def _version_problem(ctx) -> str | None:
    cluster = describe_cluster(ctx)
    have = (cluster or {}).get("currentMasterVersion")
    if have and gke_version(have) < gke_version(COMPUTE_CLASS_MIN_GKE):
        return have
    return None


class ComputeClass(KubeObject):
    """Applied like any of our objects (server-side, diffed against the server's dry run)."""

    section = "capacity"

    def __init__(self, settings, target_name: str):
        super().__init__(compute_class(settings, target_name))
        self.name = f"ComputeClass {self.obj['metadata']['name']} ({target_name}, {profile(settings, target_name)})"

    def observe(self, ctx):
        have = _version_problem(ctx)
        if have:
            s = ctx.settings
            raise StepError(f"cluster {s.cluster.name} runs GKE {have}; a ComputeClass needs >= {COMPUTE_CLASS_MIN_GKE}",
                            f"upgrade the control plane (gcloud container clusters upgrade {s.cluster.name} --master "
                            f"--location={s.cluster_location}), or set the target's capacity: on-demand")
        return super().observe(ctx)


def compute_class_steps(settings, targets: list[str]) -> list:
    return [ComputeClass(settings, t) for t in targets if is_spot(settings, t)]


class DeleteComputeClasses(KubeStep):
    """Teardown: the ComputeClasses of ``targets`` that carry this environment's ownership labels."""

    section = "capacity"
    key = "kube.ComputeClass.delete"

    def __init__(self, settings, targets: list[str], *, kube_steps: tuple[str, ...] = ()):
        from gptoss_gke.ownership import TARGET

        self.targets, self.target_label = targets, TARGET
        self.name = f"ComputeClass of {', '.join(targets)}"
        self.needs = (Credentials.key, KubernetesApi.key, *kube_steps)  # after the pods that select it

    def observe(self, ctx):
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        cluster = describe_cluster(ctx)
        if cluster is None:
            return []
        k = kube_for_cluster(ctx, cluster)
        try:
            res = k.resource(API_VERSION, KIND)
        except ResourceNotFoundError:
            return []  # the cluster serves no ComputeClass kind (GKE older than 1.30.3): none can exist
        items = res.get(label_selector=ownership_selector(ctx.settings)).to_dict()["items"]
        return [o for o in items if (o["metadata"].get("labels") or {}).get(self.target_label) in self.targets
                and kube_owner_problem(o, ctx.settings) is None]

    def plan(self, ctx, current) -> Plan:
        if not current:
            return noop(f"no ComputeClass of ours for {', '.join(self.targets)}")
        return Plan([Change(f"delete ComputeClass {o['metadata']['name']}", "delete", apply=self._deleter(o["metadata"]["name"]))
                     for o in current])

    def _deleter(self, name: str):
        def delete(ctx) -> None:
            from kubernetes.dynamic.exceptions import NotFoundError

            try:
                kube(ctx).resource(API_VERSION, KIND).delete(name=name)
            except NotFoundError:
                pass  # already gone: what we wanted

        return delete
