"""Ansible-style output: TASK headers, ok/changed/skipped/failed lines, a final RECAP."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import IO, Iterable

from gptoss_gke.core.redact import Redactor
from gptoss_gke.core.result import StepResult

_COLORS = {"ok": "32", "changed": "33", "skipped": "36", "failed": "31", "dim": "2", "bold": "1"}


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


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
        prefix = f"{status}:"
        if r.dry_run and status == "changed":
            prefix = "changed (dry-run):"
        if r.error:
            first, *rest = r.error.splitlines() or [""]
            self.line(f"{prefix} {first}", status)
            for ln in rest:
                self.line(f"  {ln}", status)
            if r.fix:
                self.line(f"  fix: {r.fix}", status)
            return
        message = r.reason or r.action
        if not r.observed:
            message += "  [not observed: planned as if absent]"
        self.line(f"{prefix} {message}", status)

    def recap(self, results: Iterable[StepResult], elapsed: float) -> None:
        counts = {s: 0 for s in ("ok", "changed", "skipped", "failed")}
        for r in results:
            counts[r.status] += 1
        text = " ".join(f"{k}={v}" for k, v in counts.items())
        self.line("")
        style = "failed" if counts["failed"] else ("changed" if counts["changed"] else "ok")
        self.line(f"RECAP {text}   ({format_duration(elapsed)})", style)


def write_report(path: str, results: list[StepResult], redactor: Redactor, *, task: str, dry_run: bool,
                 extra: dict | None = None) -> None:
    """The same results as JSON, for machines. Written 0600: it may describe private infrastructure."""
    counts = {s: 0 for s in ("ok", "changed", "skipped", "failed")}
    for r in results:
        counts[r.status] += 1
    doc = {
        "task": task,
        "dry_run": dry_run,
        "recap": counts,
        "steps": [r.to_json() for r in results],
    }
    if extra:
        doc.update(extra)
    text = json.dumps(redactor.scrub(doc), indent=2, default=str)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
