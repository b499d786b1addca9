"""What `inv doctor` checks: is this machine (and its settings) ready? Every miss comes with the exact fix, once.

Each is a :class:`~gptoss_gke.core.step.Check`: it reports ok or failed, never changed. The chain is
``tasks/doctor.py``.
"""

from __future__ import annotations

import re
import shutil

from gptoss_gke.core.shell import INSTALL_HINTS
from gptoss_gke.core.step import Check, Plan, noop
from gptoss_gke.errors import CannotObserve, StepError
from gptoss_gke.gcp.project import Credentials, Project

MIN_GCLOUD = (450, 0, 0)


class LocalTool(Check):
    section = "doctor"
    needs = ()  # every check runs, whatever the others found

    def __init__(self, tool: str, version_argv: list[str], *, required: bool = True, why: str = ""):
        self.key = f"doctor.{tool}"
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

    def verdict(self, ctx, current) -> Plan:
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


class PlaceholderSettings(Check):
    """Example values still in the settings: fine for --dry-run, refused by every other run."""

    section = "doctor"
    name = "settings"
    key = "doctor.settings"
    needs = ()

    def verdict(self, ctx, current) -> Plan:
        from gptoss_gke.config.checks import placeholders

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
    needs = (Credentials.key,)  # without them the project read fails the same way: one fix, said once
