"""Ansible-style output: TASK headers, ok/changed/skipped/failed lines, a final RECAP; the JSON report."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
from typing import IO, Iterable

from gptoss_gke.core.redact import Redactor
from gptoss_gke.core.result import StepResult
from gptoss_gke.errors import ConfigError

_COLORS = {"ok": "32", "changed": "33", "skipped": "36", "failed": "31", "dim": "2", "bold": "1"}


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_size(n: float) -> str:
    """Bytes in decimal units, as the Hugging Face Hub shows file sizes."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def silence_stdout() -> None:
    """The reader of our stdout went away (`| head`): point the descriptor at /dev/null, so neither the
    rest of the run nor Python's flush at exit meets a broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class Printer:
    """Everything a person reads goes through here, and through the redactor."""

    width = 78

    def __init__(self, redactor: Redactor, stream: IO[str] | None = None, color: bool | None = None):
        self.redact = redactor
        self.stream = stream or sys.stdout
        if color is None:
            color = hasattr(self.stream, "isatty") and self.stream.isatty() and "NO_COLOR" not in os.environ
        self.color = color
        self._lock = threading.Lock()
        self._causes_shown: set[str] = set()

    def _paint(self, text: str, style: str) -> str:
        return f"\033[{_COLORS[style]}m{text}\033[0m" if self.color else text

    def line(self, text: str = "", style: str | None = None) -> None:
        text = self.redact(text)
        with self._lock:
            try:
                self.stream.write((self._paint(text, style) if style else text) + "\n")
                self.stream.flush()
            except BrokenPipeError:
                # The reader left (`inv ... | head`): the run goes on to a consistent end, silently,
                # rather than stopping half-way through a write.
                self._reader_gone()

    def _reader_gone(self) -> None:
        if self.stream is sys.stdout:
            silence_stdout()
        self.stream = open(os.devnull, "w")

    def task(self, section: str, name: str) -> None:
        title = f"TASK [{section} : {name}] "
        self.line("")
        self.line(title + "*" * max(3, self.width - len(title)), "bold")

    def command(self, argv: str, elapsed: float | None, write: bool, executed: bool) -> None:
        if not executed:
            self.line(f"  would run: {argv}", "changed")
        else:
            took = f"  ({elapsed:.2f}s)" if elapsed is not None else ""
            self.line(f"  $ {argv}{took}", None if write else "dim")

    def result(self, r: StepResult) -> None:
        status = r.status
        prefix = "interrupted:" if r.interrupted else f"{status}:"
        if r.dry_run and status == "changed":
            prefix = "changed (dry-run):"
        if r.error:
            first, *rest = r.error.splitlines() or [""]
            if r.interrupted and first.startswith("interrupted"):
                prefix, first = "interrupted", first[len("interrupted"):].lstrip()
            self.line(f"{prefix} {first}", status)
            for ln in rest:
                self.line(f"  {ln}", status)
            if r.fix:
                self.line(f"  fix: {r.fix}", status)
            return
        message = r.reason or r.action
        cause = r.facts.get("not_observed") if not r.observed else None
        if cause and cause in message:  # the reason already says it (a step skipped blind)
            cause = None
        fix = None
        if cause:
            # The cause (and its fix) once per run: every read after the first fails the same way.
            with self._lock:
                first = cause not in self._causes_shown
                self._causes_shown.add(cause)
            message += f"  [not observed: {cause}]" if first else "  [not observed]"
            fix = r.fix if first else None
        self.line(f"{prefix} {message}", status)
        if fix:
            self.line(f"  fix: {fix}", status)

    def recap(self, results: Iterable[StepResult], elapsed: float, *, interrupted: str | None = None,
              not_started: list[str] | None = None) -> None:
        counts = recap_counts(results)
        text = " ".join(f"{k}={v}" for k, v in counts.items())
        self.line("")
        if interrupted:
            # Never a line that reads like success (failed=0): the step in flight counts as failed.
            left = f" not_started={len(not_started or [])}"
            self.line(f"RECAP INTERRUPTED by {interrupted}: {text}{left}   ({format_duration(elapsed)})", "failed")
            return
        style = "failed" if counts["failed"] else ("changed" if counts["changed"] else "ok")
        self.line(f"RECAP {text}   ({format_duration(elapsed)})", style)


def recap_counts(results: Iterable[StepResult]) -> dict[str, int]:
    counts = {s: 0 for s in ("ok", "changed", "skipped", "failed")}
    for r in results:
        counts[r.status] += 1
    return counts


def report_document(results: list[StepResult], *, task: str, dry_run: bool, interrupted: dict | None = None,
                    extra: dict | None = None) -> dict:
    counts = recap_counts(results)
    outcome = "interrupted" if interrupted else "failed" if counts["failed"] else "ok"
    doc = {
        "task": task,
        "dry_run": dry_run,
        "outcome": outcome,
        "recap": counts,
        "steps": [r.to_json() for r in results],
    }
    if interrupted:
        doc["interrupted"] = interrupted
    if extra:
        doc.update(extra)
    return doc


class ReportFile:
    """Where ``--report`` goes: checked before the first step, always 0600, never written through a symlink.

    Opened once at the start (a bad path is a settings error, exit 2, before anything reaches the
    cloud) and held open, so the file written at the end is the file that was checked.
    """

    def __init__(self, path: str):
        self.path = path
        shown = f"--report {path}"
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise ConfigError(f"{shown}: folder {folder} does not exist", "create the folder first, or pick another path")
        try:
            # O_NOFOLLOW: a symlink planted at the path must not redirect what we write.
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(f"{shown}: is a symbolic link; refusing to write the report through it",
                                  "give the path of a regular file (or of one to create)") from None
            if exc.errno == errno.EISDIR:
                raise ConfigError(f"{shown}: is a folder", "give a file name inside it") from None
            raise ConfigError(f"{shown}: cannot write there: {exc.strerror}", "pick a path you can write") from None
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise ConfigError(f"{shown}: is not a regular file", "give the path of a regular file")
        os.fchmod(self.fd, 0o600)  # also when it existed with wider permissions: it describes private infrastructure

    def write(self, doc: dict, redactor: Redactor) -> None:
        data = (json.dumps(redactor.scrub(doc), indent=2, default=str) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        os.close(self.fd)


def write_report(path: str, results: list[StepResult], redactor: Redactor, *, task: str, dry_run: bool,
                 extra: dict | None = None) -> None:
    """The same results as JSON, for machines (see :class:`ReportFile` for how the file is written)."""
    report = ReportFile(path)
    try:
        report.write(report_document(results, task=task, dry_run=dry_run, extra=extra), redactor)
    finally:
        report.close()
