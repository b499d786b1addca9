"""Calling gcloud: JSON reads, and its error text turned into problems with fixes."""

from __future__ import annotations

import json
import re
from typing import Any

from gptoss_gke.errors import CannotObserve, CommandFailed, Conflict, StepError

_NOT_FOUND = re.compile(r"NOT_FOUND|code=404|was not found|does not exist|not found", re.I)
_NO_AUTH = re.compile(
    r"do not currently have an active account|Reauthentication|could not be refreshed|"
    r"problem refreshing your current auth tokens|invalid_grant|Your current active account .* does not have "
    r"any valid credentials|Please run:\s+\$ gcloud auth login|UNAUTHENTICATED|code=401", re.I)
_OFFLINE = re.compile(r"Failed to resolve|Name or service not known|NameResolutionError|Temporary failure in "
                      r"name resolution|Unable to find the server|Max retries exceeded|Network is unreachable|"
                      r"Connection refused|HTTPSConnectionPool", re.I)
_DENIED = re.compile(r"PERMISSION_DENIED|code=403|does not have permission|Permission denied", re.I)
_EXISTS = re.compile(r"ALREADY_EXISTS|code=409|Already exists", re.I)

AUTH_FIX = "run `inv auth` (gcloud auth login, then gcloud auth application-default login)"


def argv(ctx, *args: str, project: bool = True) -> list[str]:
    cmd = ["gcloud", *args]
    if project and ctx.settings.project:
        cmd.append(f"--project={ctx.settings.project}")
    return cmd


def label_flag(labels: dict[str, str]) -> str:
    """Labels as gcloud's --labels/--node-labels take them: k=v,k=v (sorted, so plans compare)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def classify(exc: CommandFailed, *, what: str) -> Exception:
    text = exc.stderr
    if _NO_AUTH.search(text):
        return CannotObserve(f"gcloud has no usable credentials ({what})", AUTH_FIX)
    if _OFFLINE.search(text):
        return CannotObserve(f"cannot reach Google Cloud while reading {what}",
                             "check the network or proxy; `inv doctor` tests the whole chain")
    if _DENIED.search(text):
        return StepError(f"permission denied reading {what}: {_last_line(text)}",
                         "ask for roles/container.admin, roles/serviceusage.serviceUsageAdmin, "
                         "roles/artifactregistry.admin and roles/storage.admin on the project, or fix `project:`")
    if _EXISTS.search(text):
        return Conflict(f"{what} already exists")
    return exc


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text


def read_json(ctx, *args: str, what: str, absent_ok: bool = True, project: bool = True) -> Any:
    """Run a gcloud read with --format=json. Returns None for a 404 when absent_ok."""
    cmd = argv(ctx, *args, "--format=json", project=project)
    try:
        out = ctx.shell.read(cmd).stdout
    except CommandFailed as exc:
        if absent_ok and _NOT_FOUND.search(exc.stderr) and not _NO_AUTH.search(exc.stderr):
            return None
        raise classify(exc, what=what) from None
    try:
        return json.loads(out or "null")
    except json.JSONDecodeError:
        raise StepError(f"gcloud printed something other than JSON for {what}: {out[:200]!r}",
                        "upgrade the Google Cloud CLI (we test with 528)") from None


def write(ctx, change_argv: list[str], *, what: str, timeout: float | None = None) -> None:
    try:
        ctx.shell.write(change_argv, timeout=timeout, purpose=what)
    except CommandFailed as exc:
        raise classify(exc, what=what) from None
