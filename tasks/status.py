"""`inv status`: where each target's server is: its startup timeline once ready, or the phase it is in now."""

from gptoss_gke.cli import playbook_task


@playbook_task(common=("env", "set_", "report"), target="list")
def status(c, f):
    """The running pod's startup timeline (node, image, weights, compile, ready), or the phase it is in now."""
    from gptoss_gke.k8s.wait import RolloutStatus
    from gptoss_gke.playbook import playbook

    with playbook(c, "status", f) as pb:
        pb.run([RolloutStatus(pb.settings, t) for t in pb.ctx.targets])
