"""The GKE cluster, its node pools and kubectl credentials: created, converged, checked and deleted here.

One `gcloud container clusters describe` serves every step here (the reply carries the node pools),
so a converged run costs one read; every step that writes declares that read stale (``invalidates``).
Each drifted cluster setting gets its own `clusters update`: gcloud takes exactly one update flag per
call, and each is its own long-running operation.

Deleting (teardown): a node pool or the cluster only if this environment created it (our labels), and
never while the Kubernetes objects on it could not be seen, unless ``--force`` says so (then what may
be left behind is named).
"""

from __future__ import annotations

import math
import re

from gptoss_gke.config.rules import reservation_key
from gptoss_gke.core.step import Change, Check, Plan, noop
from gptoss_gke.errors import CannotObserve, StepError
from gptoss_gke.gcp import gcloud
from gptoss_gke.gcp.project import Credentials, GcloudStep
from gptoss_gke.k8s.client import (KUBE_CLIENT_FACT, MAY_BE_ORPHANED, KubernetesApi, context_server, host_port,
                                   kube_for_cluster)
from gptoss_gke.ownership import gcp_owner_problem

CLUSTER_FACT = "gke.cluster"
SERVER_CONFIG_FACT = "gke.server_config"
# The channel a cluster we create joins when cluster.release_channel is unset: Ironwood's GKE versions
# arrive there first.
DEFAULT_CHANNEL = "rapid"
# Every add-on we need, listed in full: `--addons` enables what it lists and disables the rest.
ADDONS = ("GcsFuseCsiDriver", "HttpLoadBalancing", "HorizontalPodAutoscaling")
OPERATION_TIMEOUT_S = 3600


def describe_cluster(ctx) -> dict | None:
    s = ctx.settings
    return ctx.fact(CLUSTER_FACT, lambda: gcloud.read_json(
        ctx, "container", "clusters", "describe", s.cluster.name, f"--location={s.cluster_location}",
        what=f"cluster {s.cluster.name}"))


def server_config(ctx) -> dict:
    """`get-server-config`: each release channel's default version (what a new node pool gets)."""
    s = ctx.settings
    return ctx.fact(SERVER_CONFIG_FACT, lambda: gcloud.read_json(
        ctx, "container", "get-server-config", f"--location={s.cluster_location}",
        what=f"the GKE versions offered in {s.cluster_location}", absent_ok=False) or {})


def dns_endpoint(cluster: dict) -> dict:
    return (cluster.get("controlPlaneEndpointsConfig") or {}).get("dnsEndpointConfig") or {}


def _location_flags(ctx) -> list[str]:
    return [f"--location={ctx.settings.cluster_location}"]


def gke_version(text: str) -> tuple[int, ...]:
    """'1.34.0-gke.2201000' → (1, 34, 0, 2201000), comparable."""
    nums = [int(n) for n in re.findall(r"\d+", text or "")]
    return tuple(nums[:4] + [0] * (4 - len(nums[:4])))


def price_words(settings, machine_type: str, *, spot: bool = False) -> str:
    """A node's hourly price from ``prices.*``, or plainly that it is unknown and where to give it."""
    price = settings.hourly_price(machine_type, spot=spot)
    if price is None:
        return (f"price unknown for {machine_type}{' (spot)' if spot else ''}: add "
                f"prices.{machine_type}.{'spot' if spot else 'on_demand'} to {settings.env_file or 'the environment'}")
    return f"${price:.2f}/h per node {'spot' if spot else 'on demand'}"


def default_pool_billing(s) -> str:
    zones = "in each of the region's zones GKE picks" if s.cluster_is_regional else f"in {s.cluster_location}"
    return (f"BILLING STARTS when the cluster is created: its default pool runs {s.cluster.initial_nodes}× "
            f"{s.cluster.default_machine_type} {zones} ({price_words(s, s.cluster.default_machine_type)}), "
            f"plus GKE's cluster fee")


class Cluster(GcloudStep):
    section = "cluster"
    key = "gke.cluster"
    invalidates = (CLUSTER_FACT,)  # the cluster (and its pools) changed: read it again

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
        settings = [
            ("workload identity", pool == s.workload_pool, f"workload pool {pool or 'unset'} → {s.workload_pool}",
             [f"--workload-pool={s.workload_pool}"]),
            ("add-ons", not wanted_addons, "enable " + ", ".join(a.split("=")[0] for a in wanted_addons),
             [f"--update-addons={','.join(wanted_addons)}"]),
            ("gateway API", gateway == "CHANNEL_STANDARD", f"Gateway API {gateway or 'disabled'} → standard",
             ["--gateway-api=standard"]),
            ("image streaming", streaming or not s.cluster.image_streaming, "enable image streaming",
             ["--enable-image-streaming"]),
        ]
        if s.cluster.release_channel:  # only a channel the user chose moves an existing cluster
            want = s.cluster.release_channel.upper()
            settings.append(("release channel", channel == want, f"release channel {channel} → {want}",
                             [f"--release-channel={s.cluster.release_channel}"]))
        if s.cluster.control_plane == "dns":
            settings.append(("DNS endpoint", bool(dns_endpoint(c).get("allowExternalTraffic")),
                             "allow kubectl through the DNS-based control-plane endpoint", ["--enable-dns-access"]))
        return settings

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        name = s.cluster.name
        if current is None:
            if not s.cluster.create:
                raise StepError(f"cluster {name} not found in {s.cluster_location} and cluster.create is false",
                                f"fix cluster.name/cluster.location in {s.env_file}, or set cluster.create: true")
            argv = gcloud.argv(
                ctx, "container", "clusters", "create", name, *_location_flags(ctx),
                f"--workload-pool={s.workload_pool}",
                f"--release-channel={s.cluster.release_channel or DEFAULT_CHANNEL}",
                f"--num-nodes={s.cluster.initial_nodes}", f"--machine-type={s.cluster.default_machine_type}",
                "--gateway-api=standard", f"--addons={','.join(ADDONS)}",
                *(["--enable-image-streaming"] if s.cluster.image_streaming else []),
                *(["--enable-dns-access"] if s.cluster.control_plane == "dns" else []),
                f"--labels={gcloud.label_flag({**s.gcp_labels, **s.cluster.labels})}",
            )
            kind = "regional" if s.cluster_is_regional else "zonal"
            # gcloud writes the kubeconfig context on create: into our configured file, not $KUBECONFIG.
            return Plan([Change(f"create {kind} cluster {name} in {s.cluster_location}", "create", argv=argv,
                                env={"KUBECONFIG": s.kubeconfig_path}, timeout=OPERATION_TIMEOUT_S,
                                detail=[default_pool_billing(s)])],
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


# gcloud's taint effects and the API's.
_EFFECTS = {"NoSchedule": "NO_SCHEDULE", "PreferNoSchedule": "PREFER_NO_SCHEDULE", "NoExecute": "NO_EXECUTE"}
_DRIVER = {"default": "DEFAULT", "latest": "LATEST", "disabled": "INSTALLATION_DISABLED"}
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def _taint(text: str) -> dict:
    """'key=value:Effect' (gcloud's form) → the API's {key, value, effect}."""
    kv, _, effect = text.rpartition(":")
    key, _, value = kv.partition("=")
    return {"key": key, "value": value, "effect": _EFFECTS.get(effect, effect)}


def _taint_flag(t: dict) -> str:
    effect = next((k for k, v in _EFFECTS.items() if v == t.get("effect")), t.get("effect", ""))
    return f"{t.get('key')}={t.get('value', '')}:{effect}"


def _chips(topology: str) -> int:
    return math.prod(int(n) for n in topology.split("x"))


def _chips_per_host(machine_type: str) -> int | None:
    """TPU machine types name their chips per VM: tpu7x-standard-4t, ct6e-standard-8t."""
    m = re.search(r"-(\d+)t$", machine_type)
    return int(m.group(1)) if m else None


class NodePool(GcloudStep):
    section = "node pools"
    invalidates = (CLUSTER_FACT,)

    def __init__(self, settings, target_name: str, profile_pool=None):
        """``profile_pool``: one pool of a spot capacity profile (gptoss_gke/profiles.py); default the
        target's own pool."""
        self.target_name = target_name
        self.target = settings.target(target_name)
        self.options = settings.target_settings(target_name).node_pool
        self.pool = profile_pool.shape if profile_pool else self.target.node_pool
        self.spot = profile_pool.spot if profile_pool else self.options.spot
        # A reservation holds on-demand capacity: spot pools never consume it.
        self.reservation = None if self.spot else self.options.reservation
        role = profile_pool.role if profile_pool and profile_pool.role != "on-demand" else None
        self.key = f"gke.node-pool.{target_name}" + (f".{role}" if role else "")
        self.name = f"node pool {self.pool.name} ({target_name}{', ' + role if role else ''})"

    def observe(self, ctx):
        cluster = describe_cluster(ctx)
        if cluster is None:
            return {"cluster": None, "pool": None, "server": None}
        pool = next((p for p in cluster.get("nodePools", []) if p.get("name") == self.pool.name), None)
        # The version a new pool gets is the channel's default, which can lag the control plane (worth
        # reading only when the control plane itself is new enough: otherwise plan() refuses anyway).
        minimum = self.pool.min_gke_version
        server = server_config(ctx) if pool is None and minimum and gke_version(
            cluster.get("currentMasterVersion", "")) >= gke_version(minimum) else None
        return {"cluster": cluster, "pool": pool, "server": server}

    def apply(self, ctx, change) -> None:
        # Warm capacity bills from the moment the pool exists (a pool scaled to zero does not): a person
        # agrees to that cost first, or says so up front with --yes.
        warm = self._nodes_at_creation()
        if change.action == "create" and warm:
            _, _, facts = self._billing(ctx)
            cost = facts["hourly_cost_at_creation"]
            words = f"${cost:.2f}/h" if cost is not None else "an unknown price"
            if not ctx.confirm(f"Create node pool {self.pool.name} with {facts['nodes_at_creation']} node(s) "
                               f"that bill from creation ({words})?"):
                raise StepError(
                    f"node pool {self.pool.name} not created: it starts {facts['nodes_at_creation']} node(s) "
                    f"at once ({words}) and that was not confirmed",
                    f"answer y at the prompt, pass --yes, or set targets.{self.target_name}.node_pool.min_nodes "
                    f"and initial_nodes to 0 (the pool then scales up only when a pod needs a node)")
        super().apply(ctx, change)

    # -- what we want, in gcloud's words and in the API's -------------------------------------
    def _labels(self, ctx) -> dict[str, str]:
        return dict(self.pool.labels)

    @property
    def multi_host(self) -> bool:
        p = self.pool
        if not p.tpu_topology:
            return False
        if not re.fullmatch(r"\d+(x\d+){1,2}", p.tpu_topology):
            raise StepError(f"targets.{self.target_name}.node_pool.tpu_topology {p.tpu_topology!r} is not a TPU "
                            f"topology", "write it as GKE does, e.g. 2x2x1 (Ironwood) or 2x4 (v5e, v6e)")
        per_host = _chips_per_host(p.machine_type)
        return bool(per_host and _chips(p.tpu_topology) > per_host)

    def _accelerator_flag(self) -> str:
        p = self.pool
        acc = f"type={p.accelerator_type},count={p.accelerator_count}"
        if p.gpu_driver_version:
            acc += f",gpu-driver-version={p.gpu_driver_version}"
        return f"--accelerator={acc}"

    def _create_argv(self, ctx, node_version: str | None) -> list[str]:
        s, p = ctx.settings, self.pool
        flags = [
            f"--cluster={s.cluster.name}", *_location_flags(ctx),
            f"--node-locations={','.join(s.node_locations(self.target_name))}",
            f"--machine-type={p.machine_type}",
        ]
        if p.accelerator_type:
            flags.append(self._accelerator_flag())
        if self.multi_host:  # a single-host slice takes no topology: its machine type is the shape
            flags.append(f"--tpu-topology={p.tpu_topology}")
        if node_version:
            flags.append(f"--node-version={node_version}")
        flags += [f"--num-nodes={self._nodes_at_creation()}", "--enable-autoscaling", f"--min-nodes={p.min_nodes}",
                  f"--max-nodes={p.max_nodes}"]
        if self._labels(ctx):
            flags.append(f"--node-labels={gcloud.label_flag(self._labels(ctx))}")
        if p.taints:
            flags.append(f"--node-taints={','.join(p.taints)}")
        flags += ["--workload-metadata=GKE_METADATA", "--scopes=cloud-platform",
                  f"--labels={gcloud.label_flag(s.gcp_labels)}"]
        if self.spot:
            flags.append("--spot")
        if self.reservation:  # both flags only when a reservation is configured (errata)
            flags += ["--reservation-affinity=specific", f"--reservation={self.reservation}"]
        return gcloud.argv(ctx, "container", "node-pools", "create", p.name, *flags)

    def _update_argv(self, ctx, *flags: str) -> list[str]:
        s = ctx.settings
        return gcloud.argv(ctx, "container", "node-pools", "update", self.pool.name,
                           f"--cluster={s.cluster.name}", *_location_flags(ctx), *flags)

    def _new_pool_version(self, cluster: dict, server: dict | None) -> tuple[str | None, str]:
        """(--node-version, or None to take the default; where the version comes from, in words).

        Without --node-version a pool gets its channel's default version (capped at the control
        plane's), which can be older than what the accelerator needs even when the control plane is
        new enough. Then we ask for the control plane's own version: new enough (checked before) and
        never newer than the control plane, as node versions must be.
        """
        p = self.pool
        master = cluster.get("currentMasterVersion") or ""
        if server is None:
            return None, "node version: the pool gets its channel's default (not observed)"
        channel = (cluster.get("releaseChannel") or {}).get("channel") or "UNSPECIFIED"
        if channel != "UNSPECIFIED":
            default = next((c.get("defaultVersion") for c in server.get("channels") or []
                            if c.get("channel") == channel), None)
            source = f"the {channel} channel's default in get-server-config"
        else:
            default = server.get("defaultClusterVersion")
            source = "the default version in get-server-config (the cluster has no release channel)"
        if not default:
            raise StepError(f"get-server-config names no default version for {source.split(' in ')[0]}",
                            f"pick a version >= {p.min_gke_version} yourself and create the pool with "
                            f"--node-version, or upgrade the Google Cloud CLI")
        if master and gke_version(default) > gke_version(master):
            default, source = master, "the control plane's version (a pool is never newer than it)"
        if gke_version(default) >= gke_version(p.min_gke_version):
            return None, f"node version {default} ({source}), >= {p.min_gke_version}: no --node-version"
        return master, (f"node version {master} (--node-version, the control plane's): a new pool would get "
                        f"{default} ({source}), older than the {p.min_gke_version} {p.machine_type} needs")

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
        if bool(cfg.get("spot")) != self.spot:
            drift.append(f"spot is {bool(cfg.get('spot'))}, want {self.spot}")
        ra = cfg.get("reservationAffinity") or {}
        want_res = self.reservation
        # A local reservation may be written as its name or its path, a shared one only as its path
        # (projects/P/reservations/R): compare the paths, so both spellings converge.
        project = ctx.settings.project
        have_res = (ra.get("values") or [""])[0] if ra.get("consumeReservationType") == "SPECIFIC_RESERVATION" \
            else None
        if have_res:
            have_res = have_res.removeprefix(f"projects/{project}/reservations/")  # ours: shown by name
        if want_res and (not have_res or reservation_key(have_res, project) != reservation_key(want_res, project)):
            drift.append(f"reservation is {have_res or 'none (' + ra.get('consumeReservationType', 'unset') + ')'}, "
                         f"want {want_res}")
        elif not want_res and have_res:
            drift.append(f"the pool is bound to reservation {have_res}, but none is configured "
                         f"(targets.{self.target_name}.node_pool.reservation)")
        scopes = cfg.get("oauthScopes") or []
        if CLOUD_PLATFORM_SCOPE not in scopes:
            drift.append(f"OAuth scopes are {', '.join(sc.rsplit('/', 1)[-1] for sc in scopes) or 'none'}, "
                         f"want cloud-platform (access is then decided by IAM alone)")
        return drift

    def plan(self, ctx, current) -> Plan:
        s, p = ctx.settings, self.pool
        current = current or {"cluster": None, "pool": None, "server": None}
        cluster, pool = current["cluster"], current["pool"]
        if self.multi_host and p.machine_type.startswith("tpu7x"):
            raise StepError(
                f"{p.machine_type} with topology {p.tpu_topology} is a multi-host slice: Ironwood places those "
                f"with a workload policy (--placement-policy), not --tpu-topology, and this tool does not "
                f"create one", f"use a single-host shape (tpu7x-standard-4t, 2x2x1), or create the pool "
                f"yourself with a high-throughput workload policy and name it in targets.{self.target_name}."
                f"node_pool.name")
        if cluster is not None and p.min_gke_version:
            have = cluster.get("currentMasterVersion", "0")
            if gke_version(have) < gke_version(p.min_gke_version):
                raise StepError(
                    f"cluster {s.cluster.name} runs GKE {have}; {p.machine_type} needs >= {p.min_gke_version}",
                    f"upgrade the control plane: gcloud container clusters upgrade {s.cluster.name} --master "
                    f"--location={s.cluster_location} --cluster-version=<a version >= {p.min_gke_version}> "
                    f"(the rapid channel has them)")
        if pool is None:
            version, words = None, ""
            if p.min_gke_version and cluster is not None:
                version, words = self._new_pool_version(cluster, current["server"])
            elif p.min_gke_version:
                words = (f"node version: the new cluster's channel default, checked against >= {p.min_gke_version} "
                         f"once the cluster exists")
            billing, detail, facts = self._billing(ctx)
            if words:
                facts.update(node_version=version or "channel default", node_version_source=words)
                detail = [words, *detail]
            return Plan([Change(f"create node pool {p.name} ({self._shape()}): {billing}", "create",
                                argv=self._create_argv(ctx, version), timeout=OPERATION_TIMEOUT_S, detail=detail)],
                        diff={"node pool": "absent → present"}, facts=facts)
        loc = s.cluster_location
        drift = self._immutable_drift(ctx, pool)
        if drift:
            raise StepError(
                f"node pool {p.name} differs in what cannot change in place: {'; '.join(drift)}",
                f"we never recreate a pool silently. Either set targets.{self.target_name}.node_pool to match the "
                f"existing pool, or delete it (gcloud container node-pools delete {p.name} "
                f"--cluster={s.cluster.name} --location={loc}) and re-run inv setup-cluster")
        version = pool.get("version") or ""
        if p.min_gke_version and gke_version(version) < gke_version(p.min_gke_version):
            master = cluster.get("currentMasterVersion", "")
            raise StepError(
                f"node pool {p.name} runs GKE {version or 'an unknown version'}; {p.machine_type} needs >= "
                f"{p.min_gke_version}",
                f"upgrade its nodes (they are recreated; nothing here does it for you): gcloud container clusters "
                f"upgrade {s.cluster.name} --node-pool={p.name} --cluster-version={master} --location={loc}")
        changes = self._mutable_changes(ctx, pool)
        if not changes:
            return noop(f"node pool {p.name} is {self._shape()}, autoscaling {p.min_nodes}..{p.max_nodes}, "
                        f"GKE_METADATA, GKE {version}")
        return Plan(changes, diff={"node pool": [c.summary for c in changes]})

    def _mutable_changes(self, ctx, pool: dict) -> list[Change]:
        """One `node-pools update` per drifted setting: gcloud takes one update flag per call."""
        p, cfg = self.pool, pool.get("config", {})

        def update(summary: str, *flags: str) -> Change:
            return Change(summary, "update", argv=self._update_argv(ctx, *flags), timeout=OPERATION_TIMEOUT_S)

        changes = []
        auto = pool.get("autoscaling") or {}
        have_auto = (bool(auto.get("enabled")), int(auto.get("minNodeCount", 0)), int(auto.get("maxNodeCount", 0)))
        if have_auto != (True, p.min_nodes, p.max_nodes):
            changes.append(update(f"autoscaling {have_auto[1]}..{have_auto[2]}{'' if have_auto[0] else ' (off)'} → "
                                  f"{p.min_nodes}..{p.max_nodes}", "--enable-autoscaling",
                                  f"--min-nodes={p.min_nodes}", f"--max-nodes={p.max_nodes}"))
        labels = cfg.get("labels") or {}
        want = self._labels(ctx)
        if any(labels.get(k) != v for k, v in want.items()):
            merged = {**labels, **want}  # --node-labels replaces the set: keep labels others added
            changes.append(update(f"node labels → {gcloud.label_flag(want)}", f"--node-labels={gcloud.label_flag(merged)}"))
        taints = cfg.get("taints") or []
        ours = [_taint(t) for t in p.taints]
        have_taints = {(t.get("key"), t.get("value", ""), t.get("effect")) for t in taints}
        missing = [t for t in ours if (t["key"], t["value"], t["effect"]) not in have_taints]
        if missing:
            # --node-taints replaces the set: keep taints others added on other keys.
            merged_taints = [t for t in taints if t.get("key") not in {o["key"] for o in ours}] + ours
            changes.append(update(f"node taints: add {', '.join(_taint_flag(t) for t in missing)}",
                                  f"--node-taints={','.join(_taint_flag(t) for t in merged_taints)}"))
        accs = cfg.get("accelerators") or []
        if p.accelerator_type and p.gpu_driver_version and accs:
            have_driver = (accs[0].get("gpuDriverInstallationConfig") or {}).get("gpuDriverVersion") or "unset"
            if have_driver != _DRIVER[p.gpu_driver_version]:
                changes.append(update(f"GPU driver {have_driver} → {_DRIVER[p.gpu_driver_version]}",
                                      self._accelerator_flag()))
        zones = ctx.settings.node_locations(self.target_name)
        have_zones = pool.get("locations") or []
        if have_zones and sorted(have_zones) != sorted(zones):
            changes.append(update(f"node locations {','.join(have_zones)} → {','.join(zones)}",
                                  f"--node-locations={','.join(zones)}"))
        mode = cfg.get("workloadMetadataConfig", {}).get("mode")
        if mode != "GKE_METADATA":
            changes.append(update(f"workload metadata {mode or 'unset'} → GKE_METADATA", "--workload-metadata=GKE_METADATA"))
        return changes

    def _nodes_at_creation(self) -> int:
        """Per zone. Zero unless warm capacity is asked for (initial_nodes or min_nodes): an accelerator
        node bills from the moment it exists, and the autoscaler adds one when a pod needs it."""
        return max(self.pool.initial_nodes, self.pool.min_nodes)

    def _billing(self, ctx) -> tuple[str, list[str], dict]:
        """What creating the pool starts to bill, in words (summary, announcement) and as facts."""
        s, p = ctx.settings, self.pool
        zones = len(s.node_locations(self.target_name))
        now, most = self._nodes_at_creation() * zones, p.max_nodes * zones
        price = s.hourly_price(p.machine_type, spot=self.spot)
        each = price_words(s, p.machine_type, spot=self.spot)

        def cost(n: int) -> str:
            return f"${price * n:.2f}/h" if price is not None else "price unknown"

        facts = {"nodes_at_creation": now, "max_nodes": most, "hourly_price_per_node": price,
                 "hourly_cost_at_creation": price * now if price is not None else None}
        if now == 0:
            return (f"0 nodes now, nothing billed until a pod needs one; autoscaling up to {most} node(s), {each}",
                    [], facts)
        words = (f"{now} node(s) start now and bill from creation: {cost(now)} ({each}); autoscaling up to {most} "
                 f"({cost(most)})")
        why = "min_nodes" if p.min_nodes else "initial_nodes"
        return words, [f"BILLING STARTS when this pool is created: {now}× {p.machine_type} = {cost(now)} "
                       f"(targets.{self.target_name}.node_pool.{why} asks for warm capacity; 0 creates it "
                       f"scaled to zero)"], facts

    def _shape(self) -> str:
        p = self.pool
        acc = f", {p.accelerator_count}× {p.accelerator_type}" if p.accelerator_type else ""
        topo = f", topology {p.tpu_topology}" if p.tpu_topology else ""
        return f"{p.machine_type}{acc}{topo}"


class KubeCredentials(GcloudStep):
    """`get-credentials` into the configured kubeconfig, only when the context is missing or stale."""

    section = "cluster"
    name = "kubectl credentials"
    key = "gke.kubeconfig"
    invalidates = (KUBE_CLIENT_FACT,)  # a client built before would still use the old context

    def observe(self, ctx):
        cluster = describe_cluster(ctx) or {}
        endpoint = dns_endpoint(cluster).get("endpoint") if ctx.settings.cluster.control_plane == "dns" \
            else cluster.get("endpoint")
        return {"endpoint": endpoint, "server": context_server(ctx.settings)[0]}

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        current = current or {"endpoint": None, "server": None}
        want = f"https://{current['endpoint']}" if current["endpoint"] else None
        # Compared as host:port, as kube_for_cluster does (a plain-http loopback API has no https scheme).
        if current["server"] and (want is None or host_port(current["server"]) == host_port(want)):
            return noop(f"context {s.kube_context} in {s.kubeconfig_shown} points at {current['server']}")
        # The DNS endpoint is a name with a publicly trusted certificate, checked by IAM: no bastion.
        dns = ["--dns-endpoint"] if s.cluster.control_plane == "dns" else []
        argv = gcloud.argv(ctx, "container", "clusters", "get-credentials", s.cluster.name, *_location_flags(ctx),
                           *dns)
        return Plan([Change(f"write context {s.kube_context} into {s.kubeconfig_shown}", "update", argv=argv,
                            env={"KUBECONFIG": s.kubeconfig_path})])


class ClusterReady(Check):
    """Deploy needs what setup-cluster makes; say so plainly instead of failing three steps later."""

    section = "cluster"
    key = "gke.cluster-ready"

    def __init__(self, settings, targets: list[str]):
        from gptoss_gke.profiles import pools

        self.targets = targets
        self.pools = [p.shape.name for t in targets for p in pools(settings, t)]
        self.name = f"cluster {settings.cluster.name} and node pool(s) {', '.join(self.pools)}"

    def observe(self, ctx):
        return describe_cluster(ctx)

    def verdict(self, ctx, current) -> Plan:
        s = ctx.settings
        fix = f"run `inv setup-cluster --target={','.join(self.targets)}` first"
        if current is None:
            if ctx.dry_run:
                return noop("cluster not observed; setup-cluster creates it")
            raise StepError(f"cluster {s.cluster.name} not found in {s.cluster_location}", fix)
        have = {p.get("name") for p in current.get("nodePools", [])}
        missing = [p for p in self.pools if p not in have]
        if missing:
            raise StepError(f"node pool(s) {', '.join(missing)} missing from cluster {s.cluster.name}", fix)
        return noop(f"cluster {s.cluster.name} has node pool(s) {', '.join(self.pools)}")



def _blind(ctx, cluster: dict) -> str | None:
    """Why the Kubernetes objects of ``cluster`` cannot be seen (None: they can)."""
    try:
        kube_for_cluster(ctx, cluster)
    except CannotObserve as exc:
        return exc.problem
    return None


class DeleteNodePool(GcloudStep):
    section = "node pools"
    invalidates = (CLUSTER_FACT,)

    def __init__(self, settings, target_name: str, *, scale_to_zero: bool, kube_steps: tuple[str, ...] = (),
                 force: bool = False, pool_name: str | None = None):
        """``pool_name``: one of the target's capacity-profile pools; default the target's own pool."""
        self.pool = pool_name or settings.target(target_name).node_pool.name
        self.key = f"gke.node-pool.{target_name}.delete" + (f".{self.pool}" if pool_name else "")
        self.scale_to_zero = scale_to_zero
        self.force = force
        self.name = f"node pool {self.pool}"
        # Never while the objects on it could not be seen (unless --force says so).
        self.needs = (Credentials.key, *kube_steps) + (() if force else (KubernetesApi.key,))

    def observe(self, ctx):
        cluster = describe_cluster(ctx)
        pool = next((p for p in (cluster or {}).get("nodePools", []) if p.get("name") == self.pool), None)
        if pool is None:
            return None
        return {"pool": pool, "blind": _blind(ctx, cluster) if self.force else None}

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        if current is None:
            return noop(f"node pool {self.pool} does not exist")
        pool = current["pool"]
        why = gcp_owner_problem(pool.get("config", {}).get("resourceLabels"), s)
        if why is not None:
            return noop(f"node pool {self.pool} is {why}: left alone")
        common = [f"--cluster={s.cluster.name}", *_location_flags(ctx)]
        blind = f" (--force: {current['blind']})" if current.get("blind") else ""
        if self.scale_to_zero:
            auto = pool.get("autoscaling") or {}
            if auto.get("enabled") and int(auto.get("minNodeCount", 0)) == 0:
                return noop(f"node pool {self.pool} already scales to zero (kept for a quick return)")
            return Plan([Change(f"scale node pool {self.pool} to zero (kept){blind}", "update",
                                timeout=OPERATION_TIMEOUT_S,
                                argv=gcloud.argv(ctx, "container", "node-pools", "update", self.pool, *common,
                                                 "--enable-autoscaling", "--min-nodes=0",
                                                 f"--max-nodes={max(1, int(auto.get('maxNodeCount', 1)))}"))])
        return Plan([Change(f"delete node pool {self.pool}{blind}", "delete", timeout=OPERATION_TIMEOUT_S,
                            argv=gcloud.argv(ctx, "container", "node-pools", "delete", self.pool, *common,
                                             "--quiet"))])


class DeleteCluster(GcloudStep):
    section = "cluster"
    key = "gke.cluster.delete"
    invalidates = (CLUSTER_FACT,)

    def __init__(self, settings, *, kube_steps: tuple[str, ...] = (), force: bool = False):
        self.name = f"cluster {settings.cluster.name}"
        self.force = force
        self.needs = (Credentials.key, *kube_steps) + (() if force else (KubernetesApi.key,))

    def observe(self, ctx):
        cluster = describe_cluster(ctx)
        if cluster is None:
            return None
        return {"cluster": cluster, "blind": _blind(ctx, cluster) if self.force else None}

    def plan(self, ctx, current) -> Plan:
        s = ctx.settings
        if current is None:
            return noop(f"cluster {s.cluster.name} does not exist")
        why = gcp_owner_problem(current["cluster"].get("resourceLabels"), s)
        if why is not None:
            raise StepError(f"cluster {s.cluster.name} is {why}: refusing to delete it",
                            f"run teardown without --delete-cluster to remove only what environment {s.env_name} "
                            f"created in it; delete the cluster yourself if you mean it: gcloud container clusters "
                            f"delete {s.cluster.name} --location={s.cluster_location}")
        change = Change(f"delete cluster {s.cluster.name}", "delete", timeout=OPERATION_TIMEOUT_S,
                        argv=gcloud.argv(ctx, "container", "clusters", "delete", s.cluster.name,
                                         *_location_flags(ctx), "--quiet"))
        if current.get("blind"):
            change.summary += f" (--force: {current['blind']})"
            change.detail = [f"may be left behind: {MAY_BE_ORPHANED}"]
        return Plan([change])
