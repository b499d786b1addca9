"""Staging in the cluster's region: the transfer as an Indexed Job, followed from here.

``inv stage-model --in-cluster`` (or ``models.stage_in: cluster``, which ``deploy`` honours) runs these
steps instead of the local transfer:

1. the bucket and the serving account's read grant, as for local staging;
2. :class:`~gptoss_gke.gcp.storage.PrefixGrant`: ``roles/storage.objectUser`` for the staging account's
   Workload Identity principal, only on objects under ``<models.prefix>/<model id>/`` (the revision's
   folder and its ``.partial/`` records) — nothing else in the bucket is readable or writable by it;
3. the namespace and that dedicated Kubernetes service account (``manifests/staging/serviceaccount.yaml``);
4. the tools image the pods run (``models.stager_image``) mirrored into the Artifact Registry repository and
   pinned by digest (``images.MirrorImage`` with key ``images.TOOLS``): the Job names it ``…@sha256:…``, so
   every pod of every retry runs the same bytes, pulled from the cluster's region, never Docker Hub;
5. :class:`StageInCluster`: a complete folder (manifest present and verified) creates nothing. Otherwise a
   Job named after the target and revision: if one is running it is attached to, never duplicated (the
   name is the claim); else the code ConfigMap, the HF token Secret (when there is a token) and the Job are
   applied. Pod ``i`` stages the files ``share_of()`` gives index ``i`` (``staging/pod.py``), with the very
   transfer engine local staging uses; this run reads the pods' JSON progress lines from their logs and
   prints one progress line for all of them. When the Job completes this run writes the manifest (after
   listing the folder again: every file present with the hub's sha256). When it fails, the last log lines of
   its failed pods are shown with the fix.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
from pathlib import Path

from gptoss_gke.core.report import format_duration, format_size
from gptoss_gke.core.step import Change, Plan, skip
from gptoss_gke.errors import Interrupted, StepError
from gptoss_gke.gcp.project import Credentials, Project, project_number
from gptoss_gke.gcp.storage import (GCS_SDK, Bucket, BucketIamBinding, PrefixGrant, RevokePrefixGrant, abort_uploads,
                                    gcs_client, workload_principal)
from gptoss_gke.k8s.client import SDK as KUBE_SDK
from gptoss_gke.k8s.client import KubeStep, kube
from gptoss_gke.k8s.jobs import (apply_owned_by_job, failed_condition, job_pod_log, job_pods,
                                 job_state)
from gptoss_gke.k8s.manifests import render, render_template
from gptoss_gke.k8s.objects import KubeObject
from gptoss_gke.k8s.podcode import BOOTSTRAP
from gptoss_gke.staging.chunks import PROGRESS_KEY
from gptoss_gke.staging.claim import FolderClaim
from gptoss_gke.staging.hub import HF_SDK
from gptoss_gke.staging.shares import default_pods
from gptoss_gke.staging.state import manifest_ok, stale_uploads
from gptoss_gke.staging.steps import StageModel, model_folder

STAGER_ACCOUNT = "gptoss-stager"
STAGER_ROLE = "roles/storage.objectUser"  # objects: create, get, list, delete; multipart uploads. No bucket admin.
COMPONENT = {"app.kubernetes.io/component": "model-staging"}
REVISION_LABEL = "gptoss-gke/revision"
STAGE_CONTAINER = "stage"  # the container of manifests/staging/job.yaml
# Sizing from bench/bench_stage_model.py: 1.4 CPU-s per GB moved once the chunk memory is reused (1.9 for a run
# smaller than the chunk budget), so half a core carries 260-350 MB/s (more than the CDN gives one pod);
# memory holds the chunk budget (2 × workers × chunk) plus the interpreter.
POD_CPU = "500m"
RETRIES_PER_POD = 4
JOB_TTL_S = 600
JOB_DEADLINE_S = 6 * 3600
# Endpoint selection the local run uses (an emulator, a mirror), passed on as --on does; never credentials.
FORWARDED_ENV = ("STORAGE_EMULATOR_HOST", "HF_HUB_DISABLE_TELEMETRY", "HF_HUB_ETAG_TIMEOUT",
                 "HF_HUB_DOWNLOAD_TIMEOUT")


def model_prefix(settings, target) -> str:
    """``<prefix>/<model id>/``: every revision's folder and its ``.partial/`` sibling, and nothing else."""
    return model_folder(settings, target, "x").rsplit("/", 2)[0] + "/"


def job_name(target, revision: str) -> str:
    return f"stage-{target.name}-{revision[:12]}"


def _stager(ctx) -> str:
    return workload_principal(ctx.settings, project_number(ctx), STAGER_ACCOUNT)


def _grant_args(settings, target) -> dict:
    prefix = model_prefix(settings, target)
    return {"member": _stager, "role": STAGER_ROLE, "prefix": prefix,
            "title": f"gptoss-gke stager {settings.env_name} {target.model_id}"[:100],
            "key": f"gcs.stager-grant.{prefix}"}


def stage_in_cluster_steps(settings, targets: list[str], *, with_repository: bool = True) -> list:
    """Bucket and serving grant, then per model the staging account's prefix grant, its Kubernetes account,
    the pods' image (after the repository, unless the chain has it already: ``with_repository=False``), and
    one Job per target."""
    from gptoss_gke.gcp.registry import ArtifactRepository
    from gptoss_gke.images import TOOLS, MirrorImage

    targets = [t for t in targets if settings.target(t).weights == "bucket"]
    if not targets or not settings.models.bucket:
        return [StageModel(settings, t) for t in targets]  # skip lines: nothing to stage
    steps: list = [Bucket(settings), BucketIamBinding(settings)]
    grants = {}
    for t in targets:
        grant = PrefixGrant(settings, **_grant_args(settings, settings.target(t)))
        grants.setdefault(grant.key, grant)
    steps += list(grants.values())
    steps += [namespace_step(settings, targets[0]), KubeObject(stager_account(settings))]
    steps += [*([ArtifactRepository(settings)] if with_repository else []), MirrorImage(settings, TOOLS)]
    steps += [StageInCluster(settings, t) for t in targets]
    return steps


def revoke_stager_grants(settings, targets: list[str], others: dict) -> list:
    """Teardown (--purge-model): the staging account's prefix grants, unless another environment stages the
    same model into the same bucket (as its own account: kept only when the principal is the same too)."""
    out = {}
    for t in targets:
        target = settings.target(t)
        args = _grant_args(settings, target)

        def shared(other, target=target) -> bool:
            return (other.models.bucket == settings.models.bucket and other.workload_pool == settings.workload_pool
                    and other.kube.namespace == settings.kube.namespace
                    and model_prefix(other, other.target(target.name)) == args["prefix"])

        step = RevokePrefixGrant(settings, others=others, shared=shared, **args)
        out.setdefault(step.key, step)
    return list(out.values())


def namespace_step(settings, target_name: str) -> KubeObject:
    [ns] = [o for o in render(settings, settings.target(target_name), image="-") if o["kind"] == "Namespace"]
    step = KubeObject(ns)
    step.key = "staging.namespace"  # deploy applies the same object again later, as a no-op
    return step


def _labels(settings, **extra) -> dict:
    return {**settings.object_labels, **COMPONENT, **extra}


def stager_account(settings) -> dict:
    [sa] = render_template("staging/serviceaccount.yaml", {"name": STAGER_ACCOUNT,
                                                            "namespace": settings.kube.namespace,
                                                            "labels": _labels(settings)})
    return sa


# The pods' requirements: every distribution the staging code needs, transitively, pinned with the sha256 of
# each wheel of that version, for the tools image's Python (3.12, linux x86_64 and arm64). Regenerated by
# scripts/lock_stager_requirements.py; installed by k8s/podcode.py's pip line (--require-hashes --no-deps).
REQUIREMENTS_LOCK = Path(__file__).with_name("stager-requirements.txt")


def requirements() -> list[str]:
    """The hash-locked requirements the staging pods install (when their image lacks them), as lines."""
    return REQUIREMENTS_LOCK.read_text().splitlines()


# ---------------------------------------------------------------------------------------------


class StageInCluster(KubeStep):
    section = "models"
    sdk_modules = GCS_SDK + HF_SDK + KUBE_SDK

    def __init__(self, settings, target_name: str):
        from gptoss_gke.images import TOOLS, MirrorImage

        self.local = StageModel(settings, target_name)
        self.target_name = target_name
        self.target = settings.target(target_name)
        self.name = f"stage {self.target.model_id} ({target_name}) in the cluster"
        self.key = f"staging.{target_name}"
        # The Job's image is pinned after the tools image is mirrored.
        self.needs = (Credentials.key, Project.key, Bucket.key, MirrorImage.step_key(TOOLS))

    # ---- observe
    def observe(self, ctx):
        if self.target.weights != "bucket":
            return None
        obs = self.local.observe(ctx)
        return {"obs": obs, "job": self._read_job(ctx, job_name(self.target, obs.revision))}

    def _read_job(self, ctx, name: str) -> dict | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            return kube(ctx).resource("batch/v1", "Job").get(name=name, namespace=ctx.settings.kube.namespace).to_dict()
        except NotFoundError:
            return None

    # ---- plan
    def plan(self, ctx, current) -> Plan:
        if self.target.weights != "bucket":
            return skip(f"{self.target_name} loads {self.target.model_id} from the hub into its volume; nothing "
                        f"to stage")
        if current is None:  # dry-run without cloud access
            return Plan([Change(f"stage {self.target.model_id} with a Job in namespace {ctx.settings.kube.namespace}",
                                "create", apply=lambda ctx: None)])
        obs, job = current["obs"], current["job"]
        name = job_name(self.target, obs.revision)
        state = job_state(job) if job else None
        mine = obs.marker is not None and obs.marker.names_job(ctx.settings.kube.namespace, name)
        if state == "running" and (mine or obs.marker is None or obs.marker.stale_because() is not None):
            # The folder's claim is this Job's: what is missing is its to stage, and ours to follow.
            local = self.local.plan(ctx, dataclasses.replace(obs, marker=None))
            if not local.changes:
                return local
            running = (job.get("status") or {}).get("active", 0)
            return Plan([Change(f"attach to Job {name}, already staging {self.target.model_id}@{obs.revision[:12]} "
                                f"({running} pod(s) running)", "update",
                                apply=lambda ctx: self._follow(ctx, name, self._held(ctx, obs.marker, mine)))],
                        facts={**local.facts, "job": name, "attached": True})
        # Another run's live claim (a local run, --on, another Job) is refused here, with who holds it; a stale
        # one (ours included: its Job finished or is gone) is taken over.
        local = self.local.plan(ctx, obs)
        if not local.changes or not local.facts.get("files_to_move"):
            return local  # staged (no Job is created), or only the manifest to write: done here
        pods = ctx.settings.models.stage_pods or default_pods(obs.files)
        facts = {**local.facts, "job": name}
        from gptoss_gke.images import tools_image

        detail = [*local.changes[0].detail,
                  f"Job {ctx.settings.kube.namespace}/{name}: {pods} pod(s) on CPU nodes, each {POD_CPU} CPU, "
                  f"{self._memory(ctx)[0]} memory, {RETRIES_PER_POD} retries per pod, image {tools_image(ctx)}",
                  f"ConfigMap {name}-code: this checkout (code sha256 checked in the pod)"]
        if ctx.settings.hf_token:
            detail.append(f"Secret {name}-hf-token: the Hugging Face token (HF_TOKEN in the pods' environment)")
        if state is not None:
            detail.insert(0, f"replace the finished Job {name} ({state})")
        summary = local.changes[0].summary.replace("stage ", "stage in the cluster: ", 1)
        return Plan([Change(summary, "create" if state is None else "update",
                            apply=lambda ctx: self._run(ctx, obs, name, pods, replace=state is not None),
                            detail=detail)], facts={**facts, "pods": pods}, diff=local.diff)

    def _memory(self, ctx) -> tuple[str, str]:
        m = ctx.settings.models
        budget_mib = 2 * m.workers * m.chunk_mib
        return f"{budget_mib + 512}Mi", f"{budget_mib + 1024}Mi"

    # ---- act
    def _job_ref(self, ctx, name: str) -> dict:
        """What the folder's claim says of the Job: enough for another run to read it, and to tell its cluster."""
        from gptoss_gke.k8s.client import context_server, host_port

        s = ctx.settings
        server, _ = context_server(s)
        return {"namespace": s.kube.namespace, "name": name, "context": s.kube_context,
                "cluster": f"{s.project}/{s.cluster_location}/{s.cluster.name}",
                **({"server": host_port(server)} if server else {})}

    def _held(self, ctx, marker, mine: bool) -> FolderClaim | None:
        """The claim taken for the Job this run attaches to (by the run that created it), to remove at its end."""
        return FolderClaim.held(ctx, gcs_client(ctx).bucket(self.local.bucket), marker) if mine else None

    def _run(self, ctx, obs, name: str, pods: int, *, replace: bool) -> None:
        # The folder's claim first, on the Job's behalf (a run that claimed it a moment ago wins, and no Job is
        # made); kept while the Job runs, whatever happens to this run, and removed when it is followed to its end.
        folder = model_folder(ctx.settings, self.target, obs.revision)
        claim = FolderClaim(ctx, gcs_client(ctx).bucket(self.local.bucket), folder, obs.revision, obs.marker,
                            job=self._job_ref(ctx, name)).take()
        try:
            if replace:
                self._delete_job(ctx, name)
            objects = self._objects(ctx, obs, name, pods)
            for obj in objects:
                KubeObject(obj)._apply(ctx)
        except Exception as exc:
            if not isinstance(exc, Interrupted):  # (interrupted: the Job may exist; the claim stays with it)
                claim.release()  # no Job was made to hold it
            raise
        # The code and the token belong to the Job: they go when it goes (after success, ttlSecondsAfterFinished;
        # teardown deletes a failed one), by Kubernetes' garbage collector.
        apply_owned_by_job(ctx, name, [o for o in objects if o["kind"] in ("ConfigMap", "Secret")])
        self._follow(ctx, name, claim)

    def _delete_job(self, ctx, name: str) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            kube(ctx).resource("batch/v1", "Job").delete(name=name, namespace=ctx.settings.kube.namespace,
                                                         body={"propagationPolicy": "Foreground"})
        except NotFoundError:
            pass
        while self._read_job(ctx, name) is not None:
            ctx.sleep(ctx.settings.kube.poll_interval_s)

    def _objects(self, ctx, obs, name: str, pods: int) -> list[dict]:
        from gptoss_gke.images import tools_image
        from gptoss_gke.k8s.podcode import code_configmap
        from gptoss_gke.remote.entry import PROTOCOL
        from gptoss_gke.remote.steps import STAGING_MODULES

        s = ctx.settings
        labels = _labels(s, **{REVISION_LABEL: obs.revision, "gptoss-gke/target": self.target_name})
        request = {"protocol": PROTOCOL, "task": "stage-share", "targets": [self.target_name],
                   "settings": s.model_dump(mode="json"), "env_name": s.env_name, "pods": pods, "facts": {}}
        objects, env = code_configmap(s, name=f"{name}-code", labels=labels, request=request,
                                      requirements=requirements(), main="gptoss_gke.staging.pod",
                                      modules=list(STAGING_MODULES))
        env += [{"name": k, "value": os.environ[k]} for k in FORWARDED_ENV if os.environ.get(k)]
        if s.hf_token:
            secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                      "metadata": {"name": f"{name}-hf-token", "namespace": s.kube.namespace, "labels": labels},
                      "data": {"HF_TOKEN": base64.b64encode(s.hf_token.get_secret_value().encode()).decode()}}
            objects.append(secret)
            env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": f"{name}-hf-token",
                                                                            "key": "HF_TOKEN"}}})
        memory, limit = self._memory(ctx)
        objects += render_template("staging/job.yaml", {
            "name": name, "namespace": s.kube.namespace, "labels": labels, "pods": pods,
            "retries_per_pod": RETRIES_PER_POD, "ttl_s": JOB_TTL_S, "deadline_s": JOB_DEADLINE_S,
            "service_account": STAGER_ACCOUNT, "image": tools_image(ctx), "bootstrap": BOOTSTRAP,
            "env": env, "cpu": POD_CPU, "memory": memory, "memory_limit": limit, "code_configmap": f"{name}-code"})
        return objects

    def _follow(self, ctx, name: str, claim: FolderClaim | None) -> None:
        """Until the Job completes or fails: one progress line for all its pods, from their JSON log lines. Then
        the folder's claim (``claim``: the one taken for this Job) is removed; an interrupted run leaves it to the
        Job, which keeps writing."""
        s = ctx.settings
        seen: dict[str, dict] = {}
        last_line = 0.0
        started = time.monotonic()
        while True:
            job = self._read_job(ctx, name)
            if job is None:
                if claim is not None:
                    claim.release()
                raise StepError(f"Job {s.kube.namespace}/{name} disappeared while staging",
                                "someone deleted it; re-run (what was staged is kept and resumed)")
            pods = job_pods(ctx, name)
            for p in pods:
                rec = self._last_progress(ctx, p)
                if rec:
                    seen[p["metadata"]["name"]] = rec
            state = job_state(job)
            if time.monotonic() - last_line >= 5 or state != "running":
                ctx.printer.line(progress_line(job, pods, seen, time.monotonic() - started), "dim")
                last_line = time.monotonic()
            if state == "complete":
                break
            if state == "failed":
                if claim is not None:
                    claim.release()  # it writes no more: a re-run (here, locally or as a new Job) takes over
                raise self._failure(ctx, job, pods)
            try:
                ctx.sleep(s.kube.poll_interval_s)
            except Interrupted:
                # Stopping it would be a new write: it is said instead, with the command.
                ctx.printer.line(f"    the Job {name} keeps staging in the cluster, and holds the folder's claim "
                                 f"until it ends: a re-run attaches to it; `kubectl -n {s.kube.namespace} delete job "
                                 f"{name}` stops it (what it staged is kept and resumed)", "dim")
                raise
        self._finish(ctx)
        if claim is not None:
            claim.release()

    def _finish(self, ctx) -> None:
        """The Job is done: list the folder again, abort what the pods left open (a pod killed before its first
        resume record leaves an upload its retry cannot know of), and write the manifest here (under the Job's
        claim, removed after: the Job that wrote the files is done, and a second run that attached writes the
        same manifest)."""
        obs = self.local.observe(ctx)
        plan = self.local.plan(ctx, obs)
        if plan.facts.get("files_to_move"):
            raise StepError(f"the staging Job completed but {plan.facts['files_to_move']} file(s) are still missing "
                            f"or unverified in gs://{self.local.bucket}/{plan.facts['folder']}",
                            "re-run: a new Job stages what is missing")
        abort_uploads(ctx, self.local.bucket, stale_uploads(obs, {}))  # every file is staged: none continues
        if not manifest_ok(obs):
            folder = model_folder(ctx.settings, self.target, obs.revision)
            self.local._write_manifest(ctx, gcs_client(ctx).bucket(self.local.bucket), folder, obs)

    def _last_progress(self, ctx, p: dict) -> dict | None:
        for line in reversed(job_pod_log(ctx, p, container=STAGE_CONTAINER, tail_lines=20)):
            if PROGRESS_KEY in line:
                try:
                    return json.loads(line[line.index("{"):])
                except ValueError:
                    continue
        return None

    def _failure(self, ctx, job: dict, pods: list[dict]) -> StepError:
        failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"] or pods
        tails = []
        for p in failed[-3:]:
            log = job_pod_log(ctx, p, container=STAGE_CONTAINER, tail_lines=40)
            lines = [ln for ln in log if PROGRESS_KEY not in ln]
            tails.append((p["metadata"]["name"], lines))
        failed_as = failed_condition(job) or {}
        reason = failed_as.get("message") or failed_as.get("reason") or "failed"
        problem, fix = explain_failure([ln for _, ls in tails for ln in ls])
        shown = "".join(f"\n    --- {n} (last lines) ---" + "".join(f"\n    {ln}" for ln in ls[-8:])
                        for n, ls in tails)
        return StepError(f"the staging Job {job['metadata']['name']} failed ({reason}): {problem}{shown}", fix)


def progress_line(job: dict, pods: list[dict], seen: dict[str, dict], elapsed: float) -> str:
    """One line for the whole Job: bytes, rate, ETA, pods running / finished / retrying."""
    status = job.get("status") or {}
    best: dict[str, dict] = {}  # per index: the furthest any of its pods got (a retry resumes, never restarts)
    by_pod = {p["metadata"]["name"]: p for p in pods}
    for pod_name, rec in seen.items():
        p = by_pod.get(pod_name)
        index = ((p or {}).get("metadata", {}).get("annotations") or {}).get(
            "batch.kubernetes.io/job-completion-index", pod_name)
        if index not in best or rec.get("bytes", 0) >= best[index].get("bytes", 0):
            best[index] = rec
    done = sum(r.get("bytes", 0) for r in best.values())
    total = sum(r.get("total", 0) for r in best.values())
    rate = done / elapsed if elapsed > 0 else 0
    eta = format_duration((total - done) / rate) if rate > 0 and total > done else "-"
    finished = len([x for x in str(status.get("completedIndexes") or "").split(",") if x])
    retrying = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
    return (f"    staged {format_size(done)} of {format_size(total) if total else '?'}, {format_size(rate)}/s, "
            f"ETA {eta}; pods running {status.get('active', 0)}, finished {status.get('succeeded', finished)}, "
            f"retried {retrying}")


# Known failures in the pods' last lines → (problem, fix). Our own steps' errors (the report line) already
# carry a fix and are shown as they are; these cover what fails before or around them.
_FAILURES = [
    (lambda t: "token" in t and any(w in t for w in ("refused", "401", "gated", "invalid")),
     "the Hugging Face token was refused",
     "set a valid token (HF_TOKEN or models.hf_token_file) with access to the model, then re-run"),
    (lambda t: ("403" in t and "storage" in t) or "permission denied" in t,
     "the staging account may not write to the bucket",
     f"re-run (the grant step restores {STAGER_ROLE} for {STAGER_ACCOUNT} under the model's prefix) and check that "
     f"Workload Identity is enabled on the cluster and its node pools"),
    (lambda t: "quota" in t, "a quota was exceeded", "raise the quota it names, or lower models.stage_pods"),
    (lambda t: "429" in t, "the hub is rate-limiting the pods", "lower models.stage_pods or models.workers"),
    (lambda t: any(w in t for w in ("do not match the hashes", "no matching distribution", "not a supported wheel",
                                    "could not find a version that satisfies")),
     "the pods could not install the hash-locked requirements",
     "models.stager_image must run Python 3.12 on linux x86_64 or arm64 (the lock's interpreter); if PyPI now "
     "serves another file for a locked version, regenerate the lock: scripts/lock_stager_requirements.py"),
    (lambda t: any(w in t for w in ("cannot reach", "name or service not known", "connection refused", "timed out",
                                    "temporary failure in name resolution")),
     "the pods cannot reach the Hugging Face Hub (or PyPI)",
     "allow egress from the cluster to huggingface.co and its CDN (and pypi.org unless models.stager_image carries "
     "the requirements): a private cluster needs Cloud NAT"),
]


def explain_failure(lines: list[str]) -> tuple[str, str]:
    from gptoss_gke.remote.entry import REPORT_MARK

    mark = REPORT_MARK.strip()
    for line in reversed(lines):
        if mark in line:
            try:
                doc = json.loads(line.split(mark, 1)[1])
            except (ValueError, IndexError):
                break
            for step in doc.get("steps") or []:
                if step.get("status") == "failed" and step.get("error"):
                    return step["error"], step.get("fix") or "see the lines below"
    low = "\n".join(lines).lower()
    for matches, problem, fix in _FAILURES:
        if matches(low):
            return problem, fix
    return "see its last log lines", "fix what they name, then re-run (what was staged is kept and resumed)"

