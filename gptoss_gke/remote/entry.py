"""What runs on the remote host: ``python3 -u -m gptoss_gke.remote.entry`` from a shipped copy of this package.

The local side (:mod:`gptoss_gke.remote.steps`) uploads this package into a private temp dir on the host and
starts this module there. The protocol is deliberately small:

* **stdin**: one JSON line, the request — the task, its targets, dry-run, the validated settings, the
  secrets (HF token, the gcloud access token), facts the local side already observed (the project), the
  few environment variables that select endpoints, and the digest of the code that was sent. Secrets
  therefore never appear on a command line or at rest on the host: they live in this process's memory.
* **stdout**: the run's own output as it happens (TASK headers, progress, ok/changed/failed lines; every
  line redacted), relayed live by the local side; then one line starting with :data:`REPORT_MARK`
  followed by the run's JSON report (redacted), which the local side turns into its step results.
* **exit status**: 0 every step ok, 1 a step failed, 2 a bad request (wrong protocol, different code), 130
  interrupted.
* **stdin stays open** after the request while the local side waits. Its EOF means the local run was
  interrupted, died, or lost the connection: this run then stops exactly as a local run does on Ctrl-C
  (no new step, chunk or command; children terminated; the report says interrupted). So a transfer never
  outlives the run that started it, and a re-run never races it on the same partial files.

Before anything else the shipped code checks itself: the digest of the package it imported must equal
the one the local side computed, so the remote runs exactly this checkout, not an installed copy.
At exit the work directory is removed (the local side removes it too; this covers a dropped connection).

Only the standard library is imported at module level: the local side imports :func:`tree_digest` and
:data:`REPORT_MARK` from here too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import threading
import traceback
from pathlib import Path

PROTOCOL = 1
REPORT_MARK = "\x1egptoss-gke-report "
WORKDIR_PREFIX = "gptoss-gke."
# The only environment variables a request may set on the remote side: endpoint selection for the
# clients (an emulator or mirror the local run uses), never credentials.
FORWARDED_ENV = ("STORAGE_EMULATOR_HOST", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_XET",
                 "HF_HUB_DISABLE_UPDATE_CHECK", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_ETAG_TIMEOUT",
                 "HF_HUB_DOWNLOAD_TIMEOUT", "NO_COLOR", "DO_NOT_TRACK")


def package_files(root: Path) -> list[Path]:
    """The files that make up the package: sources and package data, no caches or dotfiles."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
            continue
        if path.suffix in (".pyc", ".pyo"):
            continue
        out.append(path)
    return out


def tree_digest(root: Path) -> str:
    """sha256 over every package file's relative path and bytes: equal digests, equal code."""
    h = hashlib.sha256()
    for path in package_files(root):
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        h.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _tasks(request: dict):
    from gptoss_gke.staging.steps import StageModel, stage_model_steps

    def stage_share(settings, targets):  # a pod of the in-cluster staging Job (staging/pod.py)
        index, pods = request["share"]
        return [StageModel(settings, name, share=(int(index), int(pods))) for name in targets]

    return {"stage-model": stage_model_steps, "stage-share": stage_share}


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"gptoss-gke remote: {message}\n")
    sys.stderr.flush()
    return code


def run(request: dict) -> int:
    if request.get("protocol") != PROTOCOL:
        return _fail(f"protocol {request.get('protocol')!r} not understood (this side speaks {PROTOCOL})")
    for key, value in (request.get("env") or {}).items():
        if key not in FORWARDED_ENV:
            return _fail(f"refusing to set environment variable {key} (not an endpoint setting)")
        os.environ[key] = str(value)
    # Children (gcloud, should a token need refreshing) must not import from the shipped copy.
    os.environ.pop("PYTHONPATH", None)

    import gptoss_gke

    package = Path(gptoss_gke.__file__).resolve().parent
    digest = tree_digest(package)
    expected = (request.get("code") or {}).get("sha256")
    if digest != expected:
        return _fail(f"the code imported from {package} (sha256 {digest[:12]}) is not the code that was sent "
                     f"({str(expected)[:12]}): an installed gptoss_gke shadows the shipped copy")

    import invoke
    from pydantic import SecretStr

    from gptoss_gke.config import Settings
    from gptoss_gke.core.interrupt import signals_handled
    from gptoss_gke.core.redact import Redactor
    from gptoss_gke.core.report import Printer
    from gptoss_gke.core.retry import RetryPolicy
    from gptoss_gke.core.runner import Context, Runner
    from gptoss_gke.core.shell import Shell

    secrets = request.get("secrets") or {}
    redactor = Redactor()
    for value in secrets.values():
        redactor.add(value)
    label = request.get("label") or socket.gethostname()

    class RemotePrinter(Printer):
        def task(self, section: str, name: str) -> None:
            title = f"TASK [{section} : {name}] on {label} "
            self.line("")
            self.line(title + "*" * max(3, self.width - len(title)), "bold")

    printer = RemotePrinter(redactor, stream=sys.stdout, color=False)
    settings = Settings.model_validate(request["settings"])
    settings.env_name = request.get("env_name") or settings.env_name
    settings.env_file = request.get("env_file")
    if secrets.get("hf_token"):
        settings.hf_token = SecretStr(secrets["hf_token"])
    dry_run = bool(request.get("dry_run"))
    r = settings.retry
    shell = Shell(invoke.Context(), redactor, dry_run=dry_run, retry=RetryPolicy(r.attempts, r.base_delay_s,
                                                                                   r.max_delay_s),
                  emit=printer.line, where=label)
    if request.get("offline"):
        shell.offline = request["offline"]
    ctx = Context(settings, shell, printer, redactor, dry_run=dry_run, interactive=False)
    targets = list(request.get("targets") or [])
    ctx.targets = targets
    # What the local side already observed: the same facts, so nothing is asked twice.
    for key, value in (request.get("facts") or {}).items():
        ctx.fact(key, lambda value=value: value)
    if secrets.get("gcp_access_token"):
        ctx.fact("gcp.access_token", lambda: secrets["gcp_access_token"])

    task = request.get("task")
    tasks = _tasks(request)
    if task not in tasks:
        return _fail(f"unknown task {task!r} (this side runs: {', '.join(tasks)})")
    with signals_handled(printer.line) as stop:
        if request.get("watch_stdin", True):  # a pod has no local side holding stdin open: SIGTERM stops it
            threading.Thread(target=_stop_on_eof, args=(stop,), daemon=True, name="stdin-eof").start()
        runner = Runner(ctx)
        results = runner.run(tasks[task](settings, targets))
    doc = {
        "protocol": PROTOCOL,
        "task": task,
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "code": {"sha256": digest, "package": str(package)},
        "steps": [res.to_json() for res in results],
        "not_started": runner.not_started,
        "interrupted": stop.name or None,
    }
    sys.stdout.write(REPORT_MARK + json.dumps(redactor.scrub(doc), default=str) + "\n")
    sys.stdout.flush()
    if stop.is_set():
        return stop.exit_status
    return 1 if any(res.status == "failed" for res in results) else 0


def _stop_on_eof(stop) -> None:
    """The local side sends nothing after the request; EOF on stdin means it stopped (see the docstring)."""
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    stop.trigger("the local side (its SSH stdin closed)", 130)


def main() -> int:
    line = sys.stdin.readline()
    try:
        request = json.loads(line)
    except ValueError:
        return _fail("expected one JSON request line on stdin")
    workdir = request.get("workdir")
    try:
        return run(request)
    except Exception:  # noqa: BLE001 - reported to the local side, redacted, with the traceback
        text = traceback.format_exc()
        for value in (request.get("secrets") or {}).values():
            if value:
                text = text.replace(value, "***")
        return _fail("unexpected error:\n" + text, 3)
    finally:
        request.pop("secrets", None)
        if workdir and Path(workdir).name.startswith(WORKDIR_PREFIX):
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
