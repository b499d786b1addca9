"""The Step contract: observe what is there, plan the difference, act on it.

A step never decides on its own that it "changed" something: the plan does. An empty plan is a
no-op and must say why (``noop("node pool already g2-standard-4 ...")``).

Three more things a step declares rather than does by habit:

* ``key``: a stable identity. ``needs`` and the approvals of a confirmed preview name steps by it,
  so renaming a step's display text never silently drops a guard.
* ``invalidates``: the cached facts (``ctx.fact``) its writes make stale. The runner forgets them
  after every change it applies, so the verification reads the world again, not the cache.
* :class:`Check`: a step that only looks or measures (a smoke test, a benchmark, a tunnel, a
  capacity plan, doctor's checks). It reports ok or failed, never changed; its measurement is
  :meth:`Check.probe`, which the runner calls at the step's turn.
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
    """Base class. Subclasses set ``name``/``section``/``key`` and implement observe + plan."""

    name: str = "step"
    section: str = "main"
    _key: str | None = None
    # Steps that must finish before the rest may read the world (credential checks). Reads of the
    # steps after the last gate run concurrently.
    gate: bool = False
    # Keys of the steps this one depends on; None means every earlier step.
    needs: tuple[str, ...] | None = None
    # Facts (ctx.fact keys) this step's writes make stale: forgotten by the runner after each change.
    invalidates: tuple[str, ...] = ()
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

    @property
    def key(self) -> str:
        """What ``needs`` and approvals call this step. Production steps set it (a class attribute, or
        per instance for steps made once per target or kind); an ad-hoc step is known by its name."""
        return self._key or self.name

    @key.setter
    def key(self, value: str) -> None:
        self._key = value

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


class Check(Step):
    """A step that only looks or measures: it reports ok (or failed), never changed.

    ``observe`` reads what the check needs beforehand (it may run early, like any read). The runner
    then calls :meth:`probe` at the step's turn and hands what it found to :meth:`verdict`, which
    returns a no-op that says what was found, or raises with the problem and the fix. In a dry-run,
    a check that contacts or shows something (``preview`` returns a plan) is only listed as what
    it would do; one without a preview (reads, arithmetic) runs as in any other run.
    """

    verify = False  # nothing was changed, so there is nothing to look at again

    def probe(self, ctx: "Context", current: Any) -> Any:
        """The measurement. By default the observation is what is checked."""
        return current

    def preview(self, ctx: "Context") -> Plan | None:
        """In a dry-run: what the probe would do (its lines), instead of doing it; None: probe anyway."""
        return None

    def verdict(self, ctx: "Context", found: Any) -> Plan:
        raise NotImplementedError

    def plan(self, ctx: "Context", current: Any) -> Plan:
        raise TypeError(f"{type(self).__name__} is a Check: the runner calls probe() and verdict(), not plan()")
