"""`inv deploy`: cluster check → image → weights → namespace, account, secret → objects → rollout → smoke."""

from gptoss_gke.cli import playbook_task
from gptoss_gke.flags import Switch


@playbook_task(
    target="list",
    skip_smoke=Switch("stop after the rollout is ready; do not run the smoke test"),
    rotate_api_key=Switch("generate a new API key even if the Secret has one"),
)
def deploy(c, f):
    """Image → Artifact Registry, weights → GCS, secret, manifests, rollout, smoke test."""
    from gptoss_gke.playbook import playbook

    with playbook(c, "deploy", f) as pb:
        pb.run(deploy_chain(pb.settings, pb.ctx.targets, f))


def deploy_chain(s, targets: list[str], f) -> list:
    """The steps, in order."""
    from gptoss_gke.gcp.cluster import ClusterReady
    from gptoss_gke.gcp.project import Credentials
    from gptoss_gke.images import TOOLS, mirror_image_steps
    from gptoss_gke.k8s.endpoints import ServiceEndpoints
    from gptoss_gke.k8s.objects import OneWorkloadKind
    from gptoss_gke.k8s.wait import Rollout
    from gptoss_gke.profiles import is_spot
    from gptoss_gke.serving import compile_cache
    from gptoss_gke.serving.smoke import VIA_SERVICE, Smoke, default_via
    from gptoss_gke.staging.steps import staging_steps

    # The smoke Job through the Service runs on the tools image, like the staging Job: mirrored once.
    smoke_job = not f.skip_smoke and any(default_via(s, t) == VIA_SERVICE for t in targets)
    steps = [
        Credentials(),
        ClusterReady(s, targets),  # setup-cluster's work is there: said plainly, not three steps later
        # the repository, then each target's image (and the tools image if a Job needs it), pinned by digest
        *mirror_image_steps(s, [*targets, *([TOOLS] if smoke_job else [])]),
        # the bucket, its IAM grant and the weights, for targets served from a bucket
        # (here, or as a Job in the cluster when models.stage_in says so)
        # (the in-cluster Job's image after the repository mirror_image_steps put above)
        *staging_steps(s, [t for t in targets if s.target(t).weights == "bucket"], with_repository=False),
        *compile_cache.grant_steps(s, targets),  # the XLA cache's prefix of the bucket, writable by the pods only
    ]
    for i, name in enumerate(targets):
        steps.append(OneWorkloadKind(s, name))  # a capacity profile switched: the old workload goes first
        steps += kube_steps(s, name, rotate_api_key=f.rotate_api_key, with_secret=i == 0)
        steps.append(Rollout(s, name))
        if not f.skip_smoke:
            if is_spot(s, name):  # what clients of the Service see: a replica per zone behind it
                steps.append(ServiceEndpoints(s, name))
            steps.append(Smoke(s, name))
    # Once each, where first needed: the namespace and service account are shared by the targets, the tools
    # image by the Jobs.
    seen: set[str] = set()
    return [step for step in steps if not (step.key in seen or seen.add(step.key))]


def kube_steps(settings, target_name: str, *, rotate_api_key: bool, with_secret: bool) -> list:
    """One target's objects in apply order, the API-key Secret right after the service account."""
    from gptoss_gke.k8s.manifests import render
    from gptoss_gke.k8s.objects import TargetObject
    from gptoss_gke.k8s.secret import ApiKeySecret

    steps = []
    for obj in render(settings, settings.target(target_name), image="(pinned at run time)"):
        steps.append(TargetObject(obj, target_name))
        if obj["kind"] == "ServiceAccount" and with_secret:
            steps.append(ApiKeySecret(settings, rotate=rotate_api_key))
    return steps
