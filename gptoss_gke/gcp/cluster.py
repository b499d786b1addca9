"""The GKE cluster, its node pools and kubectl credentials.

One `gcloud container clusters describe` serves every step here (the reply carries the node pools),
so a converged run costs one read. Each drifted cluster setting gets its own `clusters update`:
gcloud takes exactly one update flag per call, and each is its own long-running operation.
"""

from __future__ import annotations

import os
import re

import yaml

from gptoss_gke.config import reservation_key
from gptoss_gke.core.step import Change, Plan, Step, noop
from gptoss_gke.errors import StepError
from gptoss_gke.gcp import gcloud
from gptoss_gke.gcp.project import Apis, GcloudStep, Project

CLUSTER_FACT = "gke.cluster"
# Every add-on we need, listed in full: `--addons` enables what it lists and disables the rest.
ADDONS = ("GcsFuseCsiDriver", "HttpLoadBalancing", "HorizontalPodAutoscaling")
OPERATION_TIMEOUT_S = 3600


def describe_cluster(ctx) -> dict | None:
    s = ctx.settings
    return ctx.fact(CLUSTER_FACT, lambda: gcloud.read_json(
        ctx, "container", "clusters", "describe", s.cluster.name, f"--location={s.cluster_location}",
        what=f"cluster {s.cluster.name}"))


def _location_flags(ctx) -> list[str]:
    return [f"--location={ctx.settings.cluster_location}"]


def _label_flag(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def gke_version(text: str) -> tuple[int, ...]:
    """'1.34.0-gke.2201000' → (1, 34, 0, 2201000), comparable."""
    nums = [int(n) for n in re.findall(r"\d+", text or "")]
    return tuple(nums[:4] + [0] * (4 - len(nums[:4])))


class _ClusterScoped(GcloudStep):
    def apply(self, ctx, change: Change) -> None:
        try:
            super().apply(ctx, change)
        finally:
            ctx.forget(CLUSTER_FACT)  # the cluster (and its pools) changed: read it again


class Cluster(_ClusterScoped):
    section = "cluster"

    def __init__(self, settings):
        self.name = f"cluster {settings.cluster.name}"

    def observe(self, ctx):
        return describe_cluster(ctx)

    def desired_settings(self, ctx) -> list[tuple[str, bool, str, list[str]]]:
        """(setting, in place?, plain words, the one update flag) for each setting we converge."""
        c = self._current
        s = ctx.settings
        addons = c.get("addonsConfig", {})
        wanted_addons = []
        if not addons.get("gcsFuseCsiDriverConfig", {}).get("enabled"):
            wanted_addons.append("GcsFuseCsiDriver=ENABLED")
        if addons.get("httpLoadBalancing", {}).get("disabled"):
            wanted_addons.append("HttpLoadBalancing=ENABLED")
        if addons.get("horizontalPodAutoscaling", {}).get("disabled"):
            wanted_addons.append("HorizontalPodAutoscaling=ENABLED")
        pool = c.get("workloadIdentityConfig", {}).get("workloadPool")
        gateway = c.get("networkConfig", {}).get("gatewayApiConfig", {}).get("channel")
        streaming = (c.get("nodePoolDefaults", {}).get("nodeConfigDefaults", {}).get("gcfsConfig", {})
                     .get("enabled", False))
        channel = c.get("releaseChannel", {}).get("channel", "UNSPECIFIED")
        want_channel = s.cluster.release_channel.upper()
        return [
            ("workload identity", pool == s.workload_pool, f"workload pool {pool or 'unset'} → {s.workload_pool}",
             [f"--workload-pool={s.workload_pool}"]),
            ("add-ons", not wanted_addons, "enable " + ", ".join(a.split("=")[0] for a in wanted_addons),
             [f"--update-addons={','.join(wanted_addons)}"]),
            ("gateway API", gateway == "CHANNEL_STANDARD", f"Gateway API {gateway or 'disabled'} → standard",
             ["--gateway-api=standard"]),
            ("image streaming", streaming or not s.cluster.image_streaming, "enable image streaming",
             ["--enable-image-streaming"]),
            ("release channel", channel == want_channel, f"release channel {channel} → {want_channel}",
             [f"--release-channel={s.cluster.release_channel}"]),
        ]

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        name = s.cluster.name
        if current is None:
            if not s.cluster.create:
                raise StepError(f"cluster {name} not found in {s.cluster_location} and cluster.create is false",
                                f"fix cluster.name/cluster.location in {s.env_file}, or set cluster.create: true")
            argv = gcloud.argv(
                ctx, "container", "clusters", "create", name, *_location_flags(ctx),
                f"--workload-pool={s.workload_pool}", f"--release-channel={s.cluster.release_channel}",
                f"--num-nodes={s.cluster.initial_nodes}", f"--machine-type={s.cluster.default_machine_type}",
                "--gateway-api=standard", f"--addons={','.join(ADDONS)}",
                *(["--enable-image-streaming"] if s.cluster.image_streaming else []),
                f"--labels={_label_flag({**s.gcp_labels, **s.cluster.labels})}",
            )
            kind = "regional" if s.cluster_is_regional else "zonal"
            # gcloud writes the kubeconfig context on create: into our configured file, not $KUBECONFIG.
            return Plan([Change(f"create {kind} cluster {name} in {s.cluster_location}", "create", argv=argv,
                                env={"KUBECONFIG": s.kubeconfig_path}, timeout=OPERATION_TIMEOUT_S)],
                        diff={"cluster": "absent → present"})
        self._current = current
        status = current.get("status", "RUNNING")
        if status not in ("RUNNING", "RECONCILING"):
            raise StepError(f"cluster {name} is {status}", "wait for the current operation to finish, then re-run")
        changes, ok = [], []
        for setting, converged, words, flags in self.desired_settings(ctx):
            if converged:
                ok.append(setting)
                continue
            argv = gcloud.argv(ctx, "container", "clusters", "update", name, *_location_flags(ctx), *flags)
            changes.append(Change(words, "update", argv=argv, timeout=OPERATION_TIMEOUT_S))
        facts = {"version": current.get("currentMasterVersion"), "endpoint": current.get("endpoint")}
        if not changes:
            return noop(f"cluster {name} already has {', '.join(ok)} (GKE {facts['version']})", **facts)
        return Plan(changes, diff={"settings": [c.summary for c in changes]}, facts=facts)


class NodePool(_ClusterScoped):
    section = "node pools"

    def __init__(self, settings, target_name: str):
        self.target_name = target_name
        self.target = settings.target(target_name)
        self.options = settings.target_settings(target_name).node_pool
        self.pool = self.target.node_pool
        self.name = f"node pool {self.pool.name} ({target_name})"

    def observe(self, ctx):
        cluster = describe_cluster(ctx)
        if cluster is None:
            return {"cluster": None, "pool": None}
        pool = next((p for p in cluster.get("nodePools", []) if p.get("name") == self.pool.name), None)
        return {"cluster": cluster, "pool": pool}

    # -- what we want, in gcloud's words and in the API's -------------------------------------
    def _labels(self, ctx) -> dict[str, str]:
        return dict(self.pool.labels)

    def _create_argv(self, ctx) -> list[str]:
        s, p = ctx.settings, self.pool
        flags = [
            f"--cluster={s.cluster.name}", *_location_flags(ctx),
            f"--node-locations={','.join(s.node_locations(self.target_name))}",
            f"--machine-type={p.machine_type}",
        ]
        if p.accelerator_type:
            acc = f"type={p.accelerator_type},count={p.accelerator_count}"
            if p.gpu_driver_version:
                acc += f",gpu-driver-version={p.gpu_driver_version}"
            flags.append(f"--accelerator={acc}")
        if p.tpu_topology:
            flags.append(f"--tpu-topology={p.tpu_topology}")
        flags += [f"--num-nodes={p.initial_nodes}", "--enable-autoscaling", f"--min-nodes={p.min_nodes}",
                  f"--max-nodes={p.max_nodes}"]
        if self._labels(ctx):
            flags.append(f"--node-labels={_label_flag(self._labels(ctx))}")
        if p.taints:
            flags.append(f"--node-taints={','.join(p.taints)}")
        flags += ["--workload-metadata=GKE_METADATA", "--scopes=cloud-platform",
                  f"--labels={_label_flag(s.gcp_labels)}"]
        if self.options.spot:
            flags.append("--spot")
        if self.options.reservation:  # both flags only when a reservation is configured (errata)
            flags += ["--reservation-affinity=specific", f"--reservation={self.options.reservation}"]
        return gcloud.argv(ctx, "container", "node-pools", "create", p.name, *flags)

    def _update_argv(self, ctx, *flags: str) -> list[str]:
        s = ctx.settings
        return gcloud.argv(ctx, "container", "node-pools", "update", self.pool.name,
                           f"--cluster={s.cluster.name}", *_location_flags(ctx), *flags)

    def _immutable_drift(self, ctx, pool: dict) -> list[str]:
        p, cfg = self.pool, pool.get("config", {})
        drift = []
        if cfg.get("machineType") and cfg["machineType"] != p.machine_type:
            drift.append(f"machine type is {cfg['machineType']}, want {p.machine_type}")
        accs = cfg.get("accelerators") or []
        have = (accs[0].get("acceleratorType"), int(accs[0].get("acceleratorCount", 0))) if accs else (None, 0)
        if p.accelerator_type and have != (p.accelerator_type, p.accelerator_count):
            drift.append(f"accelerator is {have[1]}× {have[0] or 'none'}, want {p.accelerator_count}× "
                         f"{p.accelerator_type}")
        topo = pool.get("placementPolicy", {}).get("tpuTopology")
        if p.tpu_topology and topo and topo != p.tpu_topology:
            drift.append(f"TPU topology is {topo}, want {p.tpu_topology}")
        if bool(cfg.get("spot")) != self.options.spot:
            drift.append(f"spot is {bool(cfg.get('spot'))}, want {self.options.spot}")
        ra = cfg.get("reservationAffinity") or {}
        want_res = self.options.reservation
        have_res = (ra.get("values") or [None])[0] if ra.get("consumeReservationType") == "SPECIFIC_RESERVATION" \
            else None
        # A local reservation may be written as its name or its path, a shared one only as its path
        # (projects/P/reservations/R): compare the paths, so both spellings converge.
        project = ctx.settings.project
        if want_res and have_res and reservation_key(have_res, project) != reservation_key(want_res, project):
            drift.append(f"reservation is {have_res}, want {want_res}")
        return drift

    def plan(self, ctx, current) -> Plan:
        s, p = ctx.settings, self.pool
        current = current or {"cluster": None, "pool": None}
        cluster, pool = current["cluster"], current["pool"]
        if cluster is not None and p.min_gke_version:
            have = cluster.get("currentMasterVersion", "0")
            if gke_version(have) < gke_version(p.min_gke_version):
                raise StepError(
                    f"cluster {s.cluster.name} runs GKE {have}; {p.machine_type} needs >= {p.min_gke_version}",
                    f"upgrade the control plane: gcloud container clusters upgrade {s.cluster.name} --master "
                    f"--location={s.cluster_location} --cluster-version=<a version >= {p.min_gke_version}> "
                    f"(the rapid channel has them)")
        if pool is None:
            return Plan([Change(f"create node pool {p.name} ({self._shape()})", "create",
                                argv=self._create_argv(ctx), timeout=OPERATION_TIMEOUT_S)],
                        diff={"node pool": "absent → present"})
        drift = self._immutable_drift(ctx, pool)
        if drift:
            loc = s.cluster_location
            raise StepError(
                f"node pool {p.name} differs in what cannot change in place: {'; '.join(drift)}",
                f"we never recreate a pool silently. Either set targets.{self.target_name}.node_pool to match the "
                f"existing pool, or delete it (gcloud container node-pools delete {p.name} "
                f"--cluster={s.cluster.name} --location={loc}) and re-run inv setup-cluster")
        changes = []
        auto = pool.get("autoscaling") or {}
        have_auto = (bool(auto.get("enabled")), int(auto.get("minNodeCount", 0)), int(auto.get("maxNodeCount", 0)))
        if have_auto != (True, p.min_nodes, p.max_nodes):
            changes.append(Change(
                f"autoscaling {have_auto[1]}..{have_auto[2]}{'' if have_auto[0] else ' (off)'} → "
                f"{p.min_nodes}..{p.max_nodes}", "update",
                argv=self._update_argv(ctx, "--enable-autoscaling", f"--min-nodes={p.min_nodes}",
                                       f"--max-nodes={p.max_nodes}"), timeout=OPERATION_TIMEOUT_S))
        labels = pool.get("config", {}).get("labels") or {}
        want = self._labels(ctx)
        if any(labels.get(k) != v for k, v in want.items()):
            merged = {**labels, **want}  # --node-labels replaces the set: keep labels others added
            changes.append(Change(f"node labels → {_label_flag(want)}", "update",
                                  argv=self._update_argv(ctx, f"--node-labels={_label_flag(merged)}"),
                                  timeout=OPERATION_TIMEOUT_S))
        mode = pool.get("config", {}).get("workloadMetadataConfig", {}).get("mode")
        if mode != "GKE_METADATA":
            changes.append(Change(f"workload metadata {mode or 'unset'} → GKE_METADATA", "update",
                                  argv=self._update_argv(ctx, "--workload-metadata=GKE_METADATA"),
                                  timeout=OPERATION_TIMEOUT_S))
        if not changes:
            return noop(f"node pool {p.name} is {self._shape()}, autoscaling {p.min_nodes}..{p.max_nodes}, "
                        f"GKE_METADATA")
        return Plan(changes, diff={"node pool": [c.summary for c in changes]})

    def _shape(self) -> str:
        p = self.pool
        acc = f", {p.accelerator_count}× {p.accelerator_type}" if p.accelerator_type else ""
        topo = f", topology {p.tpu_topology}" if p.tpu_topology else ""
        return f"{p.machine_type}{acc}{topo}"


class KubeCredentials(GcloudStep):
    """`get-credentials` into the configured kubeconfig, only when the context is missing or stale."""

    section = "cluster"
    name = "kubectl credentials"

    def observe(self, ctx):
        cluster = describe_cluster(ctx)
        path = ctx.settings.kubeconfig_path
        config = {}
        if os.path.exists(path):
            with open(path) as fh:
                config = yaml.safe_load(fh) or {}
        contexts = {c["name"]: c.get("context", {}) for c in config.get("contexts") or []}
        clusters = {c["name"]: c.get("cluster", {}) for c in config.get("clusters") or []}
        entry = contexts.get(ctx.settings.kube_context)
        server = clusters.get(entry.get("cluster"), {}).get("server") if entry else None
        return {"endpoint": (cluster or {}).get("endpoint"), "server": server}

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        current = current or {"endpoint": None, "server": None}
        want = f"https://{current['endpoint']}" if current["endpoint"] else None
        if current["server"] and (want is None or current["server"] == want):
            return noop(f"context {s.kube_context} in {s.kubeconfig_shown} points at {current['server']}")
        argv = gcloud.argv(ctx, "container", "clusters", "get-credentials", s.cluster.name, *_location_flags(ctx))
        return Plan([Change(f"write context {s.kube_context} into {s.kubeconfig_shown}", "update", argv=argv,
                            env={"KUBECONFIG": s.kubeconfig_path})])


def setup_cluster_steps(settings, targets: list[str]) -> list[Step]:
    return [
        Project(),
        Apis(),
        Cluster(settings),
        *[NodePool(settings, t) for t in targets],
        KubeCredentials(),
    ]
