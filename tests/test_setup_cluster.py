"""setup-cluster with the real gcloud CLI against the loopback GKE / Service Usage / RM emulator."""

from __future__ import annotations

import json

from tests.conftest import run_inv

P, L, C = "test-project", "us-central1", "gptoss"
APIS_MISSING = ("sts.googleapis.com",)


def setup(env, *args):
    return run_inv(["setup-cluster", *args], env)


def bodies(emu, method, pattern):
    return [r.body for r in emu.find_requests(method, pattern)]


def converge(emu, env, *args):
    proc = setup(env, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_first_run_creates_what_is_missing_second_run_changes_nothing(gcloud_world, tmp_path):
    emu, env = gcloud_world
    report = tmp_path / "first.json"
    proc = converge(emu, env, f"--report={report}")
    out = proc.stdout
    # Image streaming is on by default: its API is enabled with the rest, in the same call.
    assert "changed: enable sts.googleapis.com, containerfilesystem.googleapis.com" in out
    [enable] = bodies(emu, "POST", r"/services:batchEnable$")
    assert enable["serviceIds"] == ["sts.googleapis.com", "containerfilesystem.googleapis.com"]
    assert "changed: create regional cluster gptoss in us-central1" in out
    assert "changed: create node pool l4-gptoss" in out and "changed: create node pool ironwood-gptoss" in out
    # gcloud writes the kubeconfig context while creating the cluster: nothing left to do after.
    assert "ok: context gke_test-project_us-central1_gptoss in" in out
    assert "RECAP ok=2 changed=4 skipped=0 failed=0" in out

    [create] = bodies(emu, "POST", r"/clusters$")
    cluster = create["cluster"]
    assert cluster["workloadIdentityConfig"]["workloadPool"] == "test-project.svc.id.goog"
    addons = cluster["addonsConfig"]
    assert addons["gcsFuseCsiDriverConfig"]["enabled"] is True
    assert not addons.get("horizontalPodAutoscaling", {}).get("disabled")  # the Ironwood tutorial's --addons disabled HPA
    assert not addons.get("httpLoadBalancing", {}).get("disabled")
    assert cluster["networkConfig"]["gatewayApiConfig"]["channel"] == "CHANNEL_STANDARD"

    pools = {b["nodePool"]["name"]: b["nodePool"] for b in bodies(emu, "POST", r"/nodePools$")}
    l4, tpu = pools["l4-gptoss"], pools["ironwood-gptoss"]
    assert l4["config"]["machineType"] == "g2-standard-4"
    assert l4["config"]["accelerators"][0]["acceleratorType"] == "nvidia-l4"
    assert l4["config"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}]
    assert l4["autoscaling"]["enabled"] and l4["autoscaling"].get("maxNodeCount") == 1
    assert l4["locations"] == ["us-central1-a"]
    assert tpu["config"]["machineType"] == "tpu7x-standard-4t"
    assert "placementPolicy" not in tpu  # a single-host slice: the machine type is the shape
    # The rapid channel's default version for new pools is new enough: no explicit version.
    assert "version" not in tpu
    assert ("node version 1.34.1-gke.1829001 (the RAPID channel's default in get-server-config), "
            ">= 1.34.0-gke.2201000: no --node-version") in out
    assert tpu["config"]["workloadMetadataConfig"]["mode"] == "GKE_METADATA"
    assert "reservationAffinity" not in tpu["config"]  # no reservation configured → no affinity (errata)

    emu.clear_log()
    second = converge(emu, env)
    assert emu.mutating_requests() == []
    assert "RECAP ok=6 changed=0 skipped=0 failed=0" in second.stdout
    assert "ok: cluster gptoss already has workload identity" in second.stdout
    doc = json.loads(report.read_text())
    assert [s["status"] for s in doc["steps"]].count("changed") == 4
    assert "ya29" not in report.read_text() and "ya29" not in out  # gcloud's token never shown


def test_dry_run_sends_no_write_and_prints_exact_commands(gcloud_world):
    emu, env = gcloud_world
    proc = converge(emu, env, "--dry-run")
    assert emu.mutating_requests() == []
    assert ("would run: gcloud container clusters create gptoss --location=us-central1 "
            "--workload-pool=test-project.svc.id.goog --release-channel=rapid") in proc.stdout
    assert ("would run: gcloud services enable sts.googleapis.com containerfilesystem.googleapis.com "
            "--project=test-project") in proc.stdout
    assert "[not observed" not in proc.stdout  # everything could be read


def test_each_drifted_setting_gets_exactly_one_update(gcloud_world):
    emu, env = gcloud_world
    converge(emu, env, "--target=l4")
    with emu.lock:
        c = emu.state.clusters[(P, L, C)]
        c["workloadIdentityConfig"] = {}
        c["addonsConfig"]["horizontalPodAutoscaling"] = {"disabled": True}
        c["networkConfig"]["gatewayApiConfig"] = {}
        np_ = emu.state.nodepools[(P, L, C, "l4-gptoss")]
        np_["autoscaling"]["maxNodeCount"] = 3
        np_["config"]["labels"] = {"service": "something-else", "team": "ml"}
    emu.clear_log()
    proc = converge(emu, env, "--target=l4")
    updates = [r for r in emu.mutating_requests()]
    cluster_updates = [r.body["update"] for r in updates if r.method == "PUT" and r.path.endswith(f"/clusters/{C}")]
    kinds = sorted(next(iter(u)) for u in cluster_updates)
    assert kinds == ["desiredAddonsConfig", "desiredGatewayApiConfig", "desiredNodePoolAutoscaling",
                     "desiredWorkloadIdentityConfig"]
    addons = next(u["desiredAddonsConfig"] for u in cluster_updates if "desiredAddonsConfig" in u)
    assert addons == {"horizontalPodAutoscaling": {"disabled": False}}
    [labels] = [r.body for r in updates if r.path.endswith("/nodePools/l4-gptoss")]
    assert labels["labels"]["labels"] == {"service": "gpt-oss-20b", "team": "ml"}  # others' labels kept
    assert len(updates) == 5
    assert "changed: workload pool unset → test-project.svc.id.goog" in proc.stdout
    emu.clear_log()
    converge(emu, env, "--target=l4")
    assert emu.mutating_requests() == []


def test_immutable_drift_fails_with_the_fix_and_sends_nothing(gcloud_world):
    emu, env = gcloud_world
    converge(emu, env, "--target=l4")
    with emu.lock:
        emu.state.nodepools[(P, L, C, "l4-gptoss")]["config"]["machineType"] = "g2-standard-8"
    emu.clear_log()
    proc = setup(env, "--target=l4")
    assert proc.returncode == 1
    assert "failed: node pool l4-gptoss differs in what cannot change in place: machine type is g2-standard-8, " \
           "want g2-standard-4" in proc.stdout
    assert "gcloud container node-pools delete l4-gptoss" in proc.stdout
    assert emu.mutating_requests() == []
    assert "skipped: not run: node pool l4-gptoss (l4) failed" in proc.stdout


def test_transient_errors_are_retried_and_converge(gcloud_world):
    emu, env = gcloud_world
    emu.inject("GET", r"/clusters/gptoss$", 503, times=1)  # a read (gcloud does not retry container 503)
    emu.inject("POST", r"/nodePools$", 503, times=1)  # a write
    proc = converge(emu, env, "--target=l4")
    assert proc.stdout.count("retrying in") >= 2
    assert emu.get_nodepool(P, L, C, "l4-gptoss") is not None


def test_409_race_on_create_is_observed_again_and_ok(gcloud_world):
    emu, env = gcloud_world
    converge(emu, env, "--target=l4")
    with emu.lock:
        del emu.state.nodepools[(P, L, C, "l4-gptoss")]
    # The create takes effect but its answer is lost (503); our retry then meets 409 Already exists.
    emu.inject("POST", r"/nodePools$", 503, times=1, after_processing=True)
    emu.clear_log()
    proc = converge(emu, env, "--target=l4")
    posts = emu.find_requests("POST", r"/nodePools$")
    assert len(posts) == 2  # the first (lost answer) and the retry that met 409
    assert "conflict:" in proc.stdout and "observing again" in proc.stdout
    assert "changed: create node pool l4-gptoss" in proc.stdout
    assert emu.get_nodepool(P, L, C, "l4-gptoss") is not None


def test_operation_error_fails_the_step_and_stops_the_rest(gcloud_world):
    emu, env = gcloud_world
    emu.fail_operation(r"/nodePools$", "Quota 'NVIDIA_L4_GPUS' exceeded. Limit: 0.0 in region us-central1.")
    proc = setup(env, "--target=l4")
    assert proc.returncode == 1
    assert "failed:" in proc.stdout and "Quota 'NVIDIA_L4_GPUS' exceeded" in proc.stdout
    assert "skipped: not run: node pool l4-gptoss (l4) failed" in proc.stdout  # kubectl credentials


def test_old_control_plane_blocks_ironwood_pool_with_the_fix(gcloud_world):
    emu, env = gcloud_world
    emu.add_cluster(P, L, C, currentMasterVersion="1.33.5-gke.1308000", currentNodeVersion="1.33.5-gke.1308000")
    emu.clear_log()
    proc = setup(env, "--target=ironwood")
    assert proc.returncode == 1
    assert "runs GKE 1.33.5-gke.1308000; tpu7x-standard-4t needs >= 1.34.0-gke.2201000" in proc.stdout
    assert "gcloud container clusters upgrade gptoss --master" in proc.stdout
    assert not emu.find_requests("POST", r"/nodePools$")


def test_reservation_flags_only_when_configured(gcloud_world):
    emu, env = gcloud_world
    env = {**env, "GPTOSS_TARGETS__IRONWOOD__NODE_POOL__RESERVATION": "my-tpu-res"}
    converge(emu, env, "--target=ironwood")
    [body] = bodies(emu, "POST", r"/nodePools$")
    ra = body["nodePool"]["config"]["reservationAffinity"]
    assert ra["consumeReservationType"] == "SPECIFIC_RESERVATION" and ra["values"] == ["my-tpu-res"]


# ---------------------------------------------------------------------------------------------
# An existing cluster someone else runs: only what differs changes, each in its own call.

def seed_cluster(emu, name=C, **overrides):
    """A RUNNING cluster with every cluster setting we converge already right (REGULAR channel unless
    overridden), and every API we need enabled: the steps below act only on what a test changes."""
    emu.enable_services(P, "sts.googleapis.com", "containerfilesystem.googleapis.com")
    return emu.add_cluster(P, L, name, workloadIdentityConfig={"workloadPool": f"{P}.svc.id.goog"},
                           addonsConfig={"gcsFuseCsiDriverConfig": {"enabled": True}},
                           networkConfig={"gatewayApiConfig": {"channel": "CHANNEL_STANDARD"}},
                           nodePoolDefaults={"nodeConfigDefaults": {"gcfsConfig": {"enabled": True}}}, **overrides)


CLOUD_PLATFORM = ["https://www.googleapis.com/auth/cloud-platform"]


def test_existing_cluster_keeps_its_channel_and_pool_drift_is_one_update_each(gcloud_world):
    emu, env = gcloud_world
    seed_cluster(emu)  # REGULAR, while a cluster we create would join rapid
    emu.add_nodepool(P, L, C, "l4-gptoss", locations=["us-central1-a", "us-central1-b"],
                     autoscaling={"enabled": True, "maxNodeCount": 1},
                     config={"machineType": "g2-standard-4", "oauthScopes": CLOUD_PLATFORM,
                             "labels": {"service": "gpt-oss-20b"},
                             "taints": [{"key": "team", "value": "ml", "effect": "NO_SCHEDULE"}],
                             "accelerators": [{"acceleratorType": "nvidia-l4", "acceleratorCount": "1",
                                               "gpuDriverInstallationConfig": {"gpuDriverVersion": "DEFAULT"}}]})
    emu.clear_log()
    proc = converge(emu, env, "--target=l4")
    writes = emu.mutating_requests()
    assert not [r for r in writes if "desiredReleaseChannel" in json.dumps(r.body)]  # a default never re-channels
    assert emu.get_cluster(P, L, C)["releaseChannel"] == {"channel": "REGULAR"}
    assert {r.method + " " + r.path.rsplit("/", 1)[-1] for r in writes} == {"PUT l4-gptoss"} and len(writes) == 3
    updates = [r.body for r in writes]
    taints = next(u["taints"]["taints"] for u in updates if "taints" in u)
    assert sorted(taints, key=lambda t: t["key"]) == [  # ours added, someone else's kept
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"},
        {"key": "team", "value": "ml", "effect": "NO_SCHEDULE"}]
    acc = next(u["accelerators"] for u in updates if "accelerators" in u)
    assert acc == [{"acceleratorCount": "1", "acceleratorType": "nvidia-l4",
                    "gpuDriverInstallationConfig": {"gpuDriverVersion": "LATEST"}}]
    assert next(u["locations"] for u in updates if "locations" in u) == ["us-central1-a"]
    assert ("changed: node taints: add nvidia.com/gpu=present:NoSchedule; GPU driver DEFAULT → LATEST; "
            "node locations us-central1-a,us-central1-b → us-central1-a") in proc.stdout

    emu.clear_log()
    converge(emu, env, "--target=l4")
    assert emu.mutating_requests() == []

    # A channel the user chose is applied, once.
    emu.clear_log()
    converge(emu, {**env, "GPTOSS_CLUSTER__RELEASE_CHANNEL": "rapid"}, "--target=l4")
    [put] = emu.mutating_requests()
    assert put.body["update"] == {"desiredReleaseChannel": {"channel": "RAPID"}}

    # What cannot change in place: the fix, and no write.
    with emu.lock:
        cfg = emu.state.nodepools[(P, L, C, "l4-gptoss")]["config"]
        cfg["oauthScopes"] = ["https://www.googleapis.com/auth/devstorage.read_only",
                              "https://www.googleapis.com/auth/logging.write"]
        cfg["reservationAffinity"] = {"consumeReservationType": "SPECIFIC_RESERVATION",
                                      "key": "compute.googleapis.com/reservation-name",
                                      "values": ["projects/test-project/reservations/someone-elses"]}
    emu.clear_log()
    proc = setup({**env, "GPTOSS_CLUSTER__RELEASE_CHANNEL": "rapid"}, "--target=l4")
    assert proc.returncode == 1
    assert ("the pool is bound to reservation someone-elses, but none is configured "
            "(targets.l4.node_pool.reservation)") in proc.stdout
    assert "OAuth scopes are devstorage.read_only, logging.write, want cloud-platform" in proc.stdout
    assert "gcloud container node-pools delete l4-gptoss --cluster=gptoss --location=us-central1" in proc.stdout
    assert emu.mutating_requests() == []


def test_ironwood_pool_gets_a_node_version_its_tpus_support(gcloud_world):
    emu, env = gcloud_world
    # The control plane is new enough, but the rapid channel's default for new pools is not (the
    # case Google's Ironwood guide ran into): without --node-version the pool would come up on 1.33.
    seed_cluster(emu, releaseChannel={"channel": "RAPID"}, currentMasterVersion="1.34.1-gke.1829001")
    emu.channel_versions["RAPID"] = "1.33.5-gke.1201000"
    emu.clear_log()
    dry = converge(emu, env, "--target=ironwood", "--dry-run")
    assert emu.mutating_requests() == []
    assert ("node version 1.34.1-gke.1829001 (--node-version, the control plane's): a new pool would get "
            "1.33.5-gke.1201000 (the RAPID channel's default in get-server-config), older than the "
            "1.34.0-gke.2201000 tpu7x-standard-4t needs") in dry.stdout
    assert "--node-version=1.34.1-gke.1829001" in dry.stdout

    converge(emu, env, "--target=ironwood")
    [create] = bodies(emu, "POST", r"/nodePools$")
    assert create["nodePool"]["version"] == "1.34.1-gke.1829001"
    assert "placementPolicy" not in create["nodePool"]
    assert emu.get_nodepool(P, L, C, "ironwood-gptoss")["version"] == "1.34.1-gke.1829001"

    # An existing pool below the minimum: the upgrade command, never a write (the nodes are recreated).
    with emu.lock:
        emu.state.nodepools[(P, L, C, "ironwood-gptoss")]["version"] = "1.33.5-gke.1201000"
    emu.clear_log()
    proc = setup(env, "--target=ironwood")
    assert proc.returncode == 1
    assert "node pool ironwood-gptoss runs GKE 1.33.5-gke.1201000; tpu7x-standard-4t needs >= 1.34.0-gke.2201000" \
        in proc.stdout
    assert ("gcloud container clusters upgrade gptoss --node-pool=ironwood-gptoss "
            "--cluster-version=1.34.1-gke.1829001 --location=us-central1") in proc.stdout
    assert emu.mutating_requests() == []

    # Multi-host slices: other TPU generations take --tpu-topology; Ironwood's need a workload policy.
    v6e = {**env, "GPTOSS_TARGETS__IRONWOOD__NODE_POOL__NAME": "v6e-pool",
           "GPTOSS_TARGETS__IRONWOOD__NODE_POOL__MACHINE_TYPE": "ct6e-standard-4t",
           "GPTOSS_TARGETS__IRONWOOD__NODE_POOL__TPU_TOPOLOGY": "4x4"}
    emu.clear_log()
    converge(emu, v6e, "--target=ironwood")
    [create] = bodies(emu, "POST", r"/nodePools$")
    assert create["nodePool"]["placementPolicy"] == {"tpuTopology": "4x4"}
    emu.clear_log()
    proc = setup({**env, "GPTOSS_TARGETS__IRONWOOD__NODE_POOL__NAME": "big-ironwood",
                  "GPTOSS_TARGETS__IRONWOOD__NODE_POOL__TPU_TOPOLOGY": "2x2x2"}, "--target=ironwood")
    assert proc.returncode == 1 and "is a multi-host slice: Ironwood places those with a workload policy" in proc.stdout
    assert emu.mutating_requests() == []


def test_dns_control_plane_endpoint_on_create_and_on_an_existing_cluster(gcloud_world, tmp_path):
    emu, env = gcloud_world
    dns = {**env, "GPTOSS_CLUSTER__CONTROL_PLANE": "dns", "GPTOSS_TARGETS__L4__ENABLED": "false",
           "GPTOSS_TARGETS__IRONWOOD__ENABLED": "false"}
    converge(emu, dns)
    [create] = bodies(emu, "POST", r"/clusters$")
    assert create["cluster"]["controlPlaneEndpointsConfig"] == {"dnsEndpointConfig": {"allowExternalTraffic": True}}
    endpoint = emu.get_cluster(P, L, C)["controlPlaneEndpointsConfig"]["dnsEndpointConfig"]["endpoint"]

    def kube_server(cluster):
        import yaml

        doc = yaml.safe_load((tmp_path / "kubeconfig").read_text())
        return next(c["cluster"] for c in doc["clusters"] if c["name"] == f"gke_{P}_{L}_{cluster}")

    # kubectl goes through the DNS name: a public certificate, so no CA data; no bastion, no tunnel.
    assert kube_server(C) == {"server": f"https://{endpoint}"}

    # An existing cluster whose DNS endpoint refuses user traffic: one update, then the DNS kubeconfig.
    seed_cluster(emu, name="private", endpoint="10.0.0.2")
    emu.clear_log()
    proc = converge(emu, {**dns, "GPTOSS_CLUSTER__NAME": "private"})
    [put] = emu.mutating_requests()
    assert put.body["update"] == {"desiredControlPlaneEndpointsConfig": {"dnsEndpointConfig": {
        "allowExternalTraffic": True}}}
    assert "get-credentials private --location=us-central1 --dns-endpoint" in proc.stdout
    assert kube_server("private")["server"].endswith(".us-central1.gke.goog")


def test_shared_reservation_given_as_a_path_converges(gcloud_world):
    emu, env = gcloud_world
    shared = "projects/tpu-owner-project/reservations/shared-tpu-res"
    env = {**env, "GPTOSS_TARGETS__IRONWOOD__NODE_POOL__RESERVATION": shared}
    converge(emu, env, "--target=ironwood")
    [body] = bodies(emu, "POST", r"/nodePools$")
    assert body["nodePool"]["config"]["reservationAffinity"]["values"] == [shared]
    emu.clear_log()
    proc = converge(emu, env, "--target=ironwood")  # the second run compares the whole path: nothing to do
    assert "ok: node pool ironwood-gptoss is tpu7x-standard-4t" in proc.stdout
    assert not emu.find_requests("POST", r"/nodePools") and not emu.find_requests("PUT", r"/nodePools")


def test_a_pool_bound_to_another_reservation_than_configured_fails_with_the_fix_and_sends_nothing(gcloud_world):
    """The affinity cannot change in place: a pool consuming reservation B while the settings name A
    must not be 'ok' (its nodes bill against B, or fail to come up when B runs out). Also when the
    other reservation has the same name in another project (a shared one)."""
    emu, env = gcloud_world
    env = {**env, "GPTOSS_TARGETS__IRONWOOD__NODE_POOL__RESERVATION": "tpu-res-a"}
    seed_cluster(emu, currentMasterVersion="1.34.1-gke.1829001")  # new enough for Ironwood
    key = (P, L, C, "ironwood-gptoss")
    for bound, shown in (("projects/test-project/reservations/tpu-res-b", "tpu-res-b"),
                         ("projects/tpu-owner-project/reservations/tpu-res-a",
                          "projects/tpu-owner-project/reservations/tpu-res-a")):
        with emu.lock:
            emu.state.nodepools.pop(key, None)
        emu.add_nodepool(P, L, C, "ironwood-gptoss", version="1.34.1-gke.1829001", config={
            "machineType": "tpu7x-standard-4t", "oauthScopes": CLOUD_PLATFORM,
            "reservationAffinity": {"consumeReservationType": "SPECIFIC_RESERVATION",
                                    "key": "compute.googleapis.com/reservation-name", "values": [bound]}})
        emu.clear_log()
        proc = setup(env, "--target=ironwood")
        assert proc.returncode == 1, proc.stdout
        assert ("failed: node pool ironwood-gptoss differs in what cannot change in place: "
                f"reservation is {shown}, want tpu-res-a") in proc.stdout, proc.stdout
        assert "fix: we never recreate a pool silently" in proc.stdout
        assert "gcloud container node-pools delete ironwood-gptoss --cluster=gptoss --location=us-central1" \
            in proc.stdout
        # Nothing was written: the pool still consumes the reservation it was bound to.
        assert emu.mutating_requests() == []
        assert emu.get_nodepool(*key)["config"]["reservationAffinity"]["values"] == [bound]
