"""`inv mirror-image`: credentials → the Artifact Registry repository → each target's image (and, with
``--tools`` or ``models.stage_in: cluster``, the tools image in-cluster Jobs run on), pinned by digest."""

from gptoss_gke.cli import playbook_task
from gptoss_gke.flags import Switch


@playbook_task(target="many", tools=Switch("also mirror models.stager_image, the image our in-cluster Jobs run "
                                           "on (always, with models.stage_in: cluster)"))
def mirror_image(c, f):
    """Copy the serving image into Artifact Registry with skopeo (no Docker daemon), pinned by digest."""
    from gptoss_gke.gcp.project import Credentials
    from gptoss_gke.images import TOOLS, mirror_image_steps
    from gptoss_gke.playbook import playbook

    with playbook(c, "mirror-image", f) as pb:
        tools = f.tools or pb.settings.models.stage_in == "cluster"
        pb.run([Credentials(), *mirror_image_steps(pb.settings, [*pb.ctx.targets, *([TOOLS] if tools else [])])])
