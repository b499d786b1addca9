"""Credentials, the project, and the APIs the chain needs."""

from __future__ import annotations

from gptoss_gke.core.step import Change, Check, Plan, Step, noop
from gptoss_gke.errors import CannotObserve, CommandFailed, StepError
from gptoss_gke.gcp import gcloud

# container: GKE; artifactregistry: images; storage: weights; iamcredentials + sts: Workload
# Identity tokens for the pods; compute: node pools' VMs.
REQUIRED_APIS = (
    "compute.googleapis.com",
    "container.googleapis.com",
    "artifactregistry.googleapis.com",
    "storage.googleapis.com",
    "iamcredentials.googleapis.com",
    "sts.googleapis.com",
)
# GKE image streaming reads image layers through the Container File System API; without it gcloud
# only warns and nodes silently pull whole images.
IMAGE_STREAMING_API = "containerfilesystem.googleapis.com"


def required_apis(settings) -> tuple[str, ...]:
    return REQUIRED_APIS + ((IMAGE_STREAMING_API,) if settings.cluster.image_streaming else ())


def access_token(ctx) -> str:
    """gcloud's own identity, shared with the Python clients so nobody logs in twice."""

    def fetch() -> str:
        try:
            token = ctx.shell.read(["gcloud", "auth", "print-access-token", "--quiet"]).stdout.strip()
        except CommandFailed as exc:
            raise gcloud.classify(exc, what="an access token") from None
        ctx.redact.add(token)
        return token

    return ctx.fact("gcp.access_token", fetch)


def describe_project(ctx) -> dict | None:
    """`gcloud projects describe`, once per run (it also proves the credentials work)."""
    return ctx.fact("gcp.project", lambda: gcloud.read_json(ctx, "projects", "describe", ctx.settings.project,
                                                            what="the project", project=False))


def project_number(ctx) -> str:
    """The project number (IAM principals name it)."""
    data = describe_project(ctx)
    if not data or not data.get("projectNumber"):
        raise StepError(f"project {ctx.settings.project} was not found or you cannot see it",
                        f"check `project:` in {ctx.settings.env_file}")
    return str(data["projectNumber"])


class GcloudStep(Step):
    """A step whose writes are gcloud commands: errors are classified (409 → re-observe)."""

    def apply(self, ctx, change: Change) -> None:
        if change.apply is not None:
            change.apply(ctx)
        else:
            gcloud.write(ctx, change.argv, what=change.summary, timeout=change.timeout)


def _first_read(ctx, read):
    """The run's first gcloud read: when it cannot be made at all (gcloud missing, no usable
    credentials, no network), every later read would fail the same way, so none is started. The
    cause is said once, here, with its fix; a dry-run plans the rest without reading."""
    try:
        return read()
    except CannotObserve as exc:
        ctx.shell.offline = exc.problem
        raise


BLIND_PLAN = "nothing below is read: the plan shows what would be done if nothing existed"


class Credentials(Check):
    section = "auth"
    name = "gcloud credentials"
    key = "gcp.credentials"
    gate = True

    def observe(self, ctx):
        _first_read(ctx, lambda: access_token(ctx))
        return {"token": True}

    def verdict(self, ctx, current) -> Plan:
        if current is None:  # a dry-run without credentials (anywhere else the step failed)
            return noop(BLIND_PLAN)
        return noop("gcloud has a usable access token; the Python clients reuse this identity")


class Project(Check):
    """Reading the project proves the credentials too, so this one read is the early check.

    A gate: when gcloud or its credentials are missing, that is said once, first, and no other read
    is started (each would fail the same way, and print its own command line).
    """

    section = "auth"
    name = "credentials and project"
    key = "gcp.project"
    gate = True

    def observe(self, ctx):
        return _first_read(ctx, lambda: describe_project(ctx))

    def verdict(self, ctx, current) -> Plan:
        p = ctx.settings.project
        if current is None:
            if ctx.shell.offline:  # a dry-run that could not read the project
                return noop(BLIND_PLAN)
            raise StepError(f"project {p} was not found or you cannot see it",
                            f"check `project:` in {ctx.settings.env_file}, or ask for roles/viewer on {p}")
        state = current.get("lifecycleState", "ACTIVE")
        if state != "ACTIVE":
            raise StepError(f"project {p} is {state}", "restore the project or choose another one")
        return noop(f"project {p} is reachable (number {current.get('projectNumber')})",
                    project_number=current.get("projectNumber"))


class Apis(GcloudStep):
    section = "project"
    name = "APIs"
    key = "gcp.apis"

    def observe(self, ctx):
        data = gcloud.read_json(ctx, "services", "list", "--enabled", what="enabled APIs", absent_ok=False)
        return {s.get("config", {}).get("name") or s.get("name", "").rsplit("/", 1)[-1] for s in data or []}

    def plan(self, ctx, current) -> Plan:
        enabled = current or set()
        wanted = required_apis(ctx.settings)
        missing = [api for api in wanted if api not in enabled]
        if not missing:
            return noop(f"all {len(wanted)} required APIs already enabled")
        return Plan(changes=[Change(f"enable {', '.join(missing)}", action="create",
                                    argv=gcloud.argv(ctx, "services", "enable", *missing))],
                    diff={"enable": missing})
