"""The Artifact Registry repository the serving images live in: created here, and purged here.

`mode: copy` wants a standard Docker repository (images are copied in with skopeo); `mode: remote`
wants a remote repository in front of Docker Hub (nodes pull through it). Format and mode cannot
change on an existing repository: a mismatch is a clear failure, never a silent recreate.

An existing repository is otherwise left alone: we add no labels to one we did not create, since
teardown deletes only what carries our labels (``teardown --purge-images`` deletes the repository only
if this environment created it and no other environment mirrors into it).
"""

from __future__ import annotations

import re

from gptoss_gke.core.step import Change, Plan, noop
from gptoss_gke.errors import StepError
from gptoss_gke.gcp import gcloud
from gptoss_gke.gcp.project import Credentials, GcloudStep
from gptoss_gke.ownership import gcp_owner_problem, kept_for

REPO_FACT = "ar.repository"
DESCRIPTION = "gpt-oss serving images ({mode}), managed by gptoss-gke"
_SERVICE_DISABLED = re.compile(r"SERVICE_DISABLED|has not been used in project|it is disabled", re.I)

_MODES = {"copy": "STANDARD_REPOSITORY", "remote": "REMOTE_REPOSITORY"}
_MODE_WORDS = {"STANDARD_REPOSITORY": "standard", "REMOTE_REPOSITORY": "remote", "VIRTUAL_REPOSITORY": "virtual"}


def registry_host(settings) -> str:
    return settings.registry.host or f"{settings.registry_location}-docker.pkg.dev"


def describe_repository(ctx) -> dict | None:
    """`gcloud artifacts repositories describe`, once per run (None when absent)."""
    s = ctx.settings

    def read():
        try:
            return gcloud.read_json(ctx, "artifacts", "repositories", "describe", s.registry.repository,
                                    f"--location={s.registry_location}",
                                    what=f"Artifact Registry repository {s.registry.repository}")
        except StepError as exc:
            if _SERVICE_DISABLED.search(exc.problem):
                raise StepError(f"the Artifact Registry API is not enabled in project {s.project}",
                                "run `inv setup-cluster` (it enables the APIs) or `gcloud services enable "
                                "artifactregistry.googleapis.com`") from None
            raise

    return ctx.fact(REPO_FACT, read)


def repository_mode(repo: dict) -> str:
    """The API reports an ordinary repository as STANDARD_REPOSITORY (older replies: unset)."""
    mode = repo.get("mode") or "STANDARD_REPOSITORY"
    return "STANDARD_REPOSITORY" if mode == "MODE_UNSPECIFIED" else mode


class ArtifactRepository(GcloudStep):
    section = "registry"
    key = "ar.repository"
    invalidates = (REPO_FACT,)

    def __init__(self, settings):
        self.name = f"repository {settings.registry.repository} ({settings.registry_location})"

    def observe(self, ctx):
        return describe_repository(ctx)

    def _create_argv(self, ctx) -> list[str]:
        s = ctx.settings
        flags = [f"--location={s.registry_location}", "--repository-format=docker",
                 f"--description={DESCRIPTION.format(mode=s.registry.mode)}",
                 f"--labels={gcloud.label_flag(s.gcp_labels)}"]
        if s.registry.mode == "remote":
            flags += ["--mode=remote-repository", "--remote-docker-repo=docker-hub"]
        return gcloud.argv(ctx, "artifacts", "repositories", "create", s.registry.repository, *flags)

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        name, loc, mode = s.registry.repository, s.registry_location, s.registry.mode
        if current is None:
            kind = "remote repository in front of Docker Hub" if mode == "remote" else "Docker repository"
            return Plan([Change(f"create {kind} {name} in {loc}", "create", argv=self._create_argv(ctx))],
                        diff={"repository": "absent → present"})
        fmt = current.get("format", "DOCKER")
        have_mode = repository_mode(current)
        drift = []
        if fmt != "DOCKER":
            drift.append(f"format is {fmt}, want DOCKER")
        if have_mode != _MODES[mode]:
            drift.append(f"it is a {_MODE_WORDS.get(have_mode, have_mode)} repository, registry.mode {mode} "
                         f"wants a {_MODE_WORDS[_MODES[mode]]} one")
        elif mode == "remote":
            upstream = (current.get("remoteRepositoryConfig", {}).get("dockerRepository", {})
                        .get("publicRepository"))
            if upstream != "DOCKER_HUB":
                drift.append(f"its upstream is {upstream or 'a custom registry'}, want Docker Hub")
        if drift:
            raise StepError(
                f"repository {name} in {loc} exists but {'; '.join(drift)} (this cannot change in place)",
                f"set registry.repository to another name in {s.env_file}, or delete the repository "
                f"(gcloud artifacts repositories delete {name} --location={loc}) and re-run")
        why = gcp_owner_problem(current.get("labels"), s)
        whose = f" ({why}: teardown leaves it)" if why else ""
        uri = current.get("registryUri") or f"{loc}-docker.pkg.dev/{s.project}/{name}"
        return noop(f"repository {name} already exists: Docker, {_MODE_WORDS.get(have_mode, have_mode)}, "
                    f"{uri}{whose}", registry_uri=uri)


def repository_kept_for(settings, others: dict) -> str | None:
    """Why our repository stays although we created it: another environment mirrors into it."""
    here = (settings.project, settings.registry_location, settings.registry.repository, registry_host(settings))
    return kept_for(others, lambda o: (o.project, o.registry_location, o.registry.repository,
                                       registry_host(o)) == here)


class PurgeRepository(GcloudStep):
    """teardown --purge-images: the repository, only if this environment created it (our labels) and
    no other environment mirrors into it."""

    section = "images"
    key = "ar.repository.purge"
    invalidates = (REPO_FACT,)
    needs = (Credentials.key,)

    def __init__(self, settings, others: dict | None = None):
        self.others = others or {}
        self.name = f"repository {settings.registry.repository} ({settings.registry_location})"

    def observe(self, ctx):
        return describe_repository(ctx)

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        name, loc = s.registry.repository, s.registry_location
        if current is None:
            return noop(f"repository {name} does not exist in {loc}")
        why = gcp_owner_problem(current.get("labels"), s)
        if why is not None:
            return noop(f"repository {name} is {why}: kept (only our images were removed)")
        shared = repository_kept_for(s, self.others)
        if shared:
            return noop(f"repository {name} kept: {shared} (only our images were removed)")
        return Plan([Change(f"delete repository {name} in {loc} and every image in it", "delete",
                            argv=gcloud.argv(ctx, "artifacts", "repositories", "delete", name, f"--location={loc}",
                                             "--quiet"))])
