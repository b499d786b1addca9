"""Checks that read several keys (zone in region, node counts against the catalogue, model context), and
what only some tasks need (a project, a bucket, no example values outside a dry-run)."""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable

from gptoss_gke.config.origins import Layers, problem_at, quote
from gptoss_gke.config.rules import _ZONE, EXAMPLE_PROJECT, bucket_name, project_id
from gptoss_gke.config.schema import Settings
from gptoss_gke.errors import ConfigError, Problem
from gptoss_gke.targets import CATALOGUE

# Rules between keys. Each reads the keys it is registered with; when one of those failed its own
# check, the rule is not run (its input cannot be trusted). Each yields (key path, problem, allowed).

_CROSS_RULES: list[tuple[tuple[tuple, ...], Callable[[Settings], Iterable[tuple[tuple, str, str]]]]] = []


def reads(*keys: str):
    def register(fn):
        _CROSS_RULES.append((tuple(tuple(k.split(".")) for k in keys), fn))
        return fn

    return register


@reads("zone", "region", "cluster.location", "targets")
def _locations_in_region(s: Settings):
    region = s.region
    if not s.zone.startswith(region + "-"):
        yield ("zone",), f"zone {s.zone} is not in region {region}", f"a zone of {region}, e.g. {region}-a"
    loc = s.cluster.location
    if loc and loc != region and not (loc.startswith(region + "-") and _ZONE.match(loc)):
        yield (("cluster", "location"), f"cluster location {loc} is neither region {region} nor one of its zones",
               f"{region} or one of its zones")
    for name, t in s.targets.items():
        for z in t.node_pool.node_locations or []:
            if not z.startswith(region + "-"):
                yield (("targets", name, "node_pool", "node_locations"),
                       f"node location {z} is not a zone of region {region}", f"zones of {region}")


@reads("targets")
def _node_counts(s: Settings):
    for name in s.targets:
        p = s.target(name).node_pool
        loc = ("targets", name, "node_pool")
        if p.min_nodes > p.max_nodes:
            yield loc + ("min_nodes",), f"min_nodes ({p.min_nodes}) is greater than max_nodes ({p.max_nodes})", \
                "min_nodes <= max_nodes"
        if p.initial_nodes > p.max_nodes:
            yield loc + ("initial_nodes",), (f"initial_nodes ({p.initial_nodes}) is greater than max_nodes "
                                              f"({p.max_nodes})"), "initial_nodes <= max_nodes"


# Accelerators per machine type: GPU machine families carry a fixed type and count (the count is the
# "-Ng" suffix on a2/a3/a4); TPU machine types end in "-<chips>t"; g2 follows its own table.
_G2_GPUS = {"4": 1, "8": 1, "12": 1, "16": 1, "24": 2, "32": 1, "48": 4, "96": 8}
_GPU_FAMILIES = {"a2-highgpu": "nvidia-tesla-a100", "a2-megagpu": "nvidia-tesla-a100",
                 "a2-ultragpu": "nvidia-a100-80gb", "a3-highgpu": "nvidia-h100-80gb",
                 "a3-edgegpu": "nvidia-h100-80gb", "a3-megagpu": "nvidia-h100-mega-80gb",
                 "a3-ultragpu": "nvidia-h200-141gb", "a4-highgpu": "nvidia-b200"}
_ATTACHABLE = {"nvidia-tesla-t4": (1, 2, 4), "nvidia-tesla-v100": (1, 2, 4, 8), "nvidia-tesla-p4": (1, 2, 4),
               "nvidia-tesla-p100": (1, 2, 4)}  # n1 machine types


def machine_accelerators(machine: str) -> tuple[str | None, tuple[int, ...]] | None:
    """(accelerator type, counts allowed) a machine type takes, or None when we do not know the family."""
    m = re.fullmatch(r"g2-standard-(\d+)", machine)
    if m:
        return ("nvidia-l4", (_G2_GPUS[m[1]],)) if m[1] in _G2_GPUS else None
    for family, gpu in _GPU_FAMILIES.items():
        m = re.fullmatch(rf"{family}-(\d+)g", machine)
        if m:
            return gpu, (int(m[1]),)
    m = re.fullmatch(r"(tpu7x|ct\d+[a-z]*)-[a-z]+-(\d+)t", machine)
    if m:
        return None, (int(m[2]),)
    if re.match(r"(e2|n2|n2d|c2|c2d|c3|c3d|c4|t2d|t2a|m1|m2|m3)-", machine):
        return None, ()
    return None


@reads("targets")
def _accelerators_fit_machine(s: Settings):
    for name in s.targets:
        p = s.target(name).node_pool
        loc = ("targets", name, "node_pool")
        known = machine_accelerators(p.machine_type)
        if p.machine_type.startswith("n1-") and p.accelerator_type:
            counts = _ATTACHABLE.get(p.accelerator_type)
            if counts and p.accelerator_count not in counts:
                yield loc + ("accelerator_count",), (f"{p.accelerator_type} attaches to {p.machine_type} in "
                                                      f"counts of {counts}, not {p.accelerator_count}"), \
                    f"accelerator_count one of {counts}"
            continue
        if known is None:
            continue
        gpu, counts = known
        if not counts and p.accelerator_type:
            yield loc + ("accelerator_type",), f"{p.machine_type} takes no accelerator", \
                "a GPU machine type (g2, a2, a3, a4, n1) for accelerator_type"
        elif counts and p.accelerator_count not in counts:
            yield loc + ("accelerator_count",), (f"{p.machine_type} has {counts[0]} "
                                                  f"{'chip(s)' if gpu is None else gpu}, not {p.accelerator_count}"), \
                f"accelerator_count: {counts[0]}"
        if gpu and p.accelerator_type and p.accelerator_type != gpu:
            yield loc + ("accelerator_type",), f"{p.machine_type} comes with {gpu}, not {p.accelerator_type}", \
                f"accelerator_type: {gpu}"


@reads("targets")
def _capacity_offered(s: Settings):
    for name, t in s.targets.items():
        if t.capacity != "on-demand" and not CATALOGUE[name].spot_manifests:
            yield (("targets", name, "capacity"), f"target {name} offers no spot capacity profile",
                   "capacity: on-demand")


@reads("targets", "zone")
def _replicas_fit_pool(s: Settings):
    for name, t in s.targets.items():
        p = s.target(name).node_pool
        capacity = p.max_nodes * len(s.node_locations(name))
        if t.replicas > capacity:
            yield (("targets", name, "replicas"),
                   f"{t.replicas} replicas need {t.replicas} nodes (one accelerator node each); the pool grows to "
                   f"{capacity}", f"replicas <= node_pool.max_nodes x zones ({capacity}), or raise max_nodes")


def model_context(model_id: str) -> int | None:
    """The longest request the model supports (from its config.json in the catalogue)."""
    from gptoss_gke.serving.capacity import ModelShape, catalogue_model_ids, load_catalogue_config

    if model_id not in catalogue_model_ids():
        return None
    return ModelShape.from_hf_config(load_catalogue_config(model_id)).derived_max_model_len


@reads("targets")
def _lengths_fit_model(s: Settings):
    for name, t in s.targets.items():
        target = s.target(name)
        limit = model_context(target.model_id)
        if t.max_model_len and limit and t.max_model_len > limit:
            yield (("targets", name, "max_model_len"),
                   f"{t.max_model_len:,} tokens is beyond {target.model_id}'s context of {limit:,} (vLLM refuses to "
                   f"start)", f"at most {limit:,}")
        if target.weights == "pvc":
            need = math.ceil(target.weight_memory_gib) + 2  # the shards plus the downloader's partial file
            if t.pvc_size_gi < need:
                yield (("targets", name, "pvc_size_gi"),
                       f"{t.pvc_size_gi} GiB cannot hold {target.model_id}'s weights (~{target.weight_memory_gib:.1f} "
                       f"GiB)", f"at least {need}")


@reads("targets")
def _ingress_has_host(s: Settings):
    for name, t in s.targets.items():
        if t.expose == "ingress" and not t.ingress_host:
            yield (("targets", name, "ingress_host"), "is required when expose is ingress",
                   "a DNS name such as gptoss.example.org")


@reads("registry.mode", "targets", "models.stager_image")
def _remote_mode_fronts_docker_hub(s: Settings):
    if s.registry.mode != "remote":
        return
    from gptoss_gke.images import parse_reference

    images = [(("targets", name, "image"), s.target(name).image) for name in s.targets]
    for where, image in [*images, (("models", "stager_image"), s.models.stager_image)]:
        ref = parse_reference(image)
        if ref.registry != "docker.io":
            yield (where, f"is on {ref.registry}, but registry.mode remote fronts Docker Hub",
                   "a docker.io image, or registry.mode: copy")


@reads("retry")
def _delays_in_order(s: Settings):
    if s.retry.base_delay_s > s.retry.max_delay_s:
        yield (("retry", "base_delay_s"), f"base_delay_s ({s.retry.base_delay_s:g}) is above max_delay_s "
               f"({s.retry.max_delay_s:g})", "base_delay_s <= max_delay_s")


@reads("models")
def _temp_space_holds_a_chunk(s: Settings):
    m = s.models
    if m.max_temp_gib * 1024 < 2 * m.chunk_mib:
        yield (("models", "max_temp_gib"), f"{m.max_temp_gib:g} GiB of temp space cannot hold two "
               f"{m.chunk_mib} MiB chunks", f"at least {2 * m.chunk_mib / 1024:g}")


# =============================================================================================



# =============================================================================================
# Task checks: what only some tasks need, with the targets the flags chose.

# Values copied from the examples: a project and bucket you do not own, a host you do not control.
_PLACEHOLDER_HOSTS = re.compile(r"(^|\.)example\.(com|org|net)$")


def placeholders(s: Settings) -> list[Problem]:
    """Every example value still in the settings, with its key and the fix (refused outside --dry-run)."""
    found = []
    layers = Layers(origin=s._origins)
    if s.project and EXAMPLE_PROJECT in s.project:
        found.append(problem_at(layers, ("project",), f"is still the placeholder {quote(s.project)}",
                              "your Google Cloud project ID",
                              "set project: in the environment file, or GPTOSS_PROJECT=<your project>"))
    if s.models.bucket and EXAMPLE_PROJECT in s.models.bucket:
        found.append(problem_at(layers, ("models", "bucket"), f"is still the example bucket {quote(s.models.bucket)} "
                              f"(a global name you do not own)", "a bucket in your project",
                              "set models.bucket: (or GPTOSS_MODELS__BUCKET) to a bucket you own, e.g. "
                              "<your project>-gptoss-models"))
    for name, t in s.targets.items():
        if t.ingress_host and _PLACEHOLDER_HOSTS.search(t.ingress_host):
            found.append(problem_at(layers, ("targets", name, "ingress_host"),
                                  f"is still the example host {quote(t.ingress_host)}", "a DNS name you control",
                                  f"set targets.{name}.ingress_host to your own host name"))
    return found


def resolve_targets(choice: Any, settings: Settings, *, all_means: str = "enabled") -> list[str]:
    """The flags' target choice (ALL or names) as catalogue names."""
    from gptoss_gke.flags import ALL

    if choice == ALL:
        return list(CATALOGUE) if all_means == "catalogue" else settings.enabled_targets()
    return list(choice or ())


def task_problems(settings: Settings, *, targets: list[str], dry_run: bool, needs_project: bool) -> list[Problem]:
    """Values only some tasks need; checked before the first step runs. (No enabled target is not one:
    setup-cluster then converges the cluster alone.)"""
    problems = []
    layers = Layers(origin=settings._origins)
    if not needs_project:
        return problems
    failed = settings._failed
    if not settings.project and ("project",) not in failed:
        problems.append(problem_at(layers, ("project",), "required value missing", project_id.allowed,
                                 "set project: in the environment file, or GPTOSS_PROJECT=<your project>"))
    for name in targets:
        if settings.target(name).weights == "bucket" and not settings.models.bucket and ("models", "bucket") not in failed:
            problems.append(problem_at(layers, ("models", "bucket"), f"required for target {name} (its weights are "
                                     f"served from Cloud Storage)", bucket_name.allowed,
                                     "set models.bucket: in the environment file, or GPTOSS_MODELS__BUCKET"))
    if not dry_run:
        problems += placeholders(settings)
    return problems


def require(settings: Settings, *, targets: list[str], dry_run: bool) -> None:
    problems = task_problems(settings, targets=targets, dry_run=dry_run, needs_project=True)
    if problems:
        raise ConfigError.of(problems)
