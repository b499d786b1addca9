"""Glue between invoke tasks and the engine: settings → context → steps → recap → exit status."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from invoke.exceptions import Exit

from gptoss_gke.config import Settings, read_settings, resolve_targets, task_problems
from gptoss_gke.core.redact import Redactor
from gptoss_gke.core.report import Printer, write_report
from gptoss_gke.core.result import StepResult
from gptoss_gke.core.retry import RetryPolicy
from gptoss_gke.core.runner import Context, Runner
from gptoss_gke.core.shell import Shell
from gptoss_gke.core.step import Step
from gptoss_gke.errors import ConfigError, Problem, ToolError
from gptoss_gke.flags import ALL, Flags

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
        self.remote = None  # a gptoss_gke.remote.RemoteSession when the task runs with --on

    def run(self, steps: list[Step]) -> list[StepResult]:
        return self.runner.run(steps)

    def preview(self, steps: list[Step]) -> list[StepResult]:
        """Run the steps read-only (whatever --dry-run says) and return what they would do.

        For destructive playbooks: list everything, ask, then run for real. The preview's results
        are not part of the recap unless nothing follows it.
        """
        ctx = self.ctx
        dry = Context(ctx.settings, ctx.shell.dry_twin(), ctx.printer, ctx.redact, dry_run=True, assume_yes=ctx.assume_yes,
                      interactive=ctx.interactive)
        dry.targets = ctx.targets
        return Runner(dry).run(steps)

    @property
    def results(self) -> list[StepResult]:
        return self.runner.results


def _fail(message: str, code: int) -> Exit:
    sys.stderr.write(message.rstrip() + "\n")
    sys.stderr.flush()
    return Exit(code=code)


def offline_settings(flags: Flags) -> tuple[Settings, list[str]]:
    """Settings and targets for a task that reads nothing and runs no steps (`inv render`): the same one
    validation pass as a playbook (exit 2 with every problem), the example project accepted as in a dry-run."""
    redactor = Redactor()
    redactor.add(os.environ.get("HF_TOKEN"))
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
        problems += task_problems(settings, targets=targets, dry_run=dry,
                                  needs_project=needs_project,
                                  target_chosen_by_all=choice == ALL and spec.all_means == "enabled")
        if flags.get("on"):
            from gptoss_gke.remote import resolve_remote

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
    redactor = Redactor()
    redactor.add(os.environ.get("HF_TOKEN"))
    try:
        settings, targets, remote_settings = _validate_run(flags, needs_project=needs_project, redactor=redactor)
    except ConfigError as exc:
        raise _fail(redactor(f"error: {exc}"), 2) from None
    dry_run = bool(flags.get("dry_run"))
    report = flags.get("report")

    printer = Printer(redactor)
    remote = where = None
    if remote_settings is not None:
        from gptoss_gke.remote import RemoteSession

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
    try:
        yield pb
    except ToolError as exc:
        # A failure outside any step (a refusal to proceed, say): same shape as a failed step.
        pb.results.append(StepResult(task, "playbook", error=exc.problem, fix=exc.fix, action="skip"))
        printer.result(pb.results[-1])
    finally:
        if remote is not None:
            remote.close()
        printer.recap(pb.results, time.monotonic() - started)
        if report:
            write_report(report, pb.results, redactor, task=task, dry_run=dry_run,
                         extra={"env": settings.env_name, **pb.extra})
    if any(r.status == "failed" for r in pb.results):
        raise Exit(code=1)
