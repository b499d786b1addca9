"""Error types. Every error a user sees names the problem and the fix."""


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


class ConfigError(ToolError):
    """Bad input (settings, flags). Raised before anything touches the cloud; exit status 2."""

    exit_code = 2


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
