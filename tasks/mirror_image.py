"""`inv mirror-image`: credentials → the Artifact Registry repository → each target's image, pinned by digest."""

from gptoss_gke.cli import playbook_task


@playbook_task(target="many")
def mirror_image(c, f):
    """Copy the serving image into Artifact Registry with skopeo (no Docker daemon), pinned by digest."""
    from gptoss_gke.gcp.project import Credentials
    from gptoss_gke.images import mirror_image_steps
    from gptoss_gke.playbook import playbook

    with playbook(c, "mirror-image", f) as pb:
        pb.run([Credentials(), *mirror_image_steps(pb.settings, pb.ctx.targets)])
