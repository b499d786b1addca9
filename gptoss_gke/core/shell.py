"""Running child processes: echoed (redacted), timed, retried when transient, skipped in dry-run.

The executor is anything with invoke's ``run`` signature: an ``invoke.Context`` locally or a
``fabric.Connection`` for a remote host, so a step does not know where it runs.

Interrupts (``core/interrupt.py``): no child starts once the run is interrupted, a child that was
running when it happened is terminated (locally each child leads its own process group, so what it
started goes too), and the command then fails as interrupted, never as a failure to retry.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from invoke.runners import Local

from gptoss_gke.core import interrupt
from gptoss_gke.core.redact import Redactor
from gptoss_gke.core.result import CommandRecord
from gptoss_gke.core.retry import RetryPolicy, is_transient_text
from gptoss_gke.errors import CannotObserve, CommandFailed, StepError

INSTALL_HINTS = {
    "gcloud": "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install",
    "gke-gcloud-auth-plugin": "gcloud components install gke-gcloud-auth-plugin "
    "(or apt-get install google-cloud-cli-gke-gcloud-auth-plugin)",
    "kubectl": "gcloud components install kubectl (or apt-get install kubectl)",
    "skopeo": "apt-get install -y skopeo (Debian/Ubuntu) or brew install skopeo (macOS)",
}


@dataclass
class Completed:
    stdout: str
    stderr: str
    rc: int
    elapsed: float


class _Recorder(threading.local):
    sink: Callable[[CommandRecord], None] | None = None


class _LineEcho:
    """A write-only stream that prints a child's progress lines (redacted) as they arrive."""

    def __init__(self, emit: Callable[[str], None]):
        self._emit = emit
        self._buf = ""

    def write(self, data: str) -> None:
        self._buf += data.replace("\r", "\n")
        *lines, self._buf = self._buf.split("\n")
        for ln in lines:
            if ln.strip():
                self._emit(f"    | {ln.rstrip()}")

    def flush(self) -> None:
        pass


class ProcessGroupLocal(Local):
    """invoke's local runner, except that each child leads a process group of its own.

    So an interrupt can stop the child and everything it started (gcloud's helpers, say) with one
    signal, and a Ctrl-C at the terminal reaches only us: we decide what the child gets, and when.
    """

    def start(self, command: str, shell: str, env: dict[str, Any]) -> None:
        if self.using_pty:  # interactive commands (`inv auth`) keep the terminal and its Ctrl-C
            super().start(command, shell, env)
            return
        self.process = subprocess.Popen(command, shell=True, executable=shell, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, stdin=subprocess.PIPE, start_new_session=True)
        interrupt.current().adopt(self.process, os.path.basename(command.split(" ", 1)[0]))

    def kill(self) -> None:  # a timeout: the whole group, not only the shell that started it
        if self.using_pty:
            super().kill()
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except OSError:
            pass

    def stop(self) -> None:
        super().stop()
        if not self.using_pty and getattr(self, "process", None) is not None:
            interrupt.current().release(self.process)


def use_process_groups(executor: Any) -> None:
    """Make an invoke Context (or a fabric Connection's local runs) start children in their own groups."""
    runners = getattr(getattr(executor, "config", None), "runners", None)
    if runners is not None and runners.get("local") is Local:
        runners.local = ProcessGroupLocal


class Shell:
    def __init__(
        self,
        executor: Any,
        redactor: Redactor,
        *,
        dry_run: bool,
        retry: RetryPolicy,
        emit: Callable[[str], None],
        where: str = "local",
        base_env: dict[str, str] | None = None,
    ):
        self.executor = executor
        self.redact = redactor
        self.dry_run = dry_run
        self.retry = retry
        self.emit = emit
        self.where = where
        self.base_env = dict(base_env or {})
        self.offline: str | None = None  # why no cloud read can succeed (set by the first read that said so)
        self._recorder = _Recorder()
        use_process_groups(executor)

    def dry_twin(self) -> "Shell":
        """The same shell (executor, policy, environment), but writes are only recorded."""
        return Shell(self.executor, self.redact, dry_run=True, retry=self.retry, emit=self.emit, where=self.where,
                     base_env=self.base_env)

    # The runner points this at the current step's result, per thread.
    def record_into(self, sink: Callable[[CommandRecord], None] | None) -> Callable | None:
        """Point this thread's command records at `sink`; returns the previous sink to restore."""
        previous, self._recorder.sink = self._recorder.sink, sink
        return previous

    def say(self, text: str, style: str | None = "dim") -> None:
        """A line about the step this thread works for (through its output, in order), else straight out."""
        sink = self._recorder.sink
        if sink is not None and hasattr(sink, "line"):
            sink.line(text, style)
        else:
            self.emit(text)

    def _record(self, rec: CommandRecord) -> None:
        if self._recorder.sink:
            self._recorder.sink(rec)

    def display(self, argv: list[str]) -> str:
        return self.redact(shlex.join(argv))

    def _guard(self, argv: list[str]) -> None:
        # Secrets travel through env or files; a secret in argv is a bug we refuse to ship.
        if self.redact.contains_secret(" ".join(argv)):
            raise StepError(
                f"refusing to run {argv[0]}: a secret would appear on its command line",
                "pass the secret through the environment or a 0600 file",
            )

    def check_online(self) -> None:
        """Before any cloud read (a command, or an SDK call): none can succeed once one said why."""
        if self.offline:
            raise CannotObserve(self.offline)

    def read(self, argv: list[str], *, env: dict[str, str] | None = None, ok_codes: tuple[int, ...] = (0,),
             timeout: float | None = None, stdin: str | None = None) -> Completed:
        """A command that changes nothing: it runs in dry-run too."""
        self.check_online()
        return self._run(argv, env=env, ok_codes=ok_codes, timeout=timeout, write=False, stdin=stdin)

    def write(self, argv: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
              purpose: str = "", stdin: str | None = None) -> Completed | None:
        """A command that changes the world: recorded but not run in dry-run."""
        self._guard(argv)
        if self.dry_run:
            self._record(CommandRecord(self.display(argv), write=True, executed=False, where=self.where))
            return None
        return self._run(argv, env=env, ok_codes=(0,), timeout=timeout, write=True, purpose=purpose, stdin=stdin)

    def _run(self, argv, *, env, ok_codes, timeout, write, purpose="", stdin=None) -> Completed:
        self._guard(argv)
        shown = self.display(argv)
        full_env = {**self.base_env, **(env or {})}

        stop = interrupt.current()

        def once() -> Completed:
            stop.check(f"before running: {shown}")
            started = time.monotonic()
            kwargs: dict[str, Any] = dict(warn=True, env=full_env, in_stream=False, pty=False)
            if write:
                # Long writes (cluster and node-pool operations) show their progress live.
                kwargs.update(hide="out", err_stream=_LineEcho(self.emit))
            else:
                kwargs.update(hide=True)
            if timeout:
                kwargs["timeout"] = timeout
            if stdin is not None:
                import io

                kwargs["in_stream"] = io.StringIO(stdin)
            try:
                res = self.executor.run(shlex.join(argv), **kwargs)
            except Exception as exc:  # invoke raises CommandTimedOut, UnexpectedExit is disabled by warn
                if stop.is_set():
                    raise stop.error(f"while running: {shown} (terminated)") from None
                if type(exc).__name__ == "CommandTimedOut":
                    raise StepError(
                        f"timed out after {timeout:.0f}s waiting for: {purpose or shown}",
                        "check the operation in the console; re-running resumes where it stopped",
                    ) from None
                raise
            elapsed = time.monotonic() - started
            done = Completed(res.stdout or "", res.stderr or "", res.exited, elapsed)
            self._record(CommandRecord(shown, write=write, executed=True, rc=done.rc, elapsed=elapsed,
                                       where=self.where))
            if stop.is_set() and done.rc != 0:  # terminated because of the interrupt: not a failure to retry
                raise stop.error(f"while running: {shown} (terminated)")
            if done.rc == 127 or (done.rc != 0 and "command not found" in done.stderr):
                tool = argv[0]
                raise CannotObserve(f"{tool} is not installed (or not on PATH)", INSTALL_HINTS.get(tool))
            if done.rc not in ok_codes:
                detail = self.redact(done.stderr.strip() or done.stdout.strip())
                raise CommandFailed(f"`{shown}` exited {done.rc}: {detail[-2000:]}", rc=done.rc, stderr=detail)
            return done

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, CommandFailed) and is_transient_text(exc.stderr)

        def announce(exc: BaseException, delay: float) -> None:
            first = str(getattr(exc, "stderr", exc)).strip().splitlines()[-1:] or [""]
            self.say(f"    retrying in {delay:.1f}s after a transient error: {self.redact(first[0])[:200]}", None)

        return self.retry.call(once, transient=transient, on_retry=announce, sleep=stop.wait)
