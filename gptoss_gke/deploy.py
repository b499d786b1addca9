"""The deploy playbook: cluster check → image → weights → namespace, account, secret → apply → wait → smoke."""

from __future__ import annotations

import copy

from gptoss_gke.core.step import Plan, Step, noop
from gptoss_gke.errors import StepError
from gptoss_gke.gcp.cluster import describe_cluster
from gptoss_gke.gcp.project import Credentials
from gptoss_gke.k8s.apply import KubeObject
from gptoss_gke.k8s.manifests import render
from gptoss_gke.k8s.secret import ApiKeySecret
from gptoss_gke.k8s.wait import Rollout


class ClusterReady(Step):
    """Deploy needs what setup-cluster makes; say so plainly instead of failing three steps later."""

    section = "cluster"

    def __init__(self, settings, targets: list[str]):
        self.pools = {t: settings.target(t).node_pool.name for t in targets}
        self.name = f"cluster {settings.cluster.name} and node pool(s) {', '.join(self.pools.values())}"

    def observe(self, ctx):
        return describe_cluster(ctx)

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        fix = f"run `inv setup-cluster --target={','.join(self.pools)}` first"
        if current is None:
            if ctx.dry_run:
                return noop("cluster not observed; setup-cluster creates it")
            raise StepError(f"cluster {s.cluster.name} not found in {s.cluster_location}", fix)
        have = {p.get("name") for p in current.get("nodePools", [])}
        missing = [p for p in self.pools.values() if p not in have]
        if missing:
            raise StepError(f"node pool(s) {', '.join(missing)} missing from cluster {s.cluster.name}", fix)
        return noop(f"cluster {s.cluster.name} has node pool(s) {', '.join(self.pools.values())}")


def with_image(obj: dict, image: str) -> dict:
    obj = copy.deepcopy(obj)
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        c["image"] = image
    return obj


class TargetObject(KubeObject):
    """A rendered object completed with what is known only at run time: the image digest mirror-image
    pinned, and the commit a branch-named revision resolved to while staging."""

    def __init__(self, obj: dict, target_name: str):
        super().__init__(obj)
        self.template = obj
        self.target_name = target_name

    def observe(self, ctx):
        from gptoss_gke.images import pinned_image
        from gptoss_gke.models import resolved_revision

        s = ctx.settings
        target = s.target(self.target_name)
        resolved = resolved_revision(ctx, self.target_name)
        obj = self.template
        if resolved != target.model_revision:
            kind, meta = self.template["kind"], self.template["metadata"]
            obj = next(o for o in render(s, target.with_overrides(model_revision=resolved), image="-")
                       if o["kind"] == kind and o["metadata"]["name"] == meta["name"])
        self.obj = with_image(obj, pinned_image(ctx, self.target_name))
        return super().observe(ctx)


def kube_steps(settings, target_name: str, *, rotate_api_key: bool, with_secret: bool) -> list[Step]:
    target = settings.target(target_name)
    steps: list[Step] = []
    for obj in render(settings, target, image="(pinned at run time)"):
        steps.append(TargetObject(obj, target_name))
        if obj["kind"] == "ServiceAccount" and with_secret:
            steps.append(ApiKeySecret(settings, rotate=rotate_api_key))
    return steps


def deploy_steps(settings, targets: list[str], *, rotate_api_key: bool = False, skip_smoke: bool = False) -> list[Step]:
    from gptoss_gke.images import mirror_image_steps
    from gptoss_gke.models import stage_model_steps

    steps: list[Step] = [Credentials(), ClusterReady(settings, targets)]
    steps += mirror_image_steps(settings, targets)
    bucket_targets = [t for t in targets if settings.target(t).weights == "bucket"]
    if bucket_targets:
        steps += stage_model_steps(settings, bucket_targets)
    seen: set[str] = set()
    for i, name in enumerate(targets):
        for step in kube_steps(settings, name, rotate_api_key=rotate_api_key, with_secret=i == 0):
            if step.name in seen:  # namespace and service account are shared by the targets
                continue
            seen.add(step.name)
            steps.append(step)
        steps.append(Rollout(settings, name))
        if not skip_smoke:
            from gptoss_gke.serving.smoke import Smoke

            steps.append(Smoke(settings, name))
    return steps
