"""`inv doctor`: the settings' example values → local tools → credentials → project. Each check reports ok or
failed (with the fix, said once). With ``--on HOST`` the tools and credentials are those of HOST."""

from gptoss_gke.cli import ON_HELP, playbook_task
from gptoss_gke.flags import OptionalValue


@playbook_task(common=("env", "set_", "report"),
               on=OptionalValue(ON_HELP + "; checks that host's tools and credentials (a bastion) and its python"))
def doctor(c, f):
    """Check local tools, gcloud credentials, project access and placeholder settings; print each fix once."""
    from gptoss_gke.playbook import playbook
    from gptoss_gke.preflight import DoctorCredentials, DoctorProject, LocalTool, PlaceholderSettings

    with playbook(c, "doctor", f, needs_project=False) as pb:
        checks = [
            LocalTool("gcloud", ["gcloud", "--version"], why="every cloud step runs it"),
            LocalTool("gke-gcloud-auth-plugin", ["gke-gcloud-auth-plugin", "--version"],
                      why="kubeconfig credentials for GKE"),
            LocalTool("skopeo", ["skopeo", "--version"], why="mirrors images without a Docker daemon"),
            LocalTool("kubectl", ["kubectl", "version", "--client"], required=False,
                      why="handy for looking around; the playbooks use the Kubernetes API directly"),
            DoctorCredentials(),
            DoctorProject(),
        ]
        if pb.remote is not None:
            from gptoss_gke.remote.steps import STAGING_MODULES, RemoteHost

            host = RemoteHost(pb.remote, modules=STAGING_MODULES, purpose="stage-model", modules_required=False)
            for check in checks:
                check.needs = (host.key,)  # one connection failure, not one per check
            checks = [host, *checks]
        pb.run([PlaceholderSettings(), *checks])  # the settings are read here, whichever host is checked
