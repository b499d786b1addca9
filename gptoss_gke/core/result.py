"""What one step did (or, in dry-run, would do)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ACTIONS = ("create", "update", "delete", "noop", "skip")
STATUSES = ("ok", "changed", "skipped", "failed")


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
    action: str = "noop"
    changed: bool = False
    reason: str = ""
    diff: Any = None
    commands: list[CommandRecord] = field(default_factory=list)
    elapsed: float = 0.0
    error: str | None = None
    fix: str | None = None
    observed: bool = True
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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        return data
