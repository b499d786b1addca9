"""`inv stage-model`: credentials and project → the bucket → its IAM grant → each target's weights.

With ``--on HOST`` the first two stay here and the rest runs on HOST (an in-region VM): this checkout
is shipped there, its output relayed live, its results reported here as this run's. With ``--in-cluster``
(or ``models.stage_in: cluster``) the transfer runs as an Indexed Job in the cluster, followed from here
(``gptoss_gke/staging/incluster.py``).
"""

from gptoss_gke.cli import ON_HELP, playbook_task
from gptoss_gke.flags import OptionalValue, Switch


@playbook_task(target="many", on=OptionalValue(ON_HELP + "; the transfer runs there (a VM in the bucket's region)"),
               in_cluster=Switch("run the transfer as a Job in the cluster (as models.stage_in: cluster does)"))
def stage_model(c, f):
    """Hugging Face → Cloud Storage: only what vLLM loads, sha256-verified, resumable; bucket + IAM grant."""
    from gptoss_gke.errors import ToolError
    from gptoss_gke.gcp.project import Credentials, Project
    from gptoss_gke.playbook import playbook
    from gptoss_gke.staging.steps import staging_steps

    with playbook(c, "stage-model", f, remote_shell=False) as pb:
        if pb.remote is not None:
            if f.in_cluster:
                raise ToolError("--on and --in-cluster name two places for one transfer", "pass one of them")
            on_host(pb)
        else:
            pb.run([Credentials(), Project(),
                    *staging_steps(pb.settings, pb.ctx.targets, in_cluster=True if f.in_cluster else None)])


def on_host(pb) -> None:
    """Credentials, project and the host here; the staging steps (``stage_model_steps``) run on the host."""
    from gptoss_gke.gcp.project import Credentials, Project, access_token, describe_project
    from gptoss_gke.remote.steps import STAGING_MODULES, RemoteHost, run_task_remotely

    ctx, session = pb.ctx, pb.remote
    results = pb.run([Credentials(), Project(), RemoteHost(session, modules=STAGING_MODULES, purpose="staging")])
    if any(r.status == "failed" for r in results):
        return
    secrets: dict[str, str | None] = {}
    facts: dict = {}
    if not ctx.shell.offline:
        # Cached by the steps above: gcloud is not asked again. The token lets the host's storage
        # client act as you (it expires in about an hour; the host refreshes through its own gcloud).
        secrets["gcp_access_token"] = access_token(ctx)
        project = describe_project(ctx)
        if project:
            facts["gcp.project"] = project
    if ctx.settings.hf_token:
        secrets["hf_token"] = ctx.settings.hf_token.get_secret_value()
    pb.results.extend(run_task_remotely(ctx, session, "stage-model", secrets=secrets, facts=facts,
                                        not_started=pb.not_started))
    ctx.interrupt.check()  # interrupted while it ran there: end this run as interrupted too
