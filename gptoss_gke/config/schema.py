"""The settings schema: pydantic models whose fields use the rules. Nothing here touches the disk, so the
remote staging host can validate the same object again."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from gptoss_gke.config.rules import (_ZONE, AcceleratorType, BucketName, Dns1123Subdomain, FilePattern, GcpLabels,
                                     GkeName, HttpUrl, ImageReference, IngressHost, KubeLabels, Location, MachineType,
                                     Namespace, ObjectPrefix, Platform, Printable, ProjectId, Region, RegistryHost,
                                     Reservation, ResourceName, Revision, SshHost, TpuTopology, UserName, VllmArgs,
                                     Zone)
from gptoss_gke.flags import did_you_mean
from gptoss_gke.targets import CATALOGUE, Target

DEFAULT_ENV = "dev"
DEFAULT_KUBECONFIG = "~/.kube/config"

# =============================================================================================
# Models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


MAX_POOL_NODES = 1000  # GKE's limit per node pool and zone


class NodePoolSettings(_Strict):
    """Overrides of the catalogue's node pool for one target; unset keys keep the catalogue value."""

    name: GkeName | None = None
    machine_type: MachineType | None = None
    accelerator_type: AcceleratorType | None = None
    accelerator_count: int | None = Field(default=None, ge=1, le=16)
    gpu_driver_version: Literal["default", "latest", "disabled"] | None = None
    tpu_topology: TpuTopology | None = None
    min_nodes: int | None = Field(default=None, ge=0, le=MAX_POOL_NODES)
    max_nodes: int | None = Field(default=None, ge=1, le=MAX_POOL_NODES)  # a pool that can never grow serves nothing
    initial_nodes: int | None = Field(default=None, ge=0, le=MAX_POOL_NODES)
    labels: KubeLabels | None = None  # Kubernetes node labels
    spot: bool = False
    reservation: Reservation | None = None  # a specific reservation; its affinity flags are set only then
    node_locations: list[Zone] | None = Field(default=None, min_length=1)  # default: the environment's zone


class TargetSettings(_Strict):
    enabled: bool = True  # setup-cluster --target=all creates node pools for enabled targets
    node_pool: NodePoolSettings = Field(default_factory=NodePoolSettings)
    model_revision: Revision | None = None  # a commit, or a branch resolved to its commit at staging time
    # Which repository files are the weights vLLM loads (Hugging Face patterns; `*` crosses `/`, so
    # exclude the original/ and metal/ copies with ignore patterns rather than relying on allow).
    allow_patterns: list[FilePattern] | None = Field(default=None, min_length=1)
    ignore_patterns: list[FilePattern] | None = None
    image: ImageReference | None = None  # upstream image to mirror
    max_model_len: int | None = Field(default=None, ge=1)  # at most the model's context: a rule below
    vllm_extra_args: VllmArgs = Field(default_factory=list)
    replicas: int = Field(default=1, ge=0, le=100)  # spot profiles: 2 unless set (gptoss_gke/profiles.py)
    # on-demand: one pool, weights in a zonal claim. spot / spot-with-fallback: spot pools across zones
    # (+ an on-demand fallback) ranked by a GKE ComputeClass, weights from the bucket.
    capacity: Literal["on-demand", "spot", "spot-with-fallback"] = "on-demand"
    load_timeout_s: int | None = Field(default=None, ge=1, le=24 * 3600)
    expose: Literal["cluster-ip", "load-balancer", "ingress"] = "cluster-ip"
    ingress_host: IngressHost | None = None
    pvc_size_gi: int = Field(default=60, ge=1, le=65536)  # l4 model cache; at least the weights: a rule below
    storage_class: Dns1123Subdomain = "standard-rwo"

    @model_validator(mode="after")
    def _spot_replicas(self):
        from gptoss_gke.profiles import ON_DEMAND, SPOT_REPLICAS

        # Spot capacity is only safe with a second replica in another zone; an explicit value wins
        # (replicas: 1 is the cheapest way, accepting a gap while a replacement loads).
        if self.capacity != ON_DEMAND and "replicas" not in self.model_fields_set:
            self.__dict__["replicas"] = SPOT_REPLICAS
        return self


class ClusterSettings(_Strict):
    name: GkeName = "gptoss"
    location: Location | None = None  # a region (regional cluster) or a zone (zonal); default: region
    # Unset: rapid when we create the cluster (Ironwood's versions arrive there first), and an existing
    # cluster keeps the channel its owner chose (a channel change can trigger upgrades).
    release_channel: Literal["rapid", "regular", "stable", "extended"] | None = None
    # How kubectl and our clients reach the control plane: its IP endpoint, or GKE's DNS-based endpoint
    # (IAM-checked, works for a control plane without a public IP: no bastion needed).
    control_plane: Literal["ip", "dns"] = "ip"
    initial_nodes: int = Field(default=1, ge=1, le=MAX_POOL_NODES)  # default pool, per zone
    default_machine_type: MachineType = "e2-standard-4"
    image_streaming: bool = True
    create: bool = True  # false: the cluster must already exist (we only update its settings)
    labels: GcpLabels = Field(default_factory=dict)  # GCP labels on a cluster we create


class RegistrySettings(_Strict):
    location: Location | None = None  # default: region
    repository: ResourceName = "gptoss"
    mode: Literal["copy", "remote"] = "copy"  # copy with skopeo, or an AR remote repo on Docker Hub
    platform: Platform = "linux/amd64"  # or "all"
    # The registry host images are pushed to and pinned at. Default (None): <location>-docker.pkg.dev.
    # Set it only for a private mirror or a loopback test registry.
    host: RegistryHost | None = None
    # Verify TLS when skopeo talks to the source and destination registries. false only for a
    # plain-HTTP registry on loopback (tests); never for Artifact Registry or Docker Hub.
    tls_verify: bool = True


class ModelStoreSettings(_Strict):
    bucket: BucketName | None = None  # required for targets served from a bucket (ironwood)
    location: Location | None = None  # default: region
    prefix: ObjectPrefix = "models"  # objects go to <prefix>/<model id>/<revision>/
    hf_token_file: str | None = None  # a file holding the HF token (else HF_TOKEN in the environment)
    workers: int = Field(default=8, ge=1, le=64)
    chunk_mib: int = Field(default=64, ge=8, le=1024)
    max_temp_gib: float = Field(default=8.0, gt=0, le=1024)
    temp_dir: str | None = None
    hf_endpoint: HttpUrl | None = None  # the Hugging Face Hub (or a mirror); HF_ENDPOINT in the environment wins
    # Where the transfer runs: here (local), or as an Indexed Job in the cluster's region (cluster).
    stage_in: Literal["local", "cluster"] = "local"
    stage_pods: int | None = Field(default=None, ge=1, le=64)  # the Job's pods; default: sized to the model
    # The tools image our in-cluster Jobs run this checkout on: mirrored into the repository, pinned by digest.
    stager_image: ImageReference = "python:3.12-slim"


class KubeSettings(_Strict):
    kubeconfig: str | None = None  # default: the first file in $KUBECONFIG, else ~/.kube/config (as kubectl)
    context: Printable | None = None  # default: the context get-credentials writes
    namespace: Namespace = "gptoss"
    service_account: Dns1123Subdomain = "vllm"
    api_key_secret: Dns1123Subdomain = "vllm-api-key"
    field_manager: Printable = "gptoss-gke"
    poll_interval_s: float = Field(default=5.0, gt=0, le=300)  # how often rollout waits look again


class RemoteSettings(_Strict):
    host: SshHost | None = None
    user: UserName | None = None
    port: int = Field(default=22, ge=1, le=65535)
    key_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    strict_host_keys: bool = True  # false: trust an unknown host on first use (recorded); a changed key still refuses
    python: Printable = "python3"  # the remote interpreter that runs shipped steps (a virtualenv's python, say)
    connect_timeout_s: float = Field(default=15.0, gt=0, le=600)


class RetrySettings(_Strict):
    attempts: int = Field(default=5, ge=1, le=20)
    base_delay_s: float = Field(default=1.0, ge=0, le=60)
    max_delay_s: float = Field(default=20.0, ge=0, le=600)


class Price(_Strict):
    on_demand: float = Field(ge=0)
    spot: float | None = Field(default=None, ge=0)


def _default_prices() -> dict[str, Price]:
    # USD per node-hour for g2-standard-4 in us-central1 (the L4 tutorial quotes ~$0.70 and ~$0.21).
    # Add your own per environment (prices: {machine type: {on_demand, spot}}); TPU v7 pricing is
    # contract-specific, so no default is shipped for it.
    return {"g2-standard-4": Price(on_demand=0.7068, spot=0.2121)}


# Labels the tool puts on everything it creates; teardown trusts them, so settings cannot redefine them.
OWNERSHIP_KEYS = ("app.kubernetes.io/managed-by", "gptoss-gke/env", "gptoss-gke/target")


class Settings(_Strict):
    project: ProjectId | None = None
    region: Region = "us-central1"
    zone: Zone = "us-central1-a"
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    models: ModelStoreSettings = Field(default_factory=ModelStoreSettings)
    kube: KubeSettings = Field(default_factory=KubeSettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    targets: dict[str, TargetSettings] = Field(default_factory=dict)
    prices: dict[MachineType, Price] = Field(default_factory=_default_prices)
    labels: KubeLabels = Field(default_factory=dict)  # added to every Kubernetes object we create

    # Not settable from files: filled by the loader.
    env_name: str = Field(default=DEFAULT_ENV, exclude=True)
    env_file: str | None = Field(default=None, exclude=True)
    hf_token: SecretStr | None = Field(default=None, exclude=True)
    _origins: dict[tuple, str] = PrivateAttr(default_factory=dict)
    _kubeconfig_source: str = PrivateAttr(default="kube.kubeconfig")
    _failed: list[tuple] = PrivateAttr(default_factory=list)  # keys refused by the loader (back to defaults)

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, v):
        for name in v:
            if name not in CATALOGUE:
                raise _LocatedError(("targets", name), f"unknown target '{name}'{did_you_mean(name, CATALOGUE)}",
                                    f"one of: {', '.join(CATALOGUE)}")
        return v

    @field_validator("labels")
    @classmethod
    def _not_ownership(cls, v):
        for key in v:
            if key in OWNERSHIP_KEYS:
                raise _LocatedError(("labels", key), "is one of the ownership labels the tool sets itself "
                                    "(teardown trusts them)", f"any label key except {', '.join(OWNERSHIP_KEYS)}")
        return v

    # ---- derived values: one place, so every step agrees ----
    @property
    def cluster_location(self) -> str:
        return self.cluster.location or self.region

    @property
    def cluster_is_regional(self) -> bool:
        return not _ZONE.match(self.cluster_location)

    @property
    def registry_location(self) -> str:
        return self.registry.location or self.region

    @property
    def bucket_location(self) -> str:
        return (self.models.location or self.region).upper()

    @property
    def workload_pool(self) -> str:
        return f"{self.project}.svc.id.goog"

    @property
    def kube_context(self) -> str:
        return self.kube.context or f"gke_{self.project}_{self.cluster_location}_{self.cluster.name}"

    @property
    def kubeconfig_path(self) -> str:
        return os.path.expanduser(self.kube.kubeconfig or DEFAULT_KUBECONFIG)

    @property
    def kubeconfig_shown(self) -> str:
        """The kubeconfig and why that one: "~/.kube/config", "/tmp/k (from $KUBECONFIG)"."""
        path = self.kube.kubeconfig or DEFAULT_KUBECONFIG
        return path if self._kubeconfig_source == "kube.kubeconfig" else f"{path} (from {self._kubeconfig_source})"

    @property
    def ownership_labels(self) -> dict[str, str]:
        """Who created an object: this tool, for this environment. Teardown selects on exactly these;
        user ``labels`` are added beside them (object_labels) but never decide ownership."""
        from gptoss_gke import TOOL_NAME
        from gptoss_gke.ownership import ENV, MANAGED_BY

        return {MANAGED_BY: TOOL_NAME, ENV: self.env_name}

    @property
    def object_labels(self) -> dict[str, str]:
        """What every Kubernetes object we create carries: the user's labels, then ours (ours win)."""
        return {**self.labels, **self.ownership_labels}

    @property
    def gcp_labels(self) -> dict[str, str]:
        """The same ownership, spelled the way GCP labels allow (no '/' or '.')."""
        from gptoss_gke import TOOL_NAME
        from gptoss_gke.ownership import GCP_ENV, GCP_MANAGED_BY

        return {GCP_MANAGED_BY: TOOL_NAME, GCP_ENV: self.env_name}

    def origin(self, loc: tuple) -> str:
        """Where a key's value came from: "env/dev.yaml:12", "environment variable GPTOSS_ZONE", "defaults"."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self._origins:
                return self._origins[loc[:n]]
        return "defaults"

    def target(self, name: str) -> Target:
        base = CATALOGUE[name]
        t = self.targets.get(name, TargetSettings())
        pool = t.node_pool.model_dump(exclude={"spot", "reservation", "node_locations"})
        if pool.get("labels") is not None:
            pool["labels"] = {**base.node_pool.labels, **pool["labels"]}
        patterns = {k: tuple(v) for k, v in (("allow_patterns", t.allow_patterns),
                                                ("ignore_patterns", t.ignore_patterns)) if v is not None}
        from gptoss_gke.profiles import serving_target

        return serving_target(base.with_overrides(model_revision=t.model_revision, image=t.image, **patterns,
                                                  max_model_len=t.max_model_len, load_budget_s=t.load_timeout_s,
                                                  node_pool=pool), t.capacity)

    def hourly_price(self, machine_type: str, *, spot: bool = False) -> float | None:
        """USD per node-hour from ``prices.<machine type>``; None when not known (never guessed)."""
        price = self.prices.get(machine_type)
        if price is None:
            return None
        return price.spot if spot else price.on_demand

    def target_settings(self, name: str) -> TargetSettings:
        return self.targets.get(name, TargetSettings())

    def enabled_targets(self) -> list[str]:
        return [n for n in CATALOGUE if self.target_settings(n).enabled]

    def node_locations(self, name: str) -> list[str]:
        from gptoss_gke.profiles import ON_DEMAND, default_zones

        configured = self.target_settings(name).node_pool.node_locations
        if configured:
            return configured
        # Spot capacity spreads over the region's zones that offer the accelerator.
        return default_zones(self, CATALOGUE[name]) if self.target_settings(name).capacity != ON_DEMAND else [self.zone]


class _LocatedError(ValueError):
    """A check that knows which key it is about (and what is allowed there)."""

    def __init__(self, loc: tuple, message: str, allowed: str = ""):
        super().__init__(message)
        self.loc = loc
        self.message = message
        self.allowed = allowed


# =============================================================================================
