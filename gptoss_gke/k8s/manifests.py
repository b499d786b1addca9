"""Render manifests/<target>/*.yaml (+ common/) from the settings.

Placeholders are `${name}`; each is replaced by the JSON encoding of its value. JSON is valid YAML,
so a value (a label, an argument list) can never change the document's structure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from gptoss_gke.errors import StepError

MANIFESTS = Path(__file__).resolve().parent.parent.parent / "manifests"
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")

# Apply in this order, delete in reverse (dependencies first: a pod needs its namespace, account,
# secret and claim before it can start).
KIND_ORDER = ["Namespace", "ServiceAccount", "Secret", "ConfigMap", "PersistentVolume", "PersistentVolumeClaim",
              "Service", "PodDisruptionBudget", "StatefulSet", "Deployment", "Job", "Ingress"]


def kind_rank(obj: dict) -> int:
    kind = obj.get("kind")
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def model_path(settings, target) -> str:
    """Where vLLM finds the weights inside its pod."""
    if target.weights == "bucket":
        from gptoss_gke.staging.steps import model_folder

        return "/model-vol-mount/" + model_folder(settings, target).strip("/")
    return f"/models/{target.model_id}/{target.model_revision}"


def selector(target) -> dict[str, str]:
    return {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": f"gptoss-{target.name}"}


def ownership(settings, target) -> dict[str, str]:
    """Who an object belongs to (tool, environment, target); what teardown selects on."""
    from gptoss_gke.ownership import TARGET

    return {**settings.ownership_labels, TARGET: target.name}


def object_labels(settings, target) -> dict[str, str]:
    """Ownership plus the user's ``labels:`` (ours win). Not for volumeClaimTemplates: those are
    immutable, so a label added later would make the StatefulSet impossible to apply."""
    return {**settings.labels, **ownership(settings, target)}


def vllm_args(settings, target) -> list[str]:
    extra = settings.target_settings(target.name).vllm_extra_args
    return [
        f"--model={model_path(settings, target)}",
        f"--served-model-name={target.model_id}",
        "--host=0.0.0.0",
        f"--port={target.port}",
        f"--max-model-len={target.max_model_len}",
        f"--gpu-memory-utilization={target.gpu_memory_utilization}",
        f"--kv-cache-dtype={target.kv_cache_dtype}",
        f"--max-num-batched-tokens={target.max_num_batched_tokens}",
        f"--max-num-seqs={target.max_num_seqs}",
        *target.vllm_args,
        *extra,
    ]


def workload_name(target) -> str:
    return f"gptoss-{target.name}"


def render_vars(settings, target, image: str) -> dict[str, Any]:
    ts = settings.target_settings(target.name)
    name = workload_name(target)
    return {
        "namespace": settings.kube.namespace,
        "name": name,
        "headless_service": f"{name}-headless",
        "public_service": f"{name}-public",
        "service_account": settings.kube.service_account,
        "api_key_secret": settings.kube.api_key_secret,
        "image": image,
        "port": target.port,
        "service_port": target.service_port or target.port,
        "replicas": ts.replicas,
        "selector": selector(target),
        "pod_labels": {**selector(target), **object_labels(settings, target)},
        "ownership_labels": ownership(settings, target),
        "node_selector": target.node_pool.node_selector,
        "vllm_args": vllm_args(settings, target),
        "startup_failure_threshold": _catalogue_probe_failures(target),
        "model_id": target.model_id,
        "model_revision": target.model_revision,
        "model_path": model_path(settings, target),
        "ignore_patterns": json.dumps(list(target.ignore_patterns)),
        "storage_class": ts.storage_class,
        "pvc_size": f"{ts.pvc_size_gi}Gi",
        "accelerator_count": target.node_pool.accelerator_count,
        "bucket": settings.models.bucket or "",
        # PersistentVolumes are cluster-wide: the name carries namespace and target.
        "pv_name": f"{settings.kube.namespace}-{target.name}-weights",
        "pvc_name": f"{target.name}-weights",
        "ingress_host": ts.ingress_host or "",
        **profile_vars(target),
        **compile_cache_vars(settings, target),
    }


def _catalogue_probe_failures(target) -> int:
    """The startupProbe before any start was measured (deploy sizes it from the measured start later)."""
    from gptoss_gke.k8s.wait import startup_probe_failures

    return startup_probe_failures(target, True, None)


def profile_vars(target) -> dict[str, Any]:
    """What the spot capacity profiles' manifests fill in (gptoss_gke/profiles.py)."""
    from gptoss_gke.profiles import PREEMPTION_GRACE_S, PRESTOP_SLEEP_S, compute_class_name

    return {"compute_class": compute_class_name(target), "termination_grace_s": PREEMPTION_GRACE_S,
            "prestop_sleep_s": str(PRESTOP_SLEEP_S)}


def compile_cache_vars(settings, target) -> dict[str, Any]:
    """The XLA compilation cache's volume (bucket targets; see gptoss_gke/serving/compile_cache.py)."""
    from gptoss_gke.serving import compile_cache

    if not compile_cache.enabled(target):
        return {}
    prefix = compile_cache.prefix(settings, target)
    return {"compile_cache_pv_name": f"{settings.kube.namespace}-{target.name}-compile-cache",
            "compile_cache_pvc_name": f"{target.name}-compile-cache",
            "compile_cache_only_dir": f"only-dir={prefix.rstrip('/')}",
            "compile_cache_mount": compile_cache.MOUNT,
            "compile_cache_path": compile_cache.cache_path(settings, target)}


def _fill(text: str, values: dict[str, Any], source: str) -> str:
    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise StepError(f"{source}: unknown placeholder ${{{key}}}",
                            f"use one of: {', '.join(sorted(values))}")
        return json.dumps(values[key])

    return _PLACEHOLDER.sub(sub, text)


def _wanted(path: Path, settings, target) -> bool:
    if not path.name.startswith("optional-"):
        return True
    if path.name.startswith("optional-replicated-"):  # a disruption budget means nothing for one replica
        return settings.target_settings(target.name).replicas >= 2
    expose = settings.target_settings(target.name).expose
    return path.name.startswith(f"optional-{expose}-")


def render(settings, target, image: str) -> list[dict]:
    """Every object for one target, ownership-labelled, in apply order."""
    values = render_vars(settings, target, image)
    if settings.target_settings(target.name).expose == "ingress" and not values["ingress_host"]:
        raise StepError(f"targets.{target.name}.expose is ingress but ingress_host is empty",
                        f"set targets.{target.name}.ingress_host in {settings.env_file}")
    labels = object_labels(settings, target)
    objects = []
    # The target's own files first: within a kind they come before what every target shares (a
    # StatefulSet's governing headless Service before the ClusterIP one), and the sort below is stable.
    for folder in (MANIFESTS / target.manifests, MANIFESTS / "common"):
        for path in sorted(folder.glob("*.yaml")):
            if not _wanted(path, settings, target):
                continue
            source = str(path.relative_to(MANIFESTS))
            try:
                docs = list(yaml.safe_load_all(_fill(path.read_text(), values, source)))
            except yaml.YAMLError as exc:
                raise StepError(f"manifests/{source} does not render to valid YAML: {exc}",
                                "a ${placeholder} must be a whole value, never part of one") from None
            for doc in docs:
                if not doc:
                    continue
                meta = doc.setdefault("metadata", {})
                meta["labels"] = {**meta.get("labels", {}), **labels}
                objects.append(doc)
    return sorted(objects, key=kind_rank)


def render_template(relative: str, values: dict[str, Any]) -> list[dict]:
    """One manifest file outside the per-target folders (e.g. bench/job.yaml), filled from `values`."""
    text = (MANIFESTS / relative).read_text()
    return [doc for doc in yaml.safe_load_all(_fill(text, values, relative)) if doc]


# ---------------------------------------------------------------------------------------------
# `inv render`: what deploy applies, offline


def offline_image(settings, target_name: str) -> tuple[str, bool]:
    """(image reference, pinned?) without reading a registry.

    Deploy pins the mirrored image by the digest it reads. Offline that digest is known only when the
    settings already name the image by digest (a source pinned by digest is mirrored as that digest, with
    ``--preserve-digests``); otherwise the mirrored tag stands in for it.
    """
    from gptoss_gke.images import destination, source_ref

    src, dest = source_ref(settings, target_name), destination(settings, target_name)
    if src.digest:
        return str(dest.at(src.digest)), True
    return str(dest), False


def deploy_objects_offline(settings, targets: list[str]) -> tuple[list[dict], list[str]]:
    """The objects `inv deploy` applies for ``targets``, in its order, and what differs at run time."""
    objects, notes, seen = [], [], set()
    for name in targets:
        target = settings.target(name)
        image, pinned = offline_image(settings, name)
        if not pinned:
            notes.append(f"{name}: image by tag {image}; deploy pins it by digest after mirroring")
        if not re.fullmatch(r"[0-9a-f]{40}", target.model_revision):
            notes.append(f"{name}: model revision {target.model_revision!r} is not a commit; deploy uses the "
                         f"commit it resolves to while staging")
        for obj in render(settings, target, image):
            meta = obj["metadata"]
            key = (obj["kind"], meta.get("namespace"), meta["name"])
            if key not in seen:  # the namespace and service account are shared by the targets
                seen.add(key)
                objects.append(obj)
    notes.append(f"Secret {settings.kube.namespace}/{settings.kube.api_key_secret} (the API key) is created by "
                 f"deploy through the API and never rendered")
    return objects, notes


def yaml_stream(objects: list[dict], header: list[str]) -> str:
    parts = ["".join(f"# {line}\n" for line in header)]
    parts += ["---\n" + yaml.safe_dump(obj, sort_keys=False, width=120) for obj in objects]
    return "".join(parts)


def object_filename(index: int, obj: dict) -> str:
    """Apply order first, so `kubectl apply -f DIR` (which sorts by name) keeps it."""
    return f"{index:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
