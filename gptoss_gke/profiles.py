"""Capacity profiles: which node pools a target runs on, and how its pods find them.

``on-demand`` (the default) is the tutorial's: one on-demand pool, weights in a zonal claim.
``spot`` and ``spot-with-fallback`` run two or more replicas spread over the region's zones on spot
VMs; a zonal claim cannot follow a pod to another zone, so their weights come from the bucket (the
verified staging ironwood uses, mounted read-only with GCS FUSE). The pools carry the label and taint
GKE requires of manually created pools that a ComputeClass names; the ComputeClass
(``k8s/computeclass.py``) ranks them: spot first, then (``spot-with-fallback``) on-demand, and moves
pods back to spot when it returns. The pods select the class, nothing else: GKE does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gptoss_gke.targets import NodePoolShape, Target

ON_DEMAND, SPOT, SPOT_WITH_FALLBACK = "on-demand", "spot", "spot-with-fallback"
PROFILES = (ON_DEMAND, SPOT, SPOT_WITH_FALLBACK)
# The node label and taint GKE requires on manually created pools a ComputeClass names, and what pods
# select ("About custom ComputeClasses": available from GKE 1.30.3-gke.1451000, Standard and Autopilot).
COMPUTE_CLASS_KEY = "cloud.google.com/compute-class"
COMPUTE_CLASS_MIN_GKE = "1.30.3-gke.1451000"
# The zones of a region that offer NVIDIA L4s (Compute Engine's "GPU regions and zones" table), spread
# over by default. Elsewhere the default is the environment's zone; list more in node_pool.node_locations.
L4_ZONES = {"us-central1": ("us-central1-a", "us-central1-b", "us-central1-c")}
SPOT_REPLICAS = 2  # one preemption never leaves the Service without a Ready replica
# A spot VM gets 30 s between the preemption notice and its end; the kubelet gives non-system pods
# the first 15 s of it (GKE "Spot VMs": a longer terminationGracePeriodSeconds has no effect there).
PREEMPTION_GRACE_S = 15
PRESTOP_SLEEP_S = 5  # the pod stays up while its endpoint leaves every kube-proxy, then vLLM drains

# What `inv plan` assumes to price the spot profiles (stated with the figures; none is measured here).
ASSUMED_PREEMPTIONS_PER_NODE_DAY = 1.0  # GPU spot VMs in busy zones: about one reclaim a day
ASSUMED_FALLBACK_SHARE = 0.10  # node-hours on the on-demand fallback while spot is unavailable
ASSUMED_REPLACEMENT_S = 600  # node + image + weights from the bucket + compile, billed before it serves


@dataclass(frozen=True)
class ProfilePool:
    """One node pool of a target's profile."""

    role: str  # "on-demand" (the profile's only pool), "spot", or "fallback" (on-demand, ranked after spot)
    shape: NodePoolShape
    spot: bool


def profile(settings, target_name: str) -> str:
    return settings.target_settings(target_name).capacity


def is_spot(settings, target_name: str) -> bool:
    return profile(settings, target_name) != ON_DEMAND


def default_zones(settings, target: Target) -> list[str]:
    zones = L4_ZONES.get(settings.region) if target.node_pool.accelerator_type == "nvidia-l4" else None
    return list(zones) if zones else [settings.zone]


def compute_class_name(target: Target) -> str:
    """Cluster-wide, like the pools: named after the target's pool."""
    return target.node_pool.name


def serving_target(target: Target, capacity: str) -> Target:
    """The catalogue target as a profile serves it: spot profiles read the weights from the bucket and
    render the target's spot manifests (a Deployment spread over zones, a PodDisruptionBudget)."""
    if capacity == ON_DEMAND or not target.spot_manifests:
        return target
    # runai_streamer reads each shard in parallel ranges: the fastest way through GCS FUSE without a
    # file cache (a preempted replica's replacement is always on a new node, so nothing is cached there).
    return replace(target, weights="bucket", manifests=target.spot_manifests,
                   vllm_args=(*target.vllm_args, "--load-format=runai_streamer"))


def _class_pool(base: NodePoolShape, name: str, class_name: str) -> NodePoolShape:
    taint = f"{COMPUTE_CLASS_KEY}={class_name}:NoSchedule"
    newer = max((v for v in (base.min_gke_version, COMPUTE_CLASS_MIN_GKE) if v), key=_version)
    return replace(base, name=name, min_nodes=0, initial_nodes=0, min_gke_version=newer,
                   labels={**base.labels, COMPUTE_CLASS_KEY: class_name}, taints=(*base.taints, taint))


def _version(text: str) -> tuple[int, ...]:
    from gptoss_gke.gcp.cluster import gke_version

    return gke_version(text)


def spot_pool_name(target: Target) -> str:
    return f"{target.node_pool.name}-spot"


def fallback_pool_name(target: Target) -> str:
    return f"{target.node_pool.name}-fallback"


def pools(settings, target_name: str) -> list[ProfilePool]:
    """The node pools the target's profile runs on, in the ComputeClass's order of preference."""
    target = settings.target(target_name)
    capacity = profile(settings, target_name)
    if capacity == ON_DEMAND:
        return [ProfilePool(ON_DEMAND, target.node_pool, settings.target_settings(target_name).node_pool.spot)]
    name = compute_class_name(target)
    out = [ProfilePool("spot", _class_pool(target.node_pool, spot_pool_name(target), name), True)]
    if capacity == SPOT_WITH_FALLBACK:
        out.append(ProfilePool("fallback", _class_pool(target.node_pool, fallback_pool_name(target), name), False))
    return out


def every_pool_name(settings, target_name: str) -> list[str]:
    """Every pool any profile of the target makes, the on-demand pool first: teardown removes them all,
    whichever profile is set now (a profile changed since setup-cluster must not leave its old pools billing)."""
    target = settings.target(target_name)
    names = [target.node_pool.name]
    if target.spot_manifests:
        names += [spot_pool_name(target), fallback_pool_name(target)]
    return names
