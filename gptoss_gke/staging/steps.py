"""The staging steps: the weights of a target staged into its bucket folder, and purged from it.

:class:`StageModel` (per target): resolve the revision to a commit, list the repo's files with sizes
and hashes, list what is already under ``gs://<bucket>/<prefix>/<model id>/<commit>/``, plan the
difference, transfer it (``staging/transfer.py``). GCS computes no sha256, so we store it
(``x-goog-meta-sha256``, set when the upload starts, completed only after it matched); an object with
the expected size and sha256 is skipped, and a manifest object (revision, files, sizes, sha256, crc32c),
written last, makes a complete folder a no-op after one listing.

:class:`PurgeStagedModel` (``teardown --purge-model``): what StageModel wrote for this environment,
and the unfinished uploads a killed run left (their parts are billed until aborted).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gptoss_gke.core.report import format_duration, format_size
from gptoss_gke.core.step import Change, Plan, Step, noop, skip
from gptoss_gke.errors import StepError
from gptoss_gke.gcp.project import Credentials, Project
from gptoss_gke.gcp.storage import (GCS_SDK, Bucket, BucketIamBinding, MultipartUploads, RevokeBucketIamBinding,
                                    abort_uploads, gcs_client, gcs_error)
from gptoss_gke.ownership import kept_for
from gptoss_gke.staging.chunks import Tuning
from gptoss_gke.staging.claim import MARKER_NAME, MARKER_STALE_S, FolderClaim, RunMarker, marker_name
from gptoss_gke.staging.shares import share_of
from gptoss_gke.staging.hub import HF_DEFAULT, HF_SDK, HubRepo, RepoFile, select_files
from gptoss_gke.staging.state import (MANIFEST_NAME, MAX_PARTS, PARTIAL_SUFFIX, SHA_KEY, UPLOAD_KEY, Observed,
                                      StagedObject, manifest_ok, records_of, resume_points, staged, stale_uploads)
from gptoss_gke.staging.transfer import Transfer
from gptoss_gke.targets import CATALOGUE

COMMIT = re.compile(r"^[0-9a-f]{40}$")


def model_folder(settings, target, revision: str | None = None) -> str:
    """``<prefix>/<model id>/<revision>/``: where a target's weights live in the bucket.

    ``revision`` defaults to the target's configured one; pass the resolved commit when the
    configuration names a branch (StageModel reports it as the ``revision`` fact).
    """
    rev = revision or target.model_revision
    prefix = settings.models.prefix.strip("/")
    return f"{prefix}/{target.model_id}/{rev}/" if prefix else f"{target.model_id}/{rev}/"


def resolved_revision(ctx, target_name: str) -> str:
    """The commit a target's weights come from: the configured one, or the commit its branch points at
    now (asked of the hub once per run, so staging and the manifests agree)."""
    target = ctx.settings.target(target_name)
    requested = target.model_revision
    if COMMIT.match(requested):
        return requested

    def resolve() -> str:
        ctx.shell.check_online()
        return HubRepo(ctx.settings, target_name, target.model_id).resolve(requested)

    return ctx.fact(f"models.revision.{target_name}", resolve)


def stage_model_steps(settings, targets: list[str]) -> list[Step]:
    """Bucket, its IAM grant, and one staging step per target (targets not served from a bucket skip)."""
    steps: list[Step] = []
    if any(settings.target(t).weights == "bucket" for t in targets) and settings.models.bucket:
        steps += [Bucket(settings), BucketIamBinding(settings)]
    steps += [StageModel(settings, t) for t in targets]
    return steps


def staging_steps(settings, targets: list[str], *, in_cluster: bool | None = None,
                  with_repository: bool = True) -> list[Step]:
    """Local or in-cluster staging, as ``--in-cluster`` (when given) or ``models.stage_in`` says. The
    in-cluster steps (and the Kubernetes client they need) are imported only when chosen; they mirror the
    pods' image, after the Artifact Registry repository unless the chain has it (``with_repository=False``)."""
    cluster = in_cluster if in_cluster is not None else settings.models.stage_in == "cluster"
    if cluster:
        from gptoss_gke.staging.incluster import stage_in_cluster_steps

        return stage_in_cluster_steps(settings, targets, with_repository=with_repository)
    return stage_model_steps(settings, targets)


# ---------------------------------------------------------------------------------------------
# The staging step


class StageModel(Step):
    section = "models"
    sdk_modules = GCS_SDK + HF_SDK

    def __init__(self, settings, target_name: str, share: tuple[int, int] | None = None):
        self.target_name = target_name
        self.target = settings.target(target_name)
        self.bucket = settings.models.bucket
        self.name = f"stage {self.target.model_id} ({target_name})"
        self.key = f"staging.{target_name}"
        self.needs = (Credentials.key, Project.key, Bucket.key)
        self.last_transfer: dict | None = None
        # In a pod of the in-cluster Job: (index, pods). This step then moves only the files share_of()
        # gives its index; the Job is the claim on the folder and the local run writes the manifest.
        self.share = share
        if share:
            self.name += f" [share {share[0] + 1} of {share[1]}]"
            self.needs = ()

    # ---- observe
    def observe(self, ctx):
        if self.target.weights != "bucket":
            return None
        ctx.shell.check_online()
        hub = HubRepo(ctx.settings, self.target_name, self.target.model_id)
        requested = self.target.model_revision
        revision = resolved_revision(ctx, self.target_name)
        repo_files = hub.files(revision)
        chosen = set(select_files([f.path for f in repo_files], self.target.allow_patterns,
                                  self.target.ignore_patterns))
        files = sorted((f for f in repo_files if f.path in chosen), key=lambda f: f.path)
        if not files:
            raise StepError(f"no file of {self.target.model_id}@{revision[:12]} matches the patterns "
                            f"(allow {list(self.target.allow_patterns)}, ignore {list(self.target.ignore_patterns)})",
                            "fix the target's allow/ignore patterns")
        # Gated repos keep their listings public: try one file now, before any byte moves.
        hub.check_access(revision, min(files, key=lambda f: f.size).path)
        folder = model_folder(ctx.settings, self.target, revision)
        objects, partials, manifest, exists, marker = self._list(ctx, folder)
        if marker is not None and marker.job and not self.share:
            marker.observe_job(ctx)  # a Job's claim is live while the Job is: read it, or fail (never blind)
        obs = Observed(requested, revision, files, len(repo_files) - len(files), objects, partials, manifest, exists,
                       marker=marker)
        if exists:
            self._list_uploads(ctx, folder, obs)
        return obs

    def _list(self, ctx, folder: str):
        from google.api_core import exceptions as gexc

        client = gcs_client(ctx)
        base = folder.rstrip("/")
        objects: dict[str, StagedObject] = {}
        partials: dict[str, StagedObject] = {}
        manifest = None
        marker = None
        try:
            blobs = ctx.retrying(lambda: list(client.list_blobs(self.bucket, prefix=base, retry=None)),
                           "listing the bucket")
        except gexc.NotFound:
            return objects, partials, None, False, None
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=self.bucket, doing="listing") from None
        for b in blobs:
            meta = dict(b.metadata or {})
            obj = StagedObject(b.name, int(b.size or 0), meta.get(SHA_KEY), b.crc32c, meta)
            if b.name.startswith(folder):
                rel = b.name[len(folder):]
                if rel == MANIFEST_NAME:
                    try:
                        manifest = json.loads(ctx.retrying(lambda: b.download_as_bytes(retry=None),
                                                     "reading the manifest"))
                    except (ValueError, gexc.NotFound):
                        manifest = None
                else:
                    objects[rel] = obj
            elif b.name == marker_name(folder):
                try:
                    doc = json.loads(ctx.retrying(lambda: b.download_as_bytes(retry=None), "reading the marker"))
                except (ValueError, gexc.NotFound):
                    doc = {}
                marker = RunMarker(self.bucket, b.name, int(b.generation or 0), doc if isinstance(doc, dict) else {},
                                   b.updated)
            elif b.name.startswith(base + PARTIAL_SUFFIX + "/"):
                partials[b.name] = obj
        return objects, partials, manifest, True, marker

    def _list_uploads(self, ctx, folder: str, obs: Observed) -> None:
        """Unfinished multipart uploads of ours under the folder, and the parts of those a record resumes."""
        mpu = MultipartUploads(gcs_client(ctx).bucket(self.bucket))
        if self.share:
            return self._recorded_uploads(ctx, mpu, folder, obs)
        try:
            for name, upload_id in ctx.retrying(lambda: mpu.unfinished(folder), "listing unfinished uploads"):
                obs.uploads.setdefault(name, []).append(upload_id)
            live = {u for ids in obs.uploads.values() for u in ids}
            recorded = {o.metadata.get(UPLOAD_KEY) for o in obs.partials.values()} & live
            names = {u: n for n, ids in obs.uploads.items() for u in ids}
            for upload_id in sorted(recorded):
                obs.parts[upload_id] = ctx.retrying(lambda u=upload_id: mpu.parts(names[u], u), "listing parts")
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=self.bucket, doing="listing uploads in") from None

    def _recorded_uploads(self, ctx, mpu, folder: str, obs: Observed) -> None:
        """In a pod: the uploads its resume records name, alive if GCS still lists their parts. A pod lists no
        uploads: that is a bucket-level call (storage.multipartUploads.list), which its grant, conditioned on
        object names under the model's prefix, is not documented to admit; listing an upload's parts is an
        object-level call the condition covers."""
        from google.api_core import exceptions as gexc

        root = f"{folder.rstrip('/')}{PARTIAL_SUFFIX}/"
        recorded = {(folder + name[len(root):].rsplit("/", 2)[0], o.metadata.get(UPLOAD_KEY))
                    for name, o in obs.partials.items() if name.startswith(root) and o.metadata.get(UPLOAD_KEY)}
        for name, upload_id in sorted(recorded):
            try:
                obs.parts[upload_id] = ctx.retrying(lambda n=name, u=upload_id: mpu.parts(n, u), "listing parts")
            except gexc.NotFound:
                continue  # completed or aborted since
            except Exception as exc:  # noqa: BLE001
                raise gcs_error(exc, bucket=self.bucket, doing="listing uploads in") from None
            obs.uploads.setdefault(name, []).append(upload_id)

    # ---- plan
    def plan(self, ctx, current) -> Plan:
        s, t = ctx.settings, self.target
        if t.weights != "bucket":
            return skip(f"{self.target_name} loads {t.model_id} from the hub into its volume in the cluster; "
                        f"nothing to stage")
        if current is None:  # dry-run without cloud access
            folder = model_folder(s, t)
            return Plan([Change(f"stage {t.model_id}@{t.model_revision[:12]} into gs://{self.bucket}/{folder}",
                                "create", apply=lambda ctx: None)])
        obs: Observed = current
        folder = model_folder(s, t, obs.revision)
        where = f"gs://{self.bucket}/{folder}"
        total = sum(f.size for f in obs.files)
        facts: dict[str, Any] = {"revision": obs.revision, "requested_revision": obs.requested, "folder": folder,
                                 "files": len(obs.files), "bytes": total}
        if obs.requested != obs.revision:
            facts["resolved"] = f"{obs.requested} → {obs.revision}"
        if self.last_transfer:
            facts["transfer"] = self.last_transfer
        resolved = f" ({obs.requested} → {obs.revision[:12]})" if obs.requested != obs.revision else ""
        unverified = records_of(obs, folder)
        missing = [f for f in obs.files if not staged(f, obs.objects.get(f.path)) or f.path in unverified]
        tuning = Tuning.from_settings(s)
        resume = resume_points(obs, missing, folder, tuning.chunk)
        stale = stale_uploads(obs, resume)
        if self.share:
            mine = share_of(obs.files, self.share[1])
            missing = [f for f in missing if mine[f.path] == self.share[0]]
            # Only this share's uploads: another pod's are alive, and its own to abort or continue.
            stale = [(n, u) for n, u in stale if mine.get(n[len(folder):]) == self.share[0]]
            if not missing:
                return noop(f"share {self.share[0] + 1} of {self.share[1]}: its files are staged at {where}", **facts)
        abort = (f"abort {len(stale)} unfinished upload(s) of an earlier run (their parts are billed until then)"
                 if stale else "")
        if not missing and manifest_ok(obs):
            if stale:
                return Plan([Change(abort, "delete", apply=lambda ctx: abort_uploads(ctx, self.bucket, stale))],
                            facts=facts, diff={"abort": [n for n, _ in stale]})
            return noop(f"{len(obs.files)} files, {format_size(total)} already staged at {where}{resolved} "
                        f"(manifest verified)", **facts)
        takeover = self._check_marker(obs, where) if not self.share else []
        if not missing:
            return Plan([Change(f"write the manifest of {len(obs.files)} files ({format_size(total)}) at {where}",
                                "update", apply=lambda ctx: self._transfer(ctx, obs, [], stale),
                                detail=[*takeover, abort] if abort else takeover)], facts=facts,
                        diff={"manifest": "missing or stale → written"})
        too_many = [f.path for f in missing if f.lfs and -(-f.size // tuning.chunk) > MAX_PARTS]
        if too_many:
            raise StepError(f"{', '.join(too_many)} would take more than {MAX_PARTS} parts of models.chunk_mib = "
                            f"{s.models.chunk_mib} (a multipart upload's limit)", "raise models.chunk_mib")
        to_move = sum(f.size for f in missing)
        resumed = sum(r.offset for r in resume.values())
        tuning.check_space(to_move)
        # Resumed parts are fetched from the hub again to be verified, but not uploaded again.
        facts.update(bytes_to_move=to_move, bytes_to_upload=to_move - resumed, files_to_move=len(missing),
                     resumed_bytes=resumed)
        action = "create" if not obs.objects and not obs.partials else "update"
        head = (f"stage {len(missing)} of {len(obs.files)} files ({format_size(to_move - resumed)} of {format_size(total)}) "
                f"from {t.model_id}@{obs.revision[:12]}{resolved} into {where}")
        detail = [f"{f.path}  {format_size(f.size)}" + (f"  (resuming at {format_size(resume[f.path].offset)}: "
                                                        f"re-hashed from the hub, not uploaded again)"
                                                        if f.path in resume else "") for f in missing[:25]]
        if len(missing) > 25:
            detail.append(f"... and {len(missing) - 25} more")
        if obs.ignored:
            detail.append(f"({obs.ignored} repo files not selected: original/, metal/ and other files vLLM "
                          f"does not load)")
        if abort:
            detail.append(abort)
        detail += takeover
        return Plan([Change(head, action, apply=lambda ctx: self._transfer(ctx, obs, missing, stale),
                            detail=detail)], facts=facts, diff={"files": [f.path for f in missing]})

    @staticmethod
    def _check_marker(obs: Observed, where: str) -> list[str]:
        """Refuse while another run holds the folder; a stale claim is taken over (said in the plan)."""
        marker = obs.marker
        if marker is None:
            return []
        why = marker.stale_because()
        if why is None and marker.job:
            job = marker.job
            raise StepError(
                f"a staging Job is writing {where}: {marker.describe()}; a second run on the folder would race on "
                f"its partial files",
                f"wait for it: `inv stage-model --in-cluster` attaches to it and follows it to the end (what it stages "
                f"is kept), then re-run. To stop it instead: `kubectl -n {job['namespace']} delete job {job['name']}` "
                f"(its claim is then taken over)")
        if why is None:
            raise StepError(
                f"another stage-model run is writing {where}: {marker.describe()}; two runs on one folder would "
                f"race on its partial files",
                f"wait for it to finish (then re-run: what it staged is kept). If that run is gone (it stops "
                f"refreshing its marker, and is taken over after {format_duration(MARKER_STALE_S)} of silence), "
                f"clear its marker now: {marker.clear_command()}")
        return [f"taking over from an earlier run that stopped ({why}): {marker.describe()}"]

    # ---- act
    def _transfer(self, ctx, obs: Observed, missing: list[RepoFile], stale: list[tuple[str, str]]) -> None:
        s, t = ctx.settings, self.target
        folder = model_folder(s, t, obs.revision)
        tuning = Tuning.from_settings(s)
        hub = HubRepo(s, self.target_name, t.model_id)
        bucket = gcs_client(ctx).bucket(self.bucket)
        started = time.monotonic()
        stats = {"files_moved": 0, "bytes_downloaded": 0, "bytes_uploaded": 0, "resumed_bytes": 0}
        with contextlib.nullcontext() if self.share else FolderClaim(ctx, bucket, folder, obs.revision,
                                                                     obs.marker) as claim:
            abort_uploads(ctx, self.bucket, stale)  # first: an upload nothing will continue is billed until aborted
            if missing:
                engine = Transfer(ctx, hub=hub, bucket=bucket, folder=folder, revision=obs.revision, files=missing,
                                  resume=resume_points(obs, missing, folder, tuning.chunk), tuning=tuning,
                                  sweep_records=not self.share)
                engine.run()
                stats.update(engine.stats())
                for path, obj in engine.done.items():
                    obs.objects[path] = obj
            if claim is not None:
                claim.check()
                self._write_manifest(ctx, bucket, folder, obs)
        stats["seconds"] = round(time.monotonic() - started, 3)
        self.last_transfer = stats
        if missing:
            rate = stats["bytes_uploaded"] / max(stats["seconds"], 1e-6)
            ctx.printer.line(f"    moved {format_size(stats['bytes_uploaded'])} in {format_duration(stats['seconds'])} "
                             f"({format_size(rate)}/s); {len(obs.files) - len(missing)} files were already staged"
                             + (f", resumed {format_size(stats['resumed_bytes'])}" if stats["resumed_bytes"] else ""))

    def _write_manifest(self, ctx, bucket, folder: str, obs: Observed) -> None:
        files = []
        for f in obs.files:
            obj = obs.objects[f.path]
            files.append({"path": f.path, "size": f.size, "sha256": obj.sha256, "crc32c": obj.crc32c,
                          "lfs": f.lfs, **({"git_oid": f.git_oid} if not f.lfs else {})})
        doc = {"tool": "gptoss-gke", "environment": ctx.settings.env_name, "repo": self.target.model_id,
               "revision": obs.revision,
               "requested_revision": obs.requested, "endpoint": ctx.settings.models.hf_endpoint or HF_DEFAULT,
               "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "total_bytes": sum(f.size for f in obs.files), "files": files}
        blob = bucket.blob(folder + MANIFEST_NAME)
        data = json.dumps(doc, indent=2).encode()
        try:
            ctx.retrying(lambda: blob.upload_from_string(data, content_type="application/json", retry=None),
                   "writing the manifest")
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=self.bucket, doing="writing the manifest into") from None



# ---------------------------------------------------------------------------------------------
# Teardown


def purge_model_steps(settings, targets: list[str], others: dict | None = None) -> list[Step]:
    """``teardown --purge-model``: the staged weights this environment wrote (every revision), its IAM
    grants (the serving account's, and the staging Job's account's prefix grant), except what another
    environment (``others``: name → Settings or load error) still uses."""
    targets = [t for t in targets if settings.target(t).weights == "bucket"]
    if not targets or not settings.models.bucket:
        return []
    from gptoss_gke.staging.incluster import revoke_stager_grants  # (it builds on this module)

    return [*[PurgeStagedModel(settings, t, others) for t in targets], RevokeBucketIamBinding(settings, others),
            *revoke_stager_grants(settings, targets, others)]


def _stages(other, bucket: str, folder: str) -> bool:
    """Does another environment's settings stage (and serve) ``folder`` of ``bucket``? A revision that
    names a branch may resolve to any commit of that model: counted as using it."""
    if other.models.bucket != bucket:
        return False
    for name in CATALOGUE:
        target = other.target(name)
        if target.weights != "bucket":
            continue
        if model_folder(other, target) == folder:
            return True
        if not COMMIT.match(target.model_revision) and folder.startswith(model_folder(other, target).rsplit("/", 2)[0]):
            return True
    return False


class PurgeStagedModel(Step):
    """Delete what StageModel wrote under ``<prefix>/<model id>/``: folders whose manifest (or, while
    staging, whose in-progress marker) names this environment, and that no other environment uses."""

    section = "models"
    needs = (Credentials.key,)
    sdk_modules = GCS_SDK

    def __init__(self, settings, target_name: str, others: dict | None = None):
        self.key = f"staging.{target_name}.purge"
        self.target = settings.target(target_name)
        self.bucket = settings.models.bucket
        self.others = others or {}
        prefix = settings.models.prefix.strip("/")
        self.root = f"{prefix}/{self.target.model_id}/" if prefix else f"{self.target.model_id}/"
        self.name = f"staged weights of {self.target.model_id} ({target_name})"

    def observe(self, ctx):
        from google.api_core import exceptions as gexc

        ctx.shell.check_online()
        client = gcs_client(ctx)
        try:
            blobs = ctx.retrying(lambda: list(client.list_blobs(self.bucket, prefix=self.root, retry=None)),
                                 "listing the bucket")
        except gexc.NotFound:
            return []
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=self.bucket, doing="listing") from None
        folders: dict[str, dict] = {}  # "<root><revision>/" → what is in it (and in its .partial/)
        for b in blobs:
            rel = b.name[len(self.root):]
            top = rel.split("/", 1)[0]
            revision = top.removesuffix(PARTIAL_SUFFIX)
            written_by_staging = (top.endswith(PARTIAL_SUFFIX) or rel.endswith("/" + MANIFEST_NAME)
                                  or "hf-revision" in (b.metadata or {}))
            if not COMMIT.match(revision) or "/" not in rel or not written_by_staging:
                continue  # not something staging writes: never ours to delete
            f = self._folder(folders, revision)
            f["objects"].append(b.name)
            f["bytes"] += int(b.size or 0)
            if b.name.endswith("/" + MANIFEST_NAME) or b.name.endswith(PARTIAL_SUFFIX + "/" + MARKER_NAME):
                f["environment"] = f["environment"] or self._environment(ctx, b)
        # Uploads a killed staging run left open: their parts are billed until aborted.
        try:
            uploads = ctx.retrying(lambda: MultipartUploads(client.bucket(self.bucket)).unfinished(self.root),
                                   "listing unfinished uploads")
        except Exception as exc:  # noqa: BLE001
            raise gcs_error(exc, bucket=self.bucket, doing="listing uploads in") from None
        for name, upload in uploads:
            revision = name[len(self.root):].split("/", 1)[0]
            if COMMIT.match(revision):
                self._folder(folders, revision)["uploads"].append((name, upload))
        return [{"folder": k, **v} for k, v in sorted(folders.items())]

    def _folder(self, folders: dict, revision: str) -> dict:
        return folders.setdefault(f"{self.root}{revision}/",
                                  {"objects": [], "bytes": 0, "uploads": [], "environment": None})

    @staticmethod
    def _environment(ctx, blob) -> str | None:
        """The environment a manifest or in-progress marker names (None: not recorded, or unreadable)."""
        try:
            doc = json.loads(ctx.retrying(lambda: blob.download_as_bytes(retry=None), "reading the manifest"))
        except Exception:  # noqa: BLE001 - unreadable: nobody is named, so nothing is deleted
            return None
        return doc.get("environment") if isinstance(doc, dict) else None

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        where = f"gs://{self.bucket}/{self.root}"
        if current is None:  # a dry-run that could not look
            return Plan([Change(f"delete the weights we staged under {where}", "delete", apply=lambda ctx: None)])
        doomed, kept = [], []
        for f in current:
            folder = f"gs://{self.bucket}/{f['folder']}"
            if f["environment"] != s.env_name:
                whose = f"environment {f['environment']}" if f["environment"] else "no recorded environment"
                kept.append(f"{folder} (staged by {whose})")
                continue
            shared = kept_for(self.others, lambda other: _stages(other, self.bucket, f["folder"]))
            if shared:
                kept.append(f"{folder} ({shared})")
                continue
            doomed.append(f)
        note = f"; kept {'; '.join(kept)}" if kept else ""
        names = [n for f in doomed for n in f["objects"]]
        uploads = [u for f in doomed for u in f["uploads"]]
        if not names and not uploads:
            return noop(f"nothing of ours to delete under {where}{note}")
        total = sum(f["bytes"] for f in doomed)
        changes = [Change(f"delete {len(names)} objects ({format_size(total)}) we staged under {where}", "delete",
                          apply=lambda ctx: self._delete(ctx, names))] if names else []
        if uploads:
            changes.append(Change(f"abort {len(uploads)} unfinished upload(s) under {where}", "delete",
                                  apply=lambda ctx: abort_uploads(ctx, self.bucket, uploads)))
        return Plan(changes, diff={"delete": names, "abort": [n for n, _ in uploads]}, note=note)

    def _delete(self, ctx, names: list[str]) -> None:
        from google.api_core import exceptions as gexc

        bucket = gcs_client(ctx).bucket(self.bucket)

        def one(name: str) -> None:
            try:
                ctx.retrying(lambda: bucket.blob(name).delete(retry=None), "deleting an object")
            except gexc.NotFound:
                pass

        with ThreadPoolExecutor(ctx.settings.models.workers, thread_name_prefix="gcs-del") as pool:
            for fut in [pool.submit(one, n) for n in names]:
                try:
                    fut.result()
                except Exception as exc:  # noqa: BLE001
                    raise gcs_error(exc, bucket=self.bucket, doing="deleting from") from None
