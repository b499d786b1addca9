"""What one step did (or, in dry-run, would do)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ACTIONS = ("create", "update", "delete", "noop", "skip")
STATUSES = ("ok", "changed", "skipped", "failed")

# What a step's read found. The runner decides it, in one place (Runner._observe_or_unknown):
# "absent" is a read that answered "not there"; "unknown" is a read that could not be made at all
# (no credentials, no network, tool missing). Only a dry-run may plan on top of "unknown".
OBSERVED, ABSENT, UNKNOWN = "observed", "absent", "unknown"


@dataclass
class CommandRecord:
    argv: str  # shell-quoted, redacted
    write: bool
    executed: bool  # False for writes planned in dry-run
    rc: int | None = None
    elapsed: float = 0.0
    where: str = "local"


@dataclass
class StepResult:
    name: str
    section: str
    key: str = ""  # the step's stable identity (Step.key): what `needs` and approvals name
    action: str = "noop"
    changed: bool = False
    reason: str = ""
    diff: Any = None
    planned: list[str] = field(default_factory=list)  # what the plan changes (or, in a dry-run, would)
    commands: list[CommandRecord] = field(default_factory=list)
    elapsed: float = 0.0
    error: str | None = None
    fix: str | None = None
    observation: str = OBSERVED
    dry_run: bool = False
    interrupted: bool = False  # stopped by Ctrl-C/SIGTERM; its status is "failed" (it did not converge)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        if self.action == "skip":
            return "skipped"
        return "changed" if self.changed else "ok"

    @property
    def observed(self) -> bool:
        """False when the step could not look (its plan, in a dry-run, assumed nothing was there)."""
        return self.observation != UNKNOWN

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        data["observed"] = self.observed
        return data
