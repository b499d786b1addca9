"""One staging run per folder: a run's claim (its in-progress marker) and how another run reads it.

A run claims ``<folder>.partial/.in-progress`` before its first byte (created only if absent: a GCS
generation precondition, so two runs starting together cannot both win) and refreshes it every
:data:`MARKER_HEARTBEAT_S`. Another run finding it refuses to start, saying who holds it, since when,
and how to clear it if that run is gone; a marker whose process is gone (same host) or that has been
silent for :data:`MARKER_STALE_S` is taken over (again under a generation precondition). The marker
is removed when the run ends, whatever the outcome.

A staging **Job** (``staging/incluster.py``) is claimed the same way, by the ``inv`` that creates it, on the
Job's behalf: the claim names the Job (namespace, name, cluster and the API server it was created through)
and carries no heartbeat. Whether it is still live is read from the Kubernetes API, never from time: the
``inv`` following the Job may be stopped (Ctrl-C, a closed laptop) while the Job goes on writing, and a claim
that went stale with it would let another run write the same files. Running (or being created) → live;
complete, failed or gone → stale, taken over. When the Job cannot be read (no kubeconfig context, another
cluster's context, an API that does not answer) another run fails with the fix: it never takes the folder
blind. The ``inv`` that follows the Job to its end (or attaches to it later) removes the claim.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading
from dataclasses import dataclass

from gptoss_gke.core.private_files import process_alive
from gptoss_gke.core.report import format_duration
from gptoss_gke.errors import CannotObserve, StepError
from gptoss_gke.gcp.storage import gcs_error, gcs_message
from gptoss_gke.staging.state import PARTIAL_SUFFIX

MARKER_NAME = ".in-progress"  # under <folder>.partial/: a staging run is writing this folder
MARKER_HEARTBEAT_S = 30.0
MARKER_STALE_S = 600.0  # twenty missed heartbeats: the run that wrote it is gone
# A Job claim is written just before its Job is created: absent that long after, the Job never was.
JOB_START_GRACE_S = 120.0


def marker_name(folder: str) -> str:
    return f"{folder.rstrip('/')}{PARTIAL_SUFFIX}/{MARKER_NAME}"


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _when(text) -> _dt.datetime | None:
    try:
        when = _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


@dataclass
class RunMarker:
    """A staging run's claim on a folder, as another run reads it."""

    bucket: str
    name: str
    generation: int
    doc: dict
    updated: _dt.datetime | None = None  # the object's own time (markers without a heartbeat field)
    # A Job claim's Job as read through the Kubernetes API (:meth:`observe_job`): running, complete, failed, gone.
    job_state: str | None = None

    @property
    def job(self) -> dict | None:
        """The staging Job this claim was taken for (None: a local or --on run's claim)."""
        job = self.doc.get("job")
        return job if isinstance(job, dict) and job.get("name") and job.get("namespace") else None

    def names_job(self, namespace: str, name: str) -> bool:
        return bool(self.job) and (self.job["namespace"], self.job["name"]) == (namespace, name)

    def job_text(self) -> str:
        job = self.job or {}
        return f"Job {job.get('namespace')}/{job.get('name')} on cluster {job.get('cluster', '?')}"

    def observe_job(self, ctx) -> str:
        """Read the claim's Job through the Kubernetes API (kube.context); CannotObserve, with the fix, when it
        cannot be read or the context reaches another cluster than the one the claim names."""
        from gptoss_gke.k8s.client import context_fix, context_server, explain, host_port, kube
        from gptoss_gke.k8s.jobs import job_state

        s, job = ctx.settings, self.job
        folder = self.name.rsplit(PARTIAL_SUFFIX, 1)[0]
        held = f"gs://{self.bucket}/{folder}/ is claimed by the staging {self.job_text()}"
        clear = f"if you know that Job is gone, clear its claim: {self.clear_command()}"
        server, _ = context_server(s)
        if server is None:
            raise CannotObserve(f"{held}; whether it still runs cannot be read: kubeconfig {s.kubeconfig_shown} has "
                                f"no context {s.kube_context}", f"{context_fix(s)}; {clear}")
        if job.get("server") and host_port(server) != job["server"]:
            raise CannotObserve(f"{held} (API {job['server']}); kube.context {s.kube_context} reaches {server}, so "
                                f"whether it still runs cannot be read", f"set kube.context to the context of that "
                                f"cluster ({job.get('context', '?')}), then re-run; {clear}")
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            found = kube(ctx).resource("batch/v1", "Job").get(name=job["name"], namespace=job["namespace"])
        except NotFoundError:
            self.job_state = "gone"
            return self.job_state
        except CannotObserve as exc:
            raise CannotObserve(f"{held}; whether it still runs cannot be read: {exc.problem}",
                                f"{exc.fix}; {clear}") from None
        except Exception as exc:  # noqa: BLE001
            said = explain(ctx, exc)
            if said is None:
                raise
            raise CannotObserve(f"{held}; whether it still runs cannot be read: {said.problem}",
                                f"{said.fix}; {clear}") from None
        self.job_state = job_state(found.to_dict())
        return self.job_state

    def _times(self) -> tuple[_dt.datetime | None, _dt.datetime | None]:
        started = _when(self.doc.get("started")) or self.updated
        heard = _when(self.doc.get("heartbeat")) or self.updated or started
        return started, heard

    def stale_because(self) -> str | None:
        """Why the run that wrote it is gone, or None if it may still be writing."""
        if self.job:  # live while its Job is (read through the API), however long ago it was written
            started, _ = self._times()
            age = (_utc_now() - started).total_seconds() if started else None
            if self.job_state in ("complete", "failed"):
                return f"its {self.job_text()} has {self.job_state}"
            if self.job_state == "gone" and (age is None or age > JOB_START_GRACE_S):
                return f"its {self.job_text()} is gone"
            return None  # running, being created, or not read (then nobody may take it)
        host, pid = self.doc.get("host"), self.doc.get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and not process_alive(pid):
            return f"its process (pid {pid} on {host}) is gone"
        _, heard = self._times()
        if heard is None:
            return "it carries no time at all"
        silent = (_utc_now() - heard).total_seconds()
        if silent > MARKER_STALE_S:
            return f"it has been silent for {format_duration(silent)}"
        return None

    def describe(self) -> str:
        started, heard = self._times()
        now = _utc_now()
        since = f"started {format_duration((now - started).total_seconds())} ago" if started else "start unknown"
        if self.job:
            state = {"running": "running", "gone": "being created"}.get(self.job_state or "", self.job_state or "?")
            return f"{self.job_text()} ({state}), {since} from {self.doc.get('host', 'an unknown host')}"
        last = f", last heard from {format_duration(max(0.0, (now - heard).total_seconds()))} ago" if heard else ""
        who = f" on {self.doc.get('host', 'an unknown host')} (pid {self.doc.get('pid', '?')})"
        return f"{since}{who}{last}"

    def clear_command(self) -> str:
        return f"gcloud storage rm gs://{self.bucket}/{self.name}"




class FolderClaim:
    """This run's in-progress marker on a staging folder (see "One run per folder" above).

    Taken before the first byte (it is also the first write: a bucket we cannot write fails here),
    refreshed every :data:`MARKER_HEARTBEAT_S` by a thread, removed when the block ends, whatever happened.
    Every write carries a generation precondition, so two runs never both hold it.
    """

    def __init__(self, ctx, bucket, folder: str, revision: str, stale: RunMarker | None, *, job: dict | None = None):
        """``job``: the claim is taken for that staging Job (namespace, name, cluster, server; see the module's
        docstring): no heartbeat, and :meth:`take` / :meth:`release` are called by its follower, not a block."""
        self.ctx = ctx
        self.bucket = bucket
        self.where = f"gs://{bucket.name}/{folder}"
        self.blob = bucket.blob(marker_name(folder))
        self.generation = stale.generation if stale else 0  # 0: create only if absent
        self.doc = {"tool": "gptoss-gke stage-model", "environment": ctx.settings.env_name, "revision": revision,
                    "host": socket.gethostname(),
                    "pid": os.getpid(), "claim": os.urandom(8).hex(), "started": _utc_now().isoformat(),
                    **({"job": job} if job else {})}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def held(cls, ctx, bucket, marker: RunMarker) -> "FolderClaim":
        """The claim ``marker`` is, to release it (the Job it was taken for has been followed to its end)."""
        folder = marker.name[:-len(PARTIAL_SUFFIX + "/" + MARKER_NAME)] + "/"
        claim = cls(ctx, bucket, folder, marker.doc.get("revision", ""), marker)
        claim.doc = dict(marker.doc)
        return claim

    def _write(self) -> None:
        from google.api_core import exceptions as gexc

        data = json.dumps({**self.doc, "heartbeat": _utc_now().isoformat()}).encode()
        try:
            self.blob.upload_from_string(data, content_type="application/json",
                                         if_generation_match=self.generation, retry=None)
        except gexc.PreconditionFailed:
            if not self._still_ours():  # (a retry after a lost answer finds our own write)
                raise
        self.generation = int(self.blob.generation or 0)

    def _still_ours(self) -> bool:
        try:
            current = self.bucket.get_blob(self.blob.name, retry=None)
            doc = json.loads(current.download_as_bytes(retry=None)) if current is not None else {}
        except Exception:  # noqa: BLE001 - cannot tell: not ours
            return False
        if isinstance(doc, dict) and doc.get("claim") == self.doc["claim"]:
            self.blob = current
            return True
        return False

    def take(self) -> "FolderClaim":
        """Write the claim (create only if absent, or replace the stale one it was made with)."""
        from google.api_core import exceptions as gexc

        try:
            self.ctx.retrying(self._write, "claiming the staging folder")
        except gexc.PreconditionFailed:
            raise StepError(f"another stage-model run claimed {self.where} a moment ago",
                            "wait for it to finish, then re-run (what it staged is kept)") from None
        except Exception as exc:  # noqa: BLE001
            err = gcs_error(exc, bucket=self.bucket.name, doing="writing to")
            if isinstance(err, StepError) and "permission denied" in err.problem:
                raise StepError(f"gs://{self.bucket.name} is not writable by this identity: {gcs_message(exc)}",
                                f"ask for roles/storage.objectAdmin (or storage.admin) on gs://{self.bucket.name}, "
                                f"or set models.bucket to a bucket you own") from None
            raise err from None
        return self

    def __enter__(self) -> "FolderClaim":
        self.take()
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="stage-claim")
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        from google.api_core import exceptions as gexc

        while not self._stop.wait(MARKER_HEARTBEAT_S):
            try:
                self._write()
            except gexc.PreconditionFailed:
                self.generation = -1  # taken over: this run was silent too long (a suspended laptop, say)
                return
            except Exception:  # noqa: BLE001 - one missed heartbeat is not fatal: stale takes many
                continue

    def check(self) -> None:
        """Still ours? Checked before the manifest is written: it is what makes a folder complete."""
        if self.generation < 0:
            raise StepError(f"another stage-model run took over {self.where} while this one was silent",
                            "let that run finish, then re-run to verify the folder")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.release()

    def release(self) -> None:
        """Remove the claim if it is still the one this run wrote (generation precondition)."""
        from google.api_core import exceptions as gexc

        if self.generation < 0:
            return  # not ours any more
        try:
            self.blob.delete(if_generation_match=self.generation, retry=None)
        except gexc.NotFound:
            pass
        except Exception:  # noqa: BLE001 - best effort: a leftover marker only says when it was last refreshed
            pass
