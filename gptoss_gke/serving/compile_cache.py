"""The XLA compilation cache of bucket-served targets (ironwood), kept in the weights bucket so the next pod
finds it.

vLLM's TPU backend points JAX's persistent compilation cache at ``VLLM_XLA_CACHE_PATH`` (tpu-inference,
``runner/compilation_manager.py``; llm-d PR 1102 sets it on persistent storage for warm starts). The weights
mount is read-only, so the cache gets its own GCS FUSE volume on one prefix of the bucket, writable by the
pods' service account on that prefix only (:class:`~gptoss_gke.gcp.storage.PrefixGrant`).

* Per environment and target: ``compile-cache/<env>/<target>/``; teardown ``--purge-model`` revokes the grant.
* Keyed by the serving image (its digest when the settings pin one, else its tag): a new image starts a
  new folder instead of reading entries another build wrote. JAX's own cache key also covers the JAX and
  libtpu versions, so a stale entry can miss, never be used wrongly.
* Concurrent writers (a rollout overlapping, two environments never: the prefix is per environment) write
  the same content under the same content-derived name; GCS keeps the last complete upload.
"""

from __future__ import annotations

import re

from gptoss_gke.core.step import Step

MOUNT = "/xla-cache"
ROLE = "roles/storage.objectUser"  # read, create and overwrite objects; nothing on the bucket itself


def enabled(target) -> bool:
    """Where the target's manifests mount the cache (ironwood). l4 keeps its torch.compile cache on its claim;
    its spot profile (weights from the bucket too) mounts none, so it gets no write grant either."""
    from gptoss_gke.k8s.manifests import MANIFESTS

    return target.weights == "bucket" and (MANIFESTS / target.manifests / "persistentvolume-compile-cache.yaml").is_file()


def prefix(settings, target) -> str:
    return f"compile-cache/{settings.env_name}/{target.name}/"


def image_key(settings, target_name: str) -> str:
    """A folder name for the serving image: ``sha256-<12 hex>`` for a digest, else the sanitised tag."""
    from gptoss_gke.images import source_ref

    ref = source_ref(settings, target_name)
    if ref.digest:
        algo, _, hexes = ref.digest.partition(":")
        return f"{algo}-{hexes[:12]}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", ref.tag or "latest")[:100]


def cache_path(settings, target) -> str:
    return f"{MOUNT}/{image_key(settings, target.name)}"


def _grant_args(settings, target) -> dict:
    from gptoss_gke.gcp.project import project_number
    from gptoss_gke.gcp.storage import workload_principal

    return {"member": lambda ctx: workload_principal(ctx.settings, project_number(ctx)),
            "role": ROLE, "prefix": prefix(settings, target),
            "title": f"gptoss-gke {settings.env_name} {target.name} compile cache",
            "name": f"bucket IAM: {ROLE.rsplit('/', 1)[-1]} on the {target.name} compile cache "
                    f"(gs://{settings.models.bucket}/{prefix(settings, target)})"}


def grant_steps(settings, targets: list[str]) -> list[Step]:
    """Deploy: the pods' service account may write the compile cache, and only there."""
    from gptoss_gke.gcp.storage import PrefixGrant

    return [PrefixGrant(settings, **_grant_args(settings, settings.target(t)))
            for t in targets if enabled(settings.target(t)) and settings.models.bucket]


def revoke_steps(settings, targets: list[str], others: dict | None = None) -> list[Step]:
    """Teardown ``--purge-model``: the grant goes with the weights' (the cache's objects stay, a few GB)."""
    from gptoss_gke.gcp.storage import RevokePrefixGrant

    return [RevokePrefixGrant(settings, others=others,  # the prefix is per environment: nobody shares it
                              **_grant_args(settings, settings.target(t)))
            for t in targets if enabled(settings.target(t)) and settings.models.bucket]
