"""The remote host as a step, and a task's steps run there with their output relayed live.

``inv stage-model --on HOST`` ships this checkout to a VM next to the bucket (``shipping.py``) and runs
the staging steps there (:func:`run_task_remotely`), turning its report into local step results. The
run there lasts exactly as long as its SSH channel's stdin stays open: an interrupt here (Ctrl-C,
SIGTERM), this process dying or the connection dropping all end it with EOF, and the remote run stops
as an interrupted local run does (``entry.py``).
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import time
from typing import Any, Callable

from gptoss_gke.core import interrupt
from gptoss_gke.core.result import CommandRecord, StepResult
from gptoss_gke.core.step import Check, Plan, noop
from gptoss_gke.errors import StepError
from gptoss_gke.remote.entry import FORWARDED_ENV, PROTOCOL, REPORT_MARK
from gptoss_gke.remote.session import RemoteSession, key_line, remote_cmd_path
from gptoss_gke.remote.shipping import Bundle, code_bundle, ship

REMOTE_STOP_GRACE_S = 60.0  # after asking the remote run to stop: how long its report may take
# What the staging steps import on the remote host → the distribution that provides it.
STAGING_MODULES = {
    "pydantic": "pydantic",
    "yaml": "pyyaml",
    "invoke": "invoke",
    "requests": "requests",
    "google.cloud.storage": "google-cloud-storage",
    "google_crc32c": "google-crc32c",
    "huggingface_hub": "huggingface-hub",
}



def requirement_specs(dists: list[str]) -> list[str]:
    """The exact requirement lines this checkout declares for those distributions (pip-installable)."""
    try:
        from importlib.metadata import requires

        declared = requires("gptoss-gke") or []
    except Exception:  # noqa: BLE001 - not installed as a distribution: bare names will do
        declared = []
    by_name = {}
    for line in declared:
        if ";" in line:
            continue  # extras (test dependencies)
        name = re.split(r"[<>=!~ \[]", line, maxsplit=1)[0].strip().lower().replace("_", "-")
        by_name[name] = line.strip()
    return [by_name.get(d, d) for d in dists]


def missing_modules_error(session: RemoteSession, info: dict, purpose: str) -> StepError:
    py = session.settings.python
    specs = " ".join(shlex.quote(s) for s in requirement_specs(info["missing_dists"]))
    return StepError(
        f"{py} on {session.label} (Python {info['python']}) lacks what {purpose} imports: "
        f"{', '.join(info['missing_dists'])}",
        f"on {session.host}: python3 -m venv ~/gptoss-venv && ~/gptoss-venv/bin/pip install {specs}; then set "
        f"remote.python: ~/gptoss-venv/bin/python (or --set remote.python=~/gptoss-venv/bin/python)")



# ---------------------------------------------------------------------------------------------
# The remote host as a step (connection, host key, interpreter)


class RemoteHost(Check):
    """Connect (host key verified), and check the interpreter that will run shipped code."""

    section = "remote"
    key = "remote.host"
    needs = ()

    def __init__(self, session: RemoteSession, *, modules: dict[str, str] | None = None, purpose: str = "staging",
                 modules_required: bool = True, python: bool = True):
        self.session = session
        self.modules = modules
        self.purpose = purpose
        self.modules_required = modules_required
        self.python = python
        self.name = f"remote host {session.label}"

    def observe(self, ctx):
        s = self.session
        s.open()
        facts = {"host": s.label, "host_key": key_line(s.host_key)}
        if self.python:
            facts["python"] = s.probe_python(self.modules, purpose=self.purpose)
        return facts

    def verdict(self, ctx, current) -> Plan:
        s = self.session
        head = f"{s.label}: host key {current['host_key']} verified against {s.known_hosts}"
        info = current.get("python")
        if info is None:
            return noop(head, host_key=current["host_key"])
        if info["missing_dists"]:
            err = missing_modules_error(s, info, self.purpose)
            if self.modules_required:
                raise err
            return noop(f"{head}; {s.settings.python} is Python {info['python']} but lacks "
                        f"{', '.join(info['missing_dists'])} ({self.purpose} --on needs them: {err.fix})",
                        host_key=current["host_key"], python=info["python"])
        return noop(f"{head}; Python {info['python']} ({info['executable']}) has what {self.purpose} imports",
                    host_key=current["host_key"], python=info["python"])


# ---------------------------------------------------------------------------------------------
# Running a task's steps on the host


class _LineRelay:
    """Complete lines to ``on_line`` as they arrive; the report line is kept, not shown."""

    def __init__(self, on_line: Callable[[str], None]):
        self.on_line = on_line
        self.buf = b""
        self.report: str | None = None
        self.last_lines: list[str] = []

    def feed(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for raw in lines:
            self._line(raw.decode("utf-8", "replace"))

    def flush(self) -> None:
        if self.buf:
            self._line(self.buf.decode("utf-8", "replace"))
            self.buf = b""

    def _line(self, text: str) -> None:
        if text.startswith(REPORT_MARK):
            self.report = text[len(REPORT_MARK):]
            return
        self.last_lines = (self.last_lines + [text])[-20:]
        self.on_line(text.rstrip("\r"))


def stream_command(session: RemoteSession, command: str, *, stdin: bytes = b"", on_line: Callable[[str], None],
                   doing: str = "running a command", hold_stdin: bool = False) -> tuple[int, str, _LineRelay]:
    """Run ``command`` on the host, write ``stdin`` to it (then EOF), relay its stdout lines live.

    Drives the SSH channel directly: invoke's stdin pump moves one byte per 10 ms, and we want each
    line as soon as it is complete. Returns (exit status, stderr, relay). A connection that drops
    meanwhile is a StepError; a process killed by a signal has exit status -1.

    With ``hold_stdin`` the EOF is sent only when this run is interrupted: the remote side (entry.py)
    treats it as its own interrupt and reports; after :data:`REMOTE_STOP_GRACE_S` the channel is closed
    anyway. Without it, an interrupt closes the channel at once.
    """
    conn = session.open()
    relay = _LineRelay(on_line)
    err = bytearray()
    stop = interrupt.current()
    asked_to_stop: float | None = None
    try:
        chan = conn.create_session()
        chan.exec_command(command)
        if stdin:
            chan.sendall(stdin)
        if not hold_stdin:
            chan.shutdown_write()
        while True:
            if stop.is_set() and asked_to_stop is None:
                asked_to_stop = time.monotonic()
                if not hold_stdin:
                    break
                on_line(f"  asking the run on {session.label} to stop (it reports what it did)")
                chan.shutdown_write()
            if asked_to_stop is not None and time.monotonic() - asked_to_stop > REMOTE_STOP_GRACE_S:
                on_line(f"  the run on {session.label} did not report within {REMOTE_STOP_GRACE_S:.0f}s; "
                        f"closing the connection (which ends it)")
                break
            select.select([chan], [], [], 0.2)
            progressed = False
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                progressed = True
            if chan.recv_ready():
                data = chan.recv(65536)
                if data:
                    relay.feed(data)
                    progressed = True
            if progressed:
                continue
            if chan.exit_status_ready() and chan.eof_received:
                break
            if chan.closed:
                break
            if not session.alive():
                break
        while chan.recv_ready() or chan.recv_stderr_ready():  # whatever arrived with the EOF
            if chan.recv_ready():
                relay.feed(chan.recv(65536))
            if chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
        relay.flush()
        status = chan.recv_exit_status() if chan.exit_status_ready() else -1
        chan.close()
    except (EOFError, OSError) as exc:
        raise session.dropped_error(doing) from exc
    except Exception as exc:  # noqa: BLE001 - paramiko's SSHException
        if not session.alive():
            raise session.dropped_error(doing) from exc
        raise
    if status == -1 and not session.alive():
        raise session.dropped_error(doing)
    return status, err.decode("utf-8", "replace"), relay


def _results_from_report(doc: dict, label: str) -> list[StepResult]:
    out = []
    for step in doc.get("steps") or []:
        data = dict(step)
        data.pop("status", None)
        commands = [CommandRecord(**{**c, "where": label}) for c in data.pop("commands", []) or []]
        known = {k: v for k, v in data.items() if k in StepResult.__dataclass_fields__}
        r = StepResult(**known)
        r.commands = commands
        r.facts = {**(r.facts or {}), "ran_on": label}
        out.append(r)
    return out


def run_task_remotely(ctx, session: RemoteSession, task: str, *, secrets: dict[str, str | None] | None = None,
                      facts: dict[str, Any] | None = None, bundle: Bundle | None = None,
                      not_started: list[str] | None = None) -> list[StepResult]:
    """Ship this checkout to the host, run ``task``'s steps there, relay its output, return its results.

    The host gets a private temp dir holding the code only; the settings, secrets and facts travel on
    the channel's stdin. The dir is removed afterwards (by the remote process as it exits, and again from
    here), whatever happened.
    """
    printer = ctx.printer
    bundle = bundle or code_bundle()
    session.open()
    py = remote_cmd_path(session.settings.python)
    printer.line(f"  shipping {bundle.describe()} to {session.label}", "dim")
    workdir = session.mkdtemp()
    try:
        code = ship(session, bundle, workdir)
        s = ctx.settings
        request = {
            "protocol": PROTOCOL,
            "task": task,
            "targets": list(ctx.targets),
            "dry_run": ctx.dry_run,
            "offline": ctx.shell.offline,
            "label": session.label,
            "workdir": workdir,
            "code": {"sha256": bundle.sha256, "version": bundle.marker["version"], "commit": bundle.marker["commit"]},
            "settings": s.model_dump(mode="json"),
            "env_name": s.env_name,
            "env_file": s.env_file,
            "env": {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)},
            "facts": facts or {},
            "secrets": {k: v for k, v in (secrets or {}).items() if v},
        }
        command = (f"cd {shlex.quote(code)} && PYTHONPATH={shlex.quote(code)} PYTHONDONTWRITEBYTECODE=1 "
                   f"exec {py} -u -m gptoss_gke.remote.entry")
        payload = (json.dumps(request) + "\n").encode()
        started = time.monotonic()
        status, stderr, relay = stream_command(session, command, stdin=payload, on_line=printer.line,
                                               doing=f"{task} ran there", hold_stdin=True)
        elapsed = time.monotonic() - started
    finally:
        try:
            removed = session.remove_tree(workdir) or session.alive()
        except StepError:
            removed = False
        if not removed:
            printer.line(f"  could not remove {workdir} on {session.label} (the remote process removes it as it "
                         f"exits; it holds code only, never a secret)", "dim")
    tail = ctx.redact("\n".join(stderr.strip().splitlines()[-12:] or relay.last_lines[-12:]))
    if relay.report is None and ctx.interrupt.is_set():
        raise ctx.interrupt.error(f"while {task} ran on {session.label} (it was asked to stop; it sent no report)")
    if relay.report is None:
        fix = "see the error above"
        if "ModuleNotFoundError" in stderr or "No module named" in stderr:
            fix = (f"install the missing module for {session.settings.python} on {session.host} (the remote host "
                   f"step lists what staging imports)")
        raise StepError(f"{task} on {session.label} exited {status} without a report: {tail or '(no output)'}", fix)
    doc = json.loads(relay.report)
    if doc.get("code", {}).get("sha256") != bundle.sha256:
        raise StepError(f"{session.label} ran different code than this checkout "
                        f"({doc.get('code', {}).get('sha256', '?')[:12]} ≠ {bundle.sha256[:12]})",
                        "report this: the shipped copy must shadow any installed gptoss_gke")
    results = _results_from_report(doc, session.label)
    if not_started is not None:
        not_started += [n for n in doc.get("not_started") or [] if n not in not_started]
    for r in results:
        r.facts.setdefault("code", bundle.marker.get("commit") or bundle.sha256[:12])
    printer.line("")
    code = doc.get("code", {})
    printer.line(f"  {task} ran on {session.label} ({doc.get('host')}, Python {doc.get('python')}, code from "
                 f"{code.get('package')} sha256 {str(code.get('sha256'))[:12]}) in {elapsed:.1f}s: {len(results)} "
                 f"step result(s) received", "dim")
    return results
