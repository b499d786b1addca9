"""Ctrl-C and SIGTERM stop the run before its next step or change, and the run says so.

While a playbook runs (:func:`signals_handled`), SIGINT and SIGTERM never raise in the middle of
whatever Python was doing. The handler only records the signal and wakes a watcher thread through a
pipe (no lock is taken inside a signal handler); the watcher then

* marks the run interrupted: every checkpoint (the runner before each step and each change, the Shell
  before each child process, staging workers between chunks) and every wait (``ctx.sleep``, retry
  backoff) sees it at once;
* terminates the child processes in flight: each leads its own process group (see ``core/shell.py``),
  so what it started goes too — SIGTERM, then SIGKILL after :data:`GRACE_S`;
* says so on the output.

Signals ignored when we started (a background job of a non-interactive shell) stay ignored. A second
signal quits at once: children killed, exit status 128+signal, no cleanup (the next run sweeps stale
temp files, see ``core/private_files.py``).

The state is per process, like signals: :func:`current` is what every checkpoint consults. Outside
:func:`signals_handled` it is an inert instance that is never interrupted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from gptoss_gke.errors import Interrupted

GRACE_S = 5.0  # how long a child gets to exit after SIGTERM before SIGKILL
HANDLED = (signal.SIGINT, signal.SIGTERM)
RERUN_FIX = ("re-run the same command when you are ready: every step looks first and does only what is left "
             "(an operation already sent to Google Cloud may still finish there)")


class Interruption:
    """One process's interrupt state: set once, read everywhere, children stopped when it is set."""

    def __init__(self, emit: Callable[[str], None] | None = None):
        self.emit = emit or (lambda line: None)
        self.reason: str | None = None  # "SIGINT", "SIGTERM", or why the run was stopped otherwise
        self._exit_status = 0
        self.signals = 0  # signals received (the second one quits at once)
        self.pending: int | None = None  # set by the signal handler itself, before the watcher wakes
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._children: dict[int, tuple[object, str]] = {}  # process group id → (Popen, what it is)
        self._callbacks: list[Callable[[], None]] = []

    # ---- reading
    def is_set(self) -> bool:
        return self.reason is not None or self.pending is not None

    @property
    def exit_status(self) -> int:
        """128 + the signal, as shells report a process that a signal ended (130 SIGINT, 143 SIGTERM)."""
        return self._exit_status or (128 + self.pending if self.pending else 0)

    @property
    def name(self) -> str:
        if self.reason:
            return self.reason
        return signal.Signals(self.pending).name if self.pending else ""

    def error(self, doing: str = "") -> Interrupted:
        return Interrupted(f"interrupted by {self.name}" + (f" {doing}" if doing else ""), RERUN_FIX)

    def check(self, doing: str = "") -> None:
        """Raise :class:`Interrupted` if the run was interrupted (``doing``: what would have started)."""
        if self.is_set():
            raise self.error(doing)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, ending at once with :class:`Interrupted` if the run is interrupted meanwhile."""
        self.check()
        if self._event.wait(max(0.0, seconds)) or self.is_set():
            raise self.error()

    # ---- stopping
    def trigger(self, reason: str, exit_status: int) -> None:
        """Mark the run interrupted and stop what is in flight. The first reason wins."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason, self._exit_status = reason, exit_status
            children = list(self._children.items())
            callbacks = list(self._callbacks)
        self._event.set()
        running = ", ".join(f"{label} (pid {pgid})" for pgid, (_, label) in children)
        self.emit(f"\n{reason}: stopping — no new step or change will start"
                  + (f"; terminating {running}" if running else "")
                  + (" (again to quit at once)" if reason.startswith("SIG") else ""))
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - stopping one thing must not keep us from stopping the rest
                pass
        _terminate([proc for _, (proc, _) in children])

    def absorb(self) -> None:
        """For a step whose normal end is Ctrl-C (a port-forward): the interrupt was its cue, not a stop."""
        with self._lock:
            self.reason, self.pending, self._exit_status, self.signals = None, None, 0, 0
            self._event.clear()

    # ---- what is in flight
    def adopt(self, proc, label: str) -> None:
        """A child process (leader of its own process group) that an interrupt must stop."""
        with self._lock:
            if self.reason is None:
                self._children[proc.pid] = (proc, label)
                return
        _terminate([proc])  # it started just as the interrupt arrived

    def release(self, proc) -> None:
        with self._lock:
            self._children.pop(proc.pid, None)

    @contextmanager
    def on_interrupt(self, callback: Callable[[], None]) -> Iterator[None]:
        """Run ``callback`` (from the watcher thread) if the run is interrupted while the block runs."""
        with self._lock:
            self._callbacks.append(callback)
            already = self.reason is not None
        try:
            if already:
                callback()
            yield
        finally:
            with self._lock:
                self._callbacks.remove(callback)

    def kill_all_now(self) -> None:
        """SIGKILL every child's process group. Called from a signal handler: no locks, no waiting."""
        for pgid in list(self._children):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass


def _terminate(procs: list) -> None:
    """SIGTERM each child's process group, then SIGKILL what is still there after the grace period."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(proc.poll() is None for proc in procs):
        time.sleep(0.05)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the leader's helpers too, even if it already exited
        except OSError:
            pass


_current = Interruption()


def current() -> Interruption:
    """The interrupt state every checkpoint consults (inert outside :func:`signals_handled`)."""
    return _current


@contextmanager
def signals_handled(emit: Callable[[str], None] | None = None) -> Iterator[Interruption]:
    """SIGINT and SIGTERM stop the run (see the module docstring) while the block runs."""
    global _current
    previous_state = _current
    state = _current = Interruption(emit)
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        try:
            yield state
        finally:
            _current = previous_state
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def handler(signum, frame) -> None:
        state.signals += 1
        if state.signals > 1:
            os.write(2, f"\n{signal.Signals(signum).name} again: quitting now\n".encode())
            state.kill_all_now()
            os._exit(128 + signum)
        state.pending = signum
        try:
            os.write(write_fd, bytes([signum]))
        except OSError:  # the pipe is full or closed: the flag above is enough for the checkpoints
            pass

    def watch() -> None:
        while True:
            data = os.read(read_fd, 1)
            if not data:
                return
            signum = data[0]
            state.trigger(signal.Signals(signum).name, 128 + signum)

    previous = {}
    for signum in HANDLED:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # started ignoring it (nohup, a background job): keep ignoring it
        previous[signum] = signal.signal(signum, handler)
    watcher = threading.Thread(target=watch, name="interrupt-watcher", daemon=True)
    watcher.start()
    try:
        yield state
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        os.close(write_fd)
        watcher.join(timeout=GRACE_S + 1)
        os.close(read_fd)
        _current = previous_state
