"""One run of one playbook: flags and settings checked in one pass → context → the chain of steps →
runner → recap, report and exit status. Every task in ``tasks/`` runs its chain inside :func:`playbook`.

While the body runs, SIGINT and SIGTERM stop the run (``core/interrupt.py``): no step or change
starts after them, the recap and the report say interrupted, and the exit status is 130 (SIGINT) or
143 (SIGTERM).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from invoke.exceptions import Exit

from gptoss_gke.config import Settings, read_settings, resolve_targets, task_problems
from gptoss_gke.core.interrupt import RERUN_FIX, signals_handled
from gptoss_gke.core.private_files import sweep_stale
from gptoss_gke.core.redact import Redactor
from gptoss_gke.core.report import Printer, ReportFile, report_document
from gptoss_gke.core.result import StepResult
from gptoss_gke.core.retry import RetryPolicy
from gptoss_gke.core.runner import Context, Runner
from gptoss_gke.core.shell import Shell
from gptoss_gke.core.step import Step
from gptoss_gke.errors import ConfigError, Interrupted, Problem, ToolError
from gptoss_gke.flags import Flags

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Playbook:
    """One run of one task: the settings, a context for the steps, and the results so far."""

    def __init__(self, task: str, settings: Settings, ctx: Context, report: str | None):
        self.task = task
        self.settings = settings
        self.ctx = ctx
        self.report = report
        self.runner = Runner(ctx)
        self.extra: dict = {}
        self.remote = None  # a gptoss_gke.remote.session.RemoteSession when the task runs with --on
        self.not_started: list[str] = []  # steps an interrupt kept from starting

    def run(self, steps: list[Step], *, quiet: bool = False,
            approved: dict[str, list[str]] | None = None) -> list[StepResult]:
        """Run the steps; after an interrupt, raise :class:`Interrupted` so the task does nothing more.
        ``quiet``/``approved``: the pass after a preview (see Runner)."""
        self.runner.quiet, self.runner.approved = quiet, approved
        results = self.runner.run(steps)
        self._stop_if_interrupted(self.runner)
        return results

    def _stop_if_interrupted(self, runner: Runner) -> None:
        self.not_started += [n for n in runner.not_started if n not in self.not_started]
        self.ctx.interrupt.check(f"before {self.not_started[0]} started" if self.not_started else "")

    def preview(self, steps: list[Step]) -> list[StepResult]:
        """Run the steps read-only (whatever --dry-run says) and return what they would do.

        For destructive playbooks: list everything, ask, then run for real. Unlike a dry-run, what
        could not be observed fails the step: a preview that decides what to delete must not read
        "could not look" as "nothing there". The preview's results are not part of the recap unless
        nothing follows it.
        """
        ctx = self.ctx
        dry = Context(ctx.settings, ctx.shell.dry_twin(), ctx.printer, ctx.redact, dry_run=True, assume_yes=ctx.assume_yes,
                      interactive=ctx.interactive, unknown_fails=not ctx.dry_run)
        dry.targets = ctx.targets
        runner = Runner(dry)
        results = runner.run(steps)
        if ctx.interrupt.is_set():
            self.results.extend(results)  # what the preview got to is all this run did
            self._stop_if_interrupted(runner)
        return results

    @property
    def results(self) -> list[StepResult]:
        return self.runner.results


def _fail(message: str, code: int) -> Exit:
    sys.stderr.write(message.rstrip() + "\n")
    sys.stderr.flush()
    return Exit(code=code)


def refuse_invoke_dry(c) -> None:
    """`inv --dry` makes every command invoke runs return an empty success, reads included: a run would
    see an empty world and report it. Our --dry-run does the reads and skips only the writes."""
    config = getattr(c, "config", None)
    if config is not None and config.get("run", {}).get("dry"):
        raise _fail("error: invoke's --dry fakes every command as an empty success (reads too), so nothing "
                    "could be observed\n  fix: use --dry-run (after the task name): it reads everything and "
                    "changes nothing", 2)


def offline_settings(flags: Flags) -> tuple[Settings, list[str]]:
    """Settings and targets for a task that reads nothing and runs no steps (`inv render`): the same one
    validation pass as a playbook (exit 2 with every problem), the example project accepted as in a dry-run."""
    redactor = Redactor.for_run()
    try:
        settings, targets, _ = _validate_run(flags, needs_project=True, redactor=redactor, dry_run=True)
    except ConfigError as exc:
        raise _fail(redactor(f"error: {exc}"), 2) from None
    return settings, targets


def _validate_run(flags: Flags, *, needs_project: bool, redactor: Redactor,
                  dry_run: bool | None = None) -> tuple[Settings, list[str], Any]:
    """The one validation pass: flags, settings and what this task needs, every problem at once."""
    problems = list(flags.problems)
    settings, setting_problems = read_settings(flags.get("env"), root=PROJECT_ROOT, sets=flags.get("set_", ()))
    problems += setting_problems
    targets: list[str] = []
    remote_settings = None
    if settings is not None:
        if settings.hf_token:
            redactor.add(settings.hf_token.get_secret_value())
        spec = flags.specs.get("target")
        choice = flags.get("target")
        if spec is not None and choice is not None:
            targets = resolve_targets(choice, settings, all_means=spec.all_means)
        dry = bool(flags.get("dry_run")) if dry_run is None else dry_run
        problems += task_problems(settings, targets=targets, dry_run=dry, needs_project=needs_project)
        if flags.get("on"):
            from gptoss_gke.remote.session import resolve_remote

            try:
                remote_settings = resolve_remote(settings.remote, flags.get("on"))
            except ConfigError as exc:
                problems.append(Problem("flag --on", "", exc.problem, "", exc.fix or ""))
    if problems:
        raise ConfigError.of(problems)
    return settings, targets, remote_settings


@contextmanager
def playbook(c, task: str, flags: Flags, *, needs_project: bool = True, executor=None,
             remote_shell: bool = True) -> Iterator[Playbook]:
    """Validate everything, build the context, run the body, print the recap, set the exit status.

    ``flags.on`` (the tasks' ``--on``): a remote host from ``remote.*``; ``pb.remote`` is its (lazily
    opened) session, closed at the end. With ``remote_shell`` the Shell runs every command there (a
    bastion); without, the shell stays local and the task decides what runs remotely (stage-model).
    """
    started = time.monotonic()
    redactor = Redactor.for_run()
    refuse_invoke_dry(c)
    try:
        settings, targets, remote_settings = _validate_run(flags, needs_project=needs_project, redactor=redactor)
        report = flags.get("report")
        report_file = ReportFile(report) if report else None  # checked (and opened) only when all else is valid
    except ConfigError as exc:
        raise _fail(redactor(f"error: {exc}"), 2) from None
    dry_run = bool(flags.get("dry_run"))

    printer = Printer(redactor)
    remote = where = None
    if remote_settings is not None:
        from gptoss_gke.remote.session import RemoteSession

        remote = RemoteSession(remote_settings, redactor=redactor, emit=printer.line)
        if remote_shell:
            executor, where = remote.executor(), remote.label
    s = settings.retry
    shell = Shell(executor if executor is not None else c, redactor, dry_run=dry_run,
                  retry=RetryPolicy(s.attempts, s.base_delay_s, s.max_delay_s), emit=printer.line,
                  where=where or "local")
    ctx = Context(settings, shell, printer, redactor, dry_run=dry_run, assume_yes=bool(flags.get("yes")))
    ctx.targets = targets
    pb = Playbook(task, settings, ctx, report)
    pb.remote = remote
    mode = " (dry-run: reads only, nothing will change)" if dry_run else ""
    on_host = f" on={remote.label}" if remote is not None else ""
    printer.line(f"PLAYBOOK [{task}] env={settings.env_name} project={settings.project} "
                 f"targets={','.join(targets) or '-'}{on_host}{mode}", "bold")
    swept = sweep_stale()
    if swept:
        printer.line(f"  removed {len(swept)} temp folder(s) holding credentials that a killed run left behind "
                     f"({', '.join(swept)})", "dim")
    if report_file is not None:  # a run killed before the end leaves a report that says so
        report_file.write({"task": task, "dry_run": dry_run, "outcome": "running", "env": settings.env_name},
                          redactor)
    stopped = ""
    with signals_handled(printer.line) as stop:
        try:
            yield pb
        except Interrupted as exc:
            stopped = exc.problem  # recorded by the runner, or just below (a prompt, between steps)
        except ToolError as exc:
            # A failure outside any step (a refusal to proceed, say): same shape as a failed step.
            pb.results.append(StepResult(task, "playbook", error=exc.problem, fix=exc.fix, action="skip"))
            printer.result(pb.results[-1])
        finally:
            if stop.is_set() and not any(r.interrupted for r in pb.results):
                # Interrupted between steps (or at a prompt): the run still did not finish.
                pb.results.append(StepResult(task, "playbook", action="skip", interrupted=True, fix=RERUN_FIX,
                                             error=stopped or f"interrupted by {stop.name}"))
                printer.result(pb.results[-1])
            if remote is not None:
                remote.close()
            interrupted = None
            if stop.is_set():
                interrupted = {"signal": stop.name, "exit_status": stop.exit_status,
                               "in_flight": [r.name for r in pb.results if r.interrupted],
                               "not_started": pb.not_started}
            printer.recap(pb.results, time.monotonic() - started, interrupted=stop.name if interrupted else None,
                          not_started=pb.not_started)
            if report_file is not None:
                report_file.write(report_document(pb.results, task=task, dry_run=dry_run, interrupted=interrupted,
                                                  extra={"env": settings.env_name, **pb.extra}), redactor)
                report_file.close()
    if stop.is_set():
        raise Exit(code=stop.exit_status)
    if any(r.status == "failed" for r in pb.results):
        raise Exit(code=1)
