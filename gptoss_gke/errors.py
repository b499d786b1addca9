"""Error types. Every error a user sees names the problem and the fix."""

from __future__ import annotations

from dataclasses import dataclass

DEBUG_VARIABLE = "GPTOSS_DEBUG"  # 1: an unexpected error shows its traceback instead of one line


class ToolError(Exception):
    """A failure with a problem statement and, where known, what to do about it."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None, *, facts: dict | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix
        self.facts = facts or {}  # what was measured before failing; the report keeps it

    def __str__(self) -> str:
        return self.problem if not self.fix else f"{self.problem}\n  fix: {self.fix}"


@dataclass(frozen=True)
class Problem:
    """One piece of bad input: where it came from, the key, what is wrong, what is allowed, the fix.

    ``where`` is the origin a person can go to: ``env/dev.yaml:7``, ``environment variable GPTOSS_ZONE``,
    ``flag --set zone``, ``flag --target``. Messages never quote a value that may be a secret.
    """

    where: str
    key: str
    message: str
    allowed: str = ""
    fix: str = ""

    def render(self) -> str:
        head = f"{self.where}: {self.key}: {self.message}" if self.key else f"{self.where}: {self.message}"
        lines = [head]
        if self.allowed:
            lines.append(f"  allowed: {self.allowed}")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


class ConfigError(ToolError):
    """Bad input (settings, flags). Raised before anything touches the cloud; exit status 2.

    Either one problem (``ConfigError(problem, fix)``) or every problem one validation pass found
    (``ConfigError.of(problems)``), so a person fixes them all in one go.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None, *, problems: list[Problem] | None = None):
        super().__init__(problem, fix)
        self.problems = problems or []

    @classmethod
    def of(cls, problems: list[Problem]) -> "ConfigError":
        if len(problems) == 1:
            return cls(problems[0].render(), problems=problems)
        body = "\n".join("  " + p.render().replace("\n", "\n  ") for p in problems)
        return cls(f"{len(problems)} problems in the settings and flags (nothing was run):\n{body}",
                   problems=problems)


class StepError(ToolError):
    """A step could not converge."""


class CannotObserve(ToolError):
    """A read could not be made at all (no credentials, no network, tool missing).

    In dry-run this is not fatal: the plan is completed as if the resource were absent and the
    step is marked as not observed.
    """


class Conflict(StepError):
    """A write lost a race (409 / already exists); the runner observes again before failing."""


class CommandFailed(StepError):
    """A child process failed; carries its (redacted) output for the report."""

    def __init__(self, problem: str, fix: str | None = None, *, rc: int = 1, stderr: str = ""):
        super().__init__(problem, fix)
        self.rc = rc
        self.stderr = stderr


class Interrupted(ToolError):
    """SIGINT/SIGTERM (Ctrl-C, a CI cancel) arrived: nothing new starts, the run ends saying so."""
