"""The runner: observe (concurrently where possible) → plan → act in order → verify → report.

An interrupt (``core/interrupt.py``) is checked before every step and every change: once it arrives
nothing new starts, the step in flight is reported as interrupted, and the steps after it are listed
as not started.
"""

from __future__ import annotations

import importlib
import select
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from gptoss_gke.core import interrupt
from gptoss_gke.core.redact import Redactor
from gptoss_gke.core.report import Printer
from gptoss_gke.core.result import ABSENT, OBSERVED, UNKNOWN, StepResult
from gptoss_gke.core.shell import Shell
from gptoss_gke.core.step import Check, Plan, Step
from gptoss_gke.errors import CannotObserve, Conflict, Interrupted, ToolError

MAX_PARALLEL_READS = 8


class Context:
    """What every step gets: settings, the shell, the printer, and a cache of shared facts."""

    def __init__(self, settings: Any, shell: Shell, printer: Printer, redactor: Redactor, *,
                 dry_run: bool = False, assume_yes: bool = False, interactive: bool | None = None,
                 unknown_fails: bool | None = None):
        self.settings = settings
        self.shell = shell
        self.printer = printer
        self.redact = redactor
        self.dry_run = dry_run
        # May a plan be made on top of a read that could not be made? Only a dry-run's may; a
        # preview that decides what to delete (teardown) is read-only and still must not.
        self.unknown_fails = not dry_run if unknown_fails is None else unknown_fails
        self.assume_yes = assume_yes
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self.targets: list[str] = []
        self._facts: dict[str, Any] = {}
        self._fact_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def fact(self, key: str, compute: Callable[[], Any]) -> Any:
        """Compute a shared observation once per run (project number, API clients, ...)."""
        with self._lock:
            if key in self._facts:
                return self._facts[key]
            lock = self._fact_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._facts:
                value = compute()
                with self._lock:
                    self._facts[key] = value
            return self._facts[key]

    def retrying(self, fn: Callable[[], Any], what: str) -> Any:
        """Run an SDK call under the run's one retry policy; transient failures are announced."""
        from gptoss_gke.core.retry import is_transient_exception, short_reason

        def announce(exc: BaseException, delay: float) -> None:
            self.note(f"    retrying {what} in {delay:.1f}s after a transient error: {short_reason(exc)}")

        return self.shell.retry.call(fn, transient=is_transient_exception, on_retry=announce, sleep=self.sleep)

    @property
    def interrupt(self) -> interrupt.Interruption:
        return interrupt.current()

    def sleep(self, seconds: float) -> None:
        """Every wait inside a step goes through here: an interrupt ends it at once (Interrupted)."""
        self.interrupt.wait(seconds)

    def note(self, text: str, style: str | None = "dim") -> None:
        """A line about the step in progress (a retry, a caveat): shown with that step's output, after its
        TASK header, even when it comes from a read running in the background."""
        self.shell.say(text, style)

    def forget(self, key: str) -> None:
        with self._lock:
            self._facts.pop(key, None)

    def confirm(self, question: str) -> bool:
        if self.assume_yes:
            return True
        if not self.interactive:
            return False
        sys.stdout.write(self.redact(question) + " [y/N] ")
        sys.stdout.flush()
        # Not input(): a signal does not end a blocking read, and Ctrl-C at this prompt must.
        while not select.select([sys.stdin], [], [], 0.2)[0]:
            self.interrupt.check("at the confirmation prompt")
        answer = sys.stdin.readline()
        self.interrupt.check("at the confirmation prompt")
        return answer.strip().lower() in ("y", "yes")


class _StepOutput:
    """What a step prints (the commands it ran, its notes) is held while its reads run in the background
    or until it turns out to act (a quiet pass), then shown in order, after its TASK header."""

    def __init__(self, printer: Printer, result: StepResult):
        self.printer = printer
        self.result = result
        self.live = False
        self.announced = False
        self._pending: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def __call__(self, rec) -> None:
        with self._lock:
            self.result.commands.append(rec)
        self._show(lambda: self.printer.command(rec.argv, rec.elapsed if rec.executed else None, rec.write,
                                                rec.executed))

    def line(self, text: str, style: str | None = None) -> None:
        self._show(lambda: self.printer.line(text, style))

    def _show(self, show: Callable[[], None]) -> None:
        with self._lock:
            if not self.live:
                self._pending.append(show)
                return
        show()

    def go_live(self) -> None:
        with self._lock:
            pending, self._pending, self.live = self._pending, [], True
        for show in pending:
            show()


class Runner:
    def __init__(self, ctx: Context, *, quiet: bool = False, approved: dict[str, list[str]] | None = None):
        self.ctx = ctx
        self.results: list[StepResult] = []
        self.not_started: list[str] = []  # steps an interrupt kept from starting
        self.started = time.monotonic()
        # quiet: print only the steps that act, fail or are skipped (a second pass after a preview
        # that already listed everything).
        self.quiet = quiet
        # approved: step key → the change summaries a person confirmed (from a preview). Anything
        # else a step now plans is left undone and said so: nothing happens that was not listed.
        self.approved = approved

    def run(self, steps: list[Step]) -> list[StepResult]:
        ctx = self.ctx
        outputs = [_StepOutput(ctx.printer, StepResult(s.name, s.section, s.key, dry_run=ctx.dry_run)) for s in steps]
        last_gate = max((i for i, s in enumerate(steps) if s.gate), default=-1)
        observed: dict[int, Future] = {}
        pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL_READS, thread_name_prefix="observe")
        anything_changed = False
        for module in sorted({m for s in steps for m in s.sdk_modules}):
            importlib.import_module(module)
        try:
            for i, step in enumerate(steps):
                if ctx.interrupt.is_set():
                    self.not_started = [s.name for s in steps[i:]]
                    ctx.printer.line(f"  not started ({ctx.interrupt.name}): {', '.join(self.not_started)}", "failed")
                    break
                out = outputs[i]
                result = out.result
                if i == last_gate + 1:
                    # Everything after the gates may be read at once; acting stays in order. A read
                    # behind a failed gate cannot succeed (no credentials, no gcloud): not started.
                    for j in range(i, len(steps)):
                        if steps[j].observe_early and not self._blocked_by(steps[j]):
                            observed[j] = pool.submit(self._observe, steps[j], outputs[j])
                started = time.monotonic()
                blocker = self._blocked_by(step)
                if blocker:
                    # Its read (if one started) is not shown: the step did not run.
                    if i in observed:
                        observed[i].cancel()
                    out = _StepOutput(ctx.printer, result)
                    result.action, result.reason = "skip", f"not run: {blocker}"
                else:
                    if not self.quiet:
                        self._announce(step, out)
                    ctx.shell.record_into(out)
                    stale = anything_changed and not ctx.dry_run
                    future = observed.get(i) if not stale else None
                    self._run_step(step, result, future, out)
                    anything_changed = anything_changed or (result.changed and not ctx.dry_run)
                result.elapsed = round(time.monotonic() - started, 3)
                ctx.shell.record_into(None)
                if not self.quiet or result.status != "ok":
                    self._announce(step, out)
                    ctx.printer.result(result)
                self.results.append(result)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return self.results

    def _announce(self, step: Step, out: _StepOutput) -> None:
        """The TASK header, then the commands the step has run so far (once)."""
        if not out.announced:
            out.announced = True
            self.ctx.printer.task(step.section, step.name)
            out.go_live()

    def _blocked_by(self, step: Step) -> str | None:
        """Why a step cannot run: a step it needs failed, or was skipped because it could not look
        (what depends on an unseen thing is unseen too)."""
        failed = [r for r in self.results if r.status == "failed"
                  or (r.status == "skipped" and r.observation == UNKNOWN)]
        for r in failed:
            if step.needs is None or r.key in step.needs:
                return f"{r.name} {'failed' if r.status == 'failed' else 'could not be observed'}"
        return None

    def _observe(self, step: Step, out: _StepOutput) -> Any:
        previous = self.ctx.shell.record_into(out)
        try:
            return step.observe(self.ctx)
        except ToolError:
            raise
        except Exception as exc:  # a client library's error: in the step's words, if it has them
            explained = step.explain(self.ctx, exc)
            if explained is None:
                raise
            raise explained from None
        finally:
            self.ctx.shell.record_into(previous)

    def _observe_or_unknown(self, step: Step, result: StepResult, future: Future | None, out: _StepOutput):
        """The one place that decides what a read found: observed, absent, or unknown.

        Unknown is planned on (as if absent, marked) only where the context allows it (a dry-run);
        elsewhere it fails the step with the reason and the fix, unless the step declares what
        going on blind means (``Step.if_unobservable``): then it is skipped, saying so."""
        try:
            current = future.result() if future is not None else self._observe(step, out)
        except CannotObserve as exc:
            result.observation = UNKNOWN
            result.facts["not_observed"] = exc.problem
            if self.ctx.unknown_fails and not step.if_unobservable:
                raise
            if not self.ctx.unknown_fails:
                result.fix = exc.fix  # shown with the first mention of this cause
            return None
        result.observation = ABSENT if current is None else OBSERVED
        return current

    def _run_step(self, step: Step, result: StepResult, future: Future | None, out: _StepOutput) -> None:
        ctx = self.ctx
        try:
            current = self._observe_or_unknown(step, result, future, out)
            if result.observation == UNKNOWN and ctx.unknown_fails:  # declared tolerable: skipped, said why
                result.action = "skip"
                result.reason = f"not observed ({result.facts['not_observed']}): {step.if_unobservable}"
                return
            plan = self._only_approved(step, self._plan(step, current))
            self._describe(result, plan)
            if plan.action in ("noop", "skip"):
                return
            result.changed = True
            self._announce(step, out)
            for change in plan.changes:
                for line in change.detail:
                    ctx.printer.line(f"    {line}", "dim")
            if ctx.dry_run:
                for change in plan.changes:
                    if change.argv is not None:
                        ctx.shell.write(change.argv, env=change.env, purpose=change.summary)
                result.reason = "would " + "; ".join(c.summary for c in plan.changes) + plan.note
                return
            try:
                for change in plan.changes:
                    ctx.interrupt.check(f"before: {change.summary}")
                    try:
                        step.apply(ctx, change)
                    finally:  # (a failed write may have changed something too)
                        for fact in step.invalidates:
                            ctx.forget(fact)
            except Conflict as exc:
                # Someone (or a retried request) got there first: look again before failing.
                ctx.printer.line(f"  conflict: {exc.problem}; observing again", "dim")
            if step.verify:
                after = self._only_approved(step, step.plan(ctx, step.observe(ctx)))
                if after.action == "noop" or after.action == "skip":
                    result.facts.update(after.facts)
                else:
                    left = "; ".join(c.summary for c in after.changes)
                    raise ToolError(
                        f"still differs after acting: {left}",
                        "the change was accepted but did not take effect; check the resource, then re-run",
                    )
            result.reason = "; ".join(c.summary for c in plan.changes) + plan.note
        except Interrupted as exc:
            result.interrupted = True
            result.error = exc.problem
            result.fix = exc.fix
        except ToolError as exc:
            self._fail(result, exc)
        except Exception as exc:  # a client's error in the step's words, else a bug: still a line and a recap
            explained = step.explain(self.ctx, exc)
            if isinstance(explained, ToolError):
                self._fail(result, explained)
            else:
                result.error = f"{type(exc).__name__}: {exc}"
        if result.error is not None and ctx.interrupt.is_set() and not result.interrupted:
            # It failed because what it waited for was stopped (a child terminated, a worker ended).
            result.interrupted = True
            result.error = f"interrupted by {ctx.interrupt.name}: {result.error}"
            result.fix = interrupt.RERUN_FIX

    def _plan(self, step: Step, current: Any) -> Plan:
        """A step's plan; for a check, its probe (in a dry-run, its preview) and its verdict."""
        ctx = self.ctx
        if not isinstance(step, Check):
            return step.plan(ctx, current)
        if ctx.dry_run:
            preview = step.preview(ctx)
            if preview is not None:
                # Listed, not done, and still a check: "ok: would ...", never "changed".
                for change in preview.changes:
                    for line in change.detail:
                        ctx.note(f"    {line}")
                return Plan(reason="would " + "; ".join(c.summary for c in preview.changes) + preview.note,
                            facts=preview.facts)
        plan = step.verdict(ctx, step.probe(ctx, current))
        if plan.changes:
            raise ToolError(f"{step.name} is a check but planned a change ({plan.changes[0].summary})",
                            "this is a bug in gptoss-gke: a check only looks; please report it")
        return plan

    def _only_approved(self, step: Step, plan: Plan) -> Plan:
        if self.approved is None or not plan.changes:
            return plan
        ok = set(self.approved.get(step.key, ()))
        unlisted = [c.summary for c in plan.changes if c.summary not in ok]
        if unlisted:
            plan.changes = [c for c in plan.changes if c.summary in ok]
            left = f"not done (not in the list you confirmed; re-run to see it): {'; '.join(unlisted)}"
            if plan.changes:
                plan.note += f"; {left}"
            else:
                plan.reason = left
        return plan

    @staticmethod
    def _fail(result: StepResult, exc: ToolError) -> None:
        result.error = exc.problem
        result.fix = exc.fix
        result.facts.update(exc.facts)

    @staticmethod
    def _describe(result: StepResult, plan: Plan) -> None:
        result.action = plan.action
        result.reason = plan.reason or plan.action
        result.diff = plan.diff
        result.planned = [c.summary for c in plan.changes]
        result.facts.update(plan.facts)
