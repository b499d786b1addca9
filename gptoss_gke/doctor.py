"""`inv doctor`: is this machine (and its settings) ready? Every miss comes with the exact fix, once."""

from __future__ import annotations

import re
import shutil

from gptoss_gke.core.shell import INSTALL_HINTS
from gptoss_gke.core.step import Plan, Step, noop
from gptoss_gke.errors import CannotObserve, CommandFailed, StepError
from gptoss_gke.gcp.project import Credentials, Project

MIN_GCLOUD = (450, 0, 0)


class LocalTool(Step):
    section = "doctor"
    needs = ()  # every check runs, whatever the others found

    def __init__(self, tool: str, version_argv: list[str], *, required: bool = True, why: str = ""):
        self.tool = tool
        self.version_argv = version_argv
        self.required = required
        self.why = why
        self.name = tool

    def observe(self, ctx):
        if shutil.which(self.tool) is None and ctx.shell.where == "local":
            return None
        try:
            res = ctx.shell.read(self.version_argv, ok_codes=(0, 1))
        except CannotObserve:
            return None
        text = (res.stdout or res.stderr).strip().splitlines()
        return text[0] if text else "(version unknown)"

    def plan(self, ctx, current) -> Plan:
        if current is None:
            if not self.required:
                return noop(f"{self.tool} not found (optional: {self.why}); install: {INSTALL_HINTS[self.tool]}")
            raise StepError(f"{self.tool} not found on PATH ({self.why})", INSTALL_HINTS.get(self.tool))
        if self.tool == "gcloud":
            m = re.search(r"(\d+)\.(\d+)\.(\d+)", current)
            if m and tuple(map(int, m.groups())) < MIN_GCLOUD:
                raise StepError(f"{current} is older than {'.'.join(map(str, MIN_GCLOUD))}",
                                "gcloud components update")
        return noop(f"{current}")


class PlaceholderSettings(Step):
    """Example values still in the settings: fine for --dry-run, refused by every other run."""

    section = "doctor"
    name = "settings"
    needs = ()

    def plan(self, ctx, current) -> Plan:
        from gptoss_gke.config import placeholders

        found = placeholders(ctx.settings)
        if not found:
            return noop(f"{ctx.settings.env_file or 'settings'}: no example values left (project, bucket, hosts)")
        fixes = list(dict.fromkeys(p.fix for p in found))  # each fix once
        raise StepError("placeholder settings (accepted only with --dry-run): "
                        + "; ".join(f"{p.key} at {p.where}" for p in found), "; ".join(fixes))


class _Independent:
    needs = ()
    gate = False


class DoctorCredentials(_Independent, Credentials):
    section = "doctor"


class DoctorProject(_Independent, Project):
    section = "doctor"
    needs = ("gcloud credentials",)  # without them the project read fails the same way: one fix, said once


def doctor_steps() -> list[Step]:
    """The machine's checks (run where --on points); the settings are checked here, by PlaceholderSettings."""
    return [
        LocalTool("gcloud", ["gcloud", "--version"],
                  why="every cloud step runs it"),
        LocalTool("gke-gcloud-auth-plugin", ["gke-gcloud-auth-plugin", "--version"],
                  why="kubeconfig credentials for GKE"),
        LocalTool("skopeo", ["skopeo", "--version"], why="mirrors images without a Docker daemon"),
        LocalTool("kubectl", ["kubectl", "version", "--client"], required=False,
                  why="handy for looking around; the playbooks use the Kubernetes API directly"),
        DoctorCredentials(),
        DoctorProject(),
    ]


__all__ = ["doctor_steps", "CommandFailed"]
