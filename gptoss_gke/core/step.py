"""The Step contract: observe what is there, plan the difference, act on it.

A step never decides on its own that it "changed" something: the plan does. An empty plan is a
no-op and must say why (``noop("node pool already g2-standard-4 ...")``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from gptoss_gke.core.runner import Context


@dataclass
class Change:
    """One write. Either a command line (shown verbatim in plans) or an SDK call."""

    summary: str
    action: str = "update"  # create | update | delete
    argv: list[str] | None = None
    apply: Callable[["Context"], Any] | None = None
    env: dict[str, str] | None = None  # secrets reach child processes here, never in argv
    detail: list[str] = field(default_factory=list)  # extra plan lines (a manifest diff, say)
    timeout: float | None = None  # seconds; the failure says what we were waiting for


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    reason: str = ""
    diff: Any = None
    skipped: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # observations worth reporting
    note: str = ""  # said after the changes' summary (what was left alone and why)

    @property
    def action(self) -> str:
        if self.skipped is not None:
            return "skip"
        if not self.changes:
            return "noop"
        kinds = {c.action for c in self.changes}
        return kinds.pop() if len(kinds) == 1 else "update"


def noop(reason: str, **facts: Any) -> Plan:
    return Plan(reason=reason, facts=facts)


def skip(reason: str) -> Plan:
    return Plan(skipped=reason, reason=reason)


class Step:
    """Base class. Subclasses set ``name``/``section`` and implement observe + plan."""

    name: str = "step"
    section: str = "main"
    # Steps that must finish before the rest may read the world (credential checks). Reads of the
    # steps after the last gate run concurrently.
    gate: bool = False
    # Names of steps this one depends on; None means every earlier step.
    needs: tuple[str, ...] | None = None
    # After acting, observe again and fail if the world still differs from the plan.
    verify: bool = True
    # False for observations that only mean something once the steps before have acted (a rollout,
    # a smoke test): they are not read ahead with the others.
    observe_early: bool = True
    # SDK modules the step imports lazily. The runner imports them once on the main thread before
    # reads run concurrently: two threads importing one large package at once can meet it half
    # initialised ("partially initialized module ...").
    sdk_modules: tuple[str, ...] = ()
    # Outside a dry-run, a step that cannot observe fails. A step may instead declare what skipping
    # it blind means (teardown --force: "the cluster is deleted anyway; ... may be orphaned").
    if_unobservable: str | None = None

    def observe(self, ctx: "Context") -> Any:
        """Read the current state. Reads only. Return None when the thing is absent; raise
        CannotObserve when the read could not be made (never return None for that)."""
        return None

    def explain(self, ctx: "Context", exc: Exception) -> Exception | None:
        """Turn a client library's exception into a ToolError (problem + fix), or None to keep it."""
        return None

    def plan(self, ctx: "Context", current: Any) -> Plan:
        raise NotImplementedError

    def apply(self, ctx: "Context", change: Change) -> None:
        if change.apply is not None:
            change.apply(ctx)
        elif change.argv is not None:
            ctx.shell.write(change.argv, env=change.env, timeout=change.timeout, purpose=change.summary)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.section}:{self.name}>"
