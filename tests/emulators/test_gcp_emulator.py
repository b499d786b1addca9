"""The GCP emulator, checked with the real gcloud 528 CLI (and a few direct HTTP calls).

Every gcloud process gets CLOUDSDK_API_ENDPOINT_OVERRIDES_* pointing at the emulator on 127.0.0.1
(see ``gcloud_env``); ``test_gcloud_connects_only_to_loopback`` proves with strace that nothing else
is contacted.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from .gcp import GcpEmulator, gcloud_env

P = "test-project"
L = "us-central1"
ZONE = "us-central1-a"
GCLOUD = shutil.which("gcloud") or "/usr/bin/gcloud"

needs_gcloud = pytest.mark.usefixtures("gcloud_installed")


@pytest.fixture
def gcloud_installed():
    from tests.conftest import require_tool

    require_tool("gcloud", "install the Google Cloud CLI (Debian: apt-get install google-cloud-cli)")

LATENCIES: list[tuple[str, float]] = []


class Gcloud:
    """Runs the real gcloud against one emulator with an isolated config dir."""

    def __init__(self, emu: GcpEmulator, tmp_path: Path, project: str = P):
        self.emu = emu
        self.env = gcloud_env(emu, tmp_path, project)
        self.kubeconfig = Path(self.env["KUBECONFIG"])

    def __call__(self, *args: str, rc: int | None = 0, timeout: float = 120):
        start = time.monotonic()
        proc = subprocess.run([GCLOUD, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - start
        proc.elapsed = elapsed  # type: ignore[attr-defined]
        LATENCIES.append((" ".join(args[:3]), elapsed))
        if rc is not None and proc.returncode != rc:
            raise AssertionError(
                f"gcloud {' '.join(args)} -> rc={proc.returncode} (wanted {rc})\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n"
                f"requests: {self.emu.requests}\nunhandled: {self.emu.unhandled}")
        return proc

    def json(self, *args: str):
        return json.loads(self(*args, "--format=json").stdout)


@pytest.fixture
def gcloud(gcp_emulator, tmp_path):
    return Gcloud(gcp_emulator, tmp_path)


@pytest.fixture(scope="module", autouse=True)
def _latency_report():
    yield
    if LATENCIES:
        times = sorted(t for _, t in LATENCIES)
        fast = [t for t in times if t < 2.0]  # calls without sleeps or retries; a loaded machine may have none
        spread = f"{fast[0]:.2f}-{fast[-1]:.2f}s" if fast else "none under 2 s (a loaded machine)"
        print(f"\n[gcp emulator] {len(times)} gcloud calls, median {times[len(times) // 2]:.2f}s, "
              f"max {times[-1]:.2f}s, calls without sleeps/retries: {spread}")


def _bodies(emu, method, path_regex):
    return [r.body for r in emu.find_requests(method, path_regex)]


def _only(items):
    assert len(items) == 1, items
    return items[0]


# --------------------------------------------------------------------------- clusters
@needs_gcloud
def test_cluster_create_describe_and_kubeconfig(gcloud, gcp_emulator):
    emu = gcp_emulator
    gcloud("container", "clusters", "create", "c1", f"--location={L}",
           f"--workload-pool={P}.svc.id.goog", "--release-channel=rapid", "--gateway-api=standard",
           "--addons=GcsFuseCsiDriver,HttpLoadBalancing,HorizontalPodAutoscaling",
           "--enable-image-streaming", "--num-nodes=1")

    # What gcloud asked for: the Service Usage checks, then one create, then op + cluster reads.
    paths = [(r.method, r.path) for r in emu.requests]
    assert ("GET", f"/v1/projects/{P}/services/container.googleapis.com") in paths
    assert ("GET", f"/v1/projects/{P}/services/containerfilesystem.googleapis.com") in paths
    create = _only(_bodies(emu, "POST", rf"/v1/projects/{P}/locations/{L}/clusters$"))
    assert create["parent"] == f"projects/{P}/locations/{L}"
    spec = create["cluster"]
    assert spec["workloadIdentityConfig"] == {"workloadPool": f"{P}.svc.id.goog"}
    assert spec["releaseChannel"] == {"channel": "RAPID"}
    assert spec["networkConfig"]["gatewayApiConfig"] == {"channel": "CHANNEL_STANDARD"}
    assert spec["addonsConfig"]["gcsFuseCsiDriverConfig"] == {"enabled": True}
    assert spec["addonsConfig"]["horizontalPodAutoscaling"] == {"disabled": False}
    assert spec["addonsConfig"]["httpLoadBalancing"] == {"disabled": False}
    assert spec["nodePoolDefaults"]["nodeConfigDefaults"]["gcfsConfig"] == {"enabled": True}
    assert spec["nodePools"][0]["initialNodeCount"] == 1
    assert emu.find_requests("GET", r"/operations/operation-")

    c = gcloud.json("container", "clusters", "describe", "c1", f"--location={L}")
    assert c["status"] == "RUNNING"
    assert c["location"] == c["zone"] == L
    assert c["currentMasterVersion"] == c["currentNodeVersion"] == "1.34.1-gke.1829001"
    assert c["workloadIdentityConfig"]["workloadPool"] == f"{P}.svc.id.goog"
    assert c["addonsConfig"]["gcsFuseCsiDriverConfig"] == {"enabled": True}
    assert c["addonsConfig"]["httpLoadBalancing"] == {}          # proto3: disabled=false omitted
    assert c["addonsConfig"]["horizontalPodAutoscaling"] == {}
    assert c["networkConfig"]["gatewayApiConfig"]["channel"] == "CHANNEL_STANDARD"
    assert c["releaseChannel"]["channel"] == "RAPID"
    assert c["nodePoolDefaults"]["nodeConfigDefaults"]["gcfsConfig"]["enabled"] is True
    pool = _only(c["nodePools"])
    assert pool["name"] == "default-pool" and pool["status"] == "RUNNING"
    assert pool["config"]["workloadMetadataConfig"]["mode"] == "GKE_METADATA"
    assert base64.b64decode(c["masterAuth"]["clusterCaCertificate"]).startswith(b"-----BEGIN")

    # create also writes the kubeconfig entry (into the temp KUBECONFIG only)
    kube = yaml.safe_load(gcloud.kubeconfig.read_text())
    assert kube["current-context"] == f"gke_{P}_{L}_c1"


@needs_gcloud
def test_cluster_update_one_setting_per_call(gcloud, gcp_emulator):
    emu = gcp_emulator
    emu.add_cluster(P, L, "c1", addonsConfig={"httpLoadBalancing": {"disabled": True},
                                              "horizontalPodAutoscaling": {"disabled": True}})
    before = emu.get_cluster(P, L, "c1")
    assert "workloadIdentityConfig" not in before
    assert before["releaseChannel"]["channel"] == "REGULAR"

    # Two settings in one call: gcloud refuses before sending anything.
    emu.clear_log()
    gcloud("container", "clusters", "update", "c1", f"--location={L}",
           f"--workload-pool={P}.svc.id.goog", "--gateway-api=standard", rc=2)
    assert emu.mutating_requests() == []

    cases = [
        ([f"--workload-pool={P}.svc.id.goog"],
         {"desiredWorkloadIdentityConfig": {"workloadPool": f"{P}.svc.id.goog"}}),
        (["--update-addons=GcsFuseCsiDriver=ENABLED,HttpLoadBalancing=ENABLED,"
          "HorizontalPodAutoscaling=ENABLED"],
         {"desiredAddonsConfig": {"gcsFuseCsiDriverConfig": {"enabled": True},
                                  "horizontalPodAutoscaling": {"disabled": False},
                                  "httpLoadBalancing": {"disabled": False}}}),
        (["--gateway-api=standard"], {"desiredGatewayApiConfig": {"channel": "CHANNEL_STANDARD"}}),
        (["--enable-image-streaming"], {"desiredGcfsConfig": {"enabled": True}}),
        (["--release-channel=rapid"], {"desiredReleaseChannel": {"channel": "RAPID"}}),
    ]
    for flags, expected in cases:
        emu.clear_log()
        gcloud("container", "clusters", "update", "c1", f"--location={L}", *flags)
        put = _only(_bodies(emu, "PUT", rf"/v1/projects/{P}/locations/{L}/clusters/c1$"))
        assert put == {"name": f"projects/{P}/locations/{L}/clusters/c1", "update": expected}

    # labels go through setResourceLabels with the fingerprint read just before
    emu.clear_log()
    gcloud("container", "clusters", "update", "c1", f"--location={L}", "--update-labels=team=ml")
    body = _only(_bodies(emu, "POST", r"/clusters/c1:setResourceLabels$"))
    assert body["resourceLabels"] == {"team": "ml"} and body["labelFingerprint"]

    c = gcloud.json("container", "clusters", "describe", "c1", f"--location={L}")
    assert c["workloadIdentityConfig"]["workloadPool"] == f"{P}.svc.id.goog"
    assert c["addonsConfig"]["gcsFuseCsiDriverConfig"]["enabled"] is True
    assert not c["addonsConfig"]["httpLoadBalancing"].get("disabled")
    assert not c["addonsConfig"]["horizontalPodAutoscaling"].get("disabled")
    assert c["networkConfig"]["gatewayApiConfig"]["channel"] == "CHANNEL_STANDARD"
    assert c["nodePoolDefaults"]["nodeConfigDefaults"]["gcfsConfig"]["enabled"] is True
    assert c["nodePools"][0]["config"]["gcfsConfig"]["enabled"] is True  # applied to pools too
    assert c["releaseChannel"]["channel"] == "RAPID"
    assert c["resourceLabels"] == {"team": "ml"}
    assert c["status"] == "RUNNING"


# --------------------------------------------------------------------------- node pools
@needs_gcloud
def test_nodepool_create_l4_and_tpu(gcloud, gcp_emulator):
    emu = gcp_emulator
    emu.add_cluster(P, L, "c1", workloadIdentityConfig={"workloadPool": f"{P}.svc.id.goog"},
                    releaseChannel={"channel": "RAPID"}, currentMasterVersion="1.34.1-gke.1829001")
    gcloud("container", "node-pools", "create", "l4", "--cluster=c1", f"--location={L}",
           "--machine-type=g2-standard-4",
           "--accelerator=type=nvidia-l4,count=1,gpu-driver-version=latest",
           "--enable-autoscaling", "--min-nodes=0", "--max-nodes=1", "--num-nodes=0",
           "--node-labels=role=gpu,pool=l4", "--node-taints=nvidia.com/gpu=present:NoSchedule",
           f"--node-locations={ZONE}")
    body = _only(_bodies(emu, "POST", r"/clusters/c1/nodePools$"))
    assert body["parent"] == f"projects/{P}/locations/{L}/clusters/c1"
    spec = body["nodePool"]
    assert spec["autoscaling"] == {"enabled": True, "minNodeCount": 0, "maxNodeCount": 1}
    assert spec["initialNodeCount"] == 0 and spec["locations"] == [ZONE]
    assert spec["config"]["accelerators"] == [{
        "acceleratorCount": "1", "acceleratorType": "nvidia-l4",
        "gpuDriverInstallationConfig": {"gpuDriverVersion": "LATEST"}}]
    assert spec["config"]["taints"] == [
        {"effect": "NO_SCHEDULE", "key": "nvidia.com/gpu", "value": "present"}]

    emu.clear_log()
    gcloud("container", "node-pools", "create", "tpu", "--cluster=c1", f"--location={L}",
           "--machine-type=tpu7x-standard-4t", "--tpu-topology=2x2x1", "--num-nodes=1",
           "--workload-metadata=GKE_METADATA", "--node-locations=us-central1-c",
           "--reservation-affinity=specific", "--reservation=ironwood-res")
    spec = _only(_bodies(emu, "POST", r"/clusters/c1/nodePools$"))["nodePool"]
    assert spec["placementPolicy"] == {"tpuTopology": "2x2x1"}
    assert spec["config"]["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    assert spec["config"]["reservationAffinity"] == {
        "consumeReservationType": "SPECIFIC_RESERVATION",
        "key": "compute.googleapis.com/reservation-name", "values": ["ironwood-res"]}

    # --reservation-affinity=specific without --reservation: refused client-side, nothing sent
    emu.clear_log()
    proc = gcloud("container", "node-pools", "create", "tpu2", "--cluster=c1", f"--location={L}",
                  "--machine-type=tpu7x-standard-4t", "--tpu-topology=2x2x1", "--num-nodes=1",
                  "--reservation-affinity=specific", rc=1)
    assert "Must specify --reservation" in proc.stderr
    assert emu.mutating_requests() == []

    l4 = gcloud.json("container", "node-pools", "describe", "l4", "--cluster=c1", f"--location={L}")
    assert l4["status"] == "RUNNING" and l4["version"] == "1.34.1-gke.1829001"
    assert l4["config"]["machineType"] == "g2-standard-4"
    assert l4["config"]["labels"] == {"role": "gpu", "pool": "l4"}
    assert l4["config"]["accelerators"][0]["acceleratorType"] == "nvidia-l4"
    assert l4["autoscaling"] == {"enabled": True, "maxNodeCount": 1}  # minNodeCount 0 omitted
    assert l4["locations"] == [ZONE]
    # GKE defaults new pools of a Workload Identity cluster to GKE_METADATA
    assert l4["config"]["workloadMetadataConfig"]["mode"] == "GKE_METADATA"

    pools = gcloud.json("container", "node-pools", "list", "--cluster=c1", f"--location={L}")
    by_name = {p["name"]: p for p in pools}
    assert set(by_name) == {"default-pool", "l4", "tpu"}
    tpu = by_name["tpu"]
    assert tpu["placementPolicy"]["tpuTopology"] == "2x2x1"
    assert tpu["config"]["machineType"] == "tpu7x-standard-4t"
    assert tpu["config"]["reservationAffinity"]["values"] == ["ironwood-res"]
    assert tpu["initialNodeCount"] == 1


@needs_gcloud
def test_nodepool_update_resize_delete(gcloud, gcp_emulator):
    emu = gcp_emulator
    emu.add_cluster(P, L, "c1", node_pools=[{
        "name": "l4", "initialNodeCount": 0, "locations": [ZONE],
        "autoscaling": {"enabled": True, "minNodeCount": 0, "maxNodeCount": 1},
        "config": {"machineType": "g2-standard-4", "labels": {"role": "gpu"}}}])
    pool_path = f"/v1/projects/{P}/locations/{L}/clusters/c1/nodePools/l4"

    # autoscaling: a cluster-level PUT naming the pool
    gcloud("container", "node-pools", "update", "l4", "--cluster=c1", f"--location={L}",
           "--enable-autoscaling", "--min-nodes=0", "--max-nodes=2")
    assert _only(_bodies(emu, "PUT", r"/clusters/c1$")) == {
        "name": f"projects/{P}/locations/{L}/clusters/c1",
        "update": {"desiredNodePoolAutoscaling": {"enabled": True, "maxNodeCount": 2,
                                                  "minNodeCount": 0},
                   "desiredNodePoolId": "l4"}}

    # node labels and workload metadata: a PUT on the pool (labels replace the whole map)
    emu.clear_log()
    gcloud("container", "node-pools", "update", "l4", "--cluster=c1", f"--location={L}",
           "--node-labels=role=gpu,pool=l4")
    assert _only(_bodies(emu, "PUT", pool_path + "$")) == {
        "name": f"projects/{P}/locations/{L}/clusters/c1/nodePools/l4",
        "labels": {"labels": {"role": "gpu", "pool": "l4"}}}
    emu.clear_log()
    gcloud("container", "node-pools", "update", "l4", "--cluster=c1", f"--location={L}",
           "--workload-metadata=GKE_METADATA")
    assert _only(_bodies(emu, "PUT", pool_path + "$")) == {
        "name": f"projects/{P}/locations/{L}/clusters/c1/nodePools/l4",
        "workloadMetadataConfig": {"mode": "GKE_METADATA"}}

    # resize: setSize
    emu.clear_log()
    gcloud("container", "clusters", "resize", "c1", "--node-pool=l4", "--num-nodes=1",
           f"--location={L}")
    assert _only(_bodies(emu, "POST", pool_path + ":setSize$"))["nodeCount"] == 1

    np_ = gcloud.json("container", "node-pools", "describe", "l4", "--cluster=c1", f"--location={L}")
    assert np_["autoscaling"] == {"enabled": True, "maxNodeCount": 2}
    assert np_["config"]["labels"] == {"role": "gpu", "pool": "l4"}
    assert np_["config"]["workloadMetadataConfig"] == {"mode": "GKE_METADATA"}
    assert emu.get_cluster(P, L, "c1")["currentNodeCount"] == 1

    emu.clear_log()
    gcloud("container", "node-pools", "delete", "l4", "--cluster=c1", f"--location={L}")
    assert emu.find_requests("DELETE", pool_path + "$")
    assert emu.get_nodepool(P, L, "c1", "l4") is None
    proc = gcloud("container", "node-pools", "describe", "l4", "--cluster=c1", f"--location={L}",
                  rc=1)
    assert "404" in proc.stderr or "Not found" in proc.stderr


@needs_gcloud
def test_get_credentials_writes_temp_kubeconfig(gcloud, gcp_emulator):
    gcp_emulator.add_cluster(P, L, "c1")
    gcp_emulator.clear_log()
    gcloud("container", "clusters", "get-credentials", "c1", f"--location={L}")
    assert [(r.method, r.path) for r in gcp_emulator.requests] == [
        ("GET", f"/v1/projects/{P}/locations/{L}/clusters/c1")]
    kube = yaml.safe_load(gcloud.kubeconfig.read_text())
    ctx = f"gke_{P}_{L}_c1"
    assert kube["current-context"] == ctx
    cluster = _only(kube["clusters"])["cluster"]
    assert cluster["server"] == "https://127.0.0.1"
    assert cluster["certificate-authority-data"]
    user = _only(kube["users"])["user"]
    assert user["exec"]["command"] == "gke-gcloud-auth-plugin"


# --------------------------------------------------------------------------- other APIs
@needs_gcloud
def test_services_list_and_enable(gcloud, gcp_emulator):
    emu = gcp_emulator
    emu.services_max_page_size = 4  # force pagination: gcloud must follow nextPageToken
    names = [s["config"]["name"] for s in gcloud.json("services", "list", "--enabled")]
    assert sorted(names) == sorted(emu.enabled_services(P))
    lists = emu.find_requests("GET", rf"/v1/projects/{P}/services$")
    assert len(lists) == 3 and lists[0].query["filter"] == "state:ENABLED"
    assert lists[1].query["pageToken"] == "4"

    emu.clear_log()
    gcloud("services", "enable", "tpu.googleapis.com")
    assert emu.mutating_requests()[0][:2] == (
        "POST", f"/v1/projects/{P}/services/tpu.googleapis.com:enable")
    emu.clear_log()
    gcloud("services", "enable", "containerfilesystem.googleapis.com", "file.googleapis.com")
    req = _only(emu.mutating_requests())
    assert req.path == f"/v1/projects/{P}/services:batchEnable"
    assert req.body == {"serviceIds": ["containerfilesystem.googleapis.com", "file.googleapis.com"]}
    assert emu.find_requests("GET", r"^/v1/operations/")  # polled the Service Usage operation
    assert {"tpu.googleapis.com", "containerfilesystem.googleapis.com",
            "file.googleapis.com"} <= emu.enabled_services(P)

    proc = gcloud("services", "enable", "nonsense", rc=1)
    assert "PERMISSION_DENIED" in proc.stderr


@needs_gcloud
def test_projects_describe(gcloud, gcp_emulator):
    proj = gcloud.json("projects", "describe", P)
    assert proj["projectId"] == P and proj["lifecycleState"] == "ACTIVE"
    assert proj["projectNumber"] == gcp_emulator.state.projects[P]["projectNumber"]
    assert gcp_emulator.requests[-1].path == f"/v1/projects/{P}"
    proc = gcloud("projects", "describe", "no-such-project", rc=1)
    assert "does not have permission" in proc.stderr


@needs_gcloud
def test_artifact_registry_repositories(gcloud, gcp_emulator):
    emu = gcp_emulator
    gcloud("artifacts", "repositories", "create", "tools", "--repository-format=docker",
           f"--location={L}", "--description=Tool images", "--labels=team=ml")
    req = _only(emu.mutating_requests())
    assert req.path == f"/v1/projects/{P}/locations/{L}/repositories"
    assert req.query["repositoryId"] == "tools"
    assert req.body == {"description": "Tool images", "format": "DOCKER", "labels": {"team": "ml"},
                        "mode": "MODE_UNSPECIFIED",
                        "name": f"projects/{P}/locations/{L}/repositories/tools"}
    gcloud("artifacts", "repositories", "create", "hub", "--repository-format=docker",
           f"--location={L}", "--mode=remote-repository", "--remote-docker-repo=docker-hub")
    assert emu.mutating_requests()[-1].body["remoteRepositoryConfig"] == {
        "dockerRepository": {"publicRepository": "DOCKER_HUB"}}

    tools = gcloud.json("artifacts", "repositories", "describe", "tools", f"--location={L}")
    assert tools["format"] == "DOCKER" and tools["mode"] == "STANDARD_REPOSITORY"
    assert tools["description"] == "Tool images" and tools["labels"] == {"team": "ml"}
    hub = gcloud.json("artifacts", "repositories", "describe", "hub", f"--location={L}")
    assert hub["mode"] == "REMOTE_REPOSITORY"
    assert hub["remoteRepositoryConfig"]["dockerRepository"]["publicRepository"] == "DOCKER_HUB"

    proc = gcloud("artifacts", "repositories", "create", "tools", "--repository-format=docker",
                  f"--location={L}", rc=1)
    assert "ALREADY_EXISTS" in proc.stderr


@needs_gcloud
def test_docker_tags_and_versions_are_the_registry_behind_the_repository(gcloud, gcp_emulator, registries, tmp_path):
    from tests.registry import publish

    emu = gcp_emulator
    registry = registries("behind-the-repository")
    emu.add_repository(P, L, "tools")
    emu.serve_docker_images(P, L, "tools", registry)
    name = f"{P}/tools/team/app"
    image = f"{L}-docker.pkg.dev/{name}"
    publish(registry, name, "v1", tmp_path)
    publish(registry, name, "stable", tmp_path)  # the same image under a second tag
    publish(registry, name, "v2", tmp_path, version="2")
    v1, v2 = registry.manifest_digest(name, "v1"), registry.manifest_digest(name, "v2")
    base = f"{emu.url}v1/projects/{P}/locations/{L}/repositories/tools/packages/team%252Fapp"

    gcloud("artifacts", "docker", "tags", "delete", f"{image}:v1", "--quiet")
    assert registry.tags(name) == {"stable": v1, "v2": v2} and v1 in registry.digests(name)  # the tag alone
    proc = gcloud("artifacts", "docker", "tags", "delete", f"{image}:v1", "--quiet", rc=1)
    assert "NOT_FOUND" in proc.stderr
    # A tagged version is refused without force (gcloud lists its tags first and deletes them itself).
    req = urllib.request.Request(f"{base}/versions/{v1}", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and json.loads(err.value.read())["error"]["status"] == "FAILED_PRECONDITION"
    gcloud("artifacts", "docker", "images", "delete", f"{image}@{v1}", "--delete-tags", "--quiet")
    assert registry.tags(name) == {"v2": v2} and registry.digests(name) == {v2}
    assert registry.manifest_digest(name, "stable") is None and registry.manifest_digest(name, "v2") == v2
    assert [(r.method, r.path.rsplit("/packages/", 1)[1]) for r in emu.find_requests(None, "/packages/")] == [
        ("DELETE", "team%2Fapp/tags/v1"), ("DELETE", "team%2Fapp/tags/v1"), ("DELETE", f"team%2Fapp/versions/{v1}"),
        ("GET", "team%2Fapp/tags"), ("DELETE", "team%2Fapp/tags/stable"), ("DELETE", f"team%2Fapp/versions/{v1}")]


# --------------------------------------------------------------------------- faults
@needs_gcloud
def test_create_conflicts_exit_1(gcloud, gcp_emulator):
    gcp_emulator.add_cluster(P, L, "c1")
    proc = gcloud("container", "clusters", "create", "c1", f"--location={L}", "--num-nodes=1", rc=1)
    assert "code=409" in proc.stderr and "Already exists" in proc.stderr
    proc = gcloud("container", "node-pools", "create", "default-pool", "--cluster=c1",
                  f"--location={L}", rc=1)
    assert "code=409" in proc.stderr


@needs_gcloud
def test_operation_finishing_with_error_exits_1(gcloud, gcp_emulator):
    emu = gcp_emulator
    emu.add_cluster(P, L, "c1")
    emu.fail_operation(r"/clusters/c1/nodePools$", "Insufficient tpu7x capacity in us-central1-c",
                       code="RESOURCE_EXHAUSTED")
    proc = gcloud("container", "node-pools", "create", "tpu", "--cluster=c1", f"--location={L}",
                  "--num-nodes=1", rc=1)
    assert "finished with error: Insufficient tpu7x capacity in us-central1-c" in proc.stderr
    assert emu.get_nodepool(P, L, "c1", "tpu")["status"] == "ERROR"

    emu.fail_operation(r"/clusters/c1$", "update rejected")
    proc = gcloud("container", "clusters", "update", "c1", f"--location={L}",
                  "--gateway-api=standard", rc=1)
    assert "update rejected" in proc.stderr
    assert "gatewayApiConfig" not in emu.get_cluster(P, L, "c1")["networkConfig"]

    emu.fail_operation(r":enable$", "Billing must be enabled", code="FAILED_PRECONDITION")
    proc = gcloud("services", "enable", "tpu.googleapis.com", rc=1)
    assert "Billing must be enabled" in proc.stderr
    assert "tpu.googleapis.com" not in emu.enabled_services(P)


@needs_gcloud
def test_transient_errors_and_gcloud_retries(gcloud, gcp_emulator):
    """gcloud's apitools layer retries 429 and 5xx (5 attempts, exponential backoff), except that
    the container client deliberately does not retry 503."""
    emu = gcp_emulator
    emu.add_cluster(P, L, "c1")
    cluster_path = rf"/v1/projects/{P}/locations/{L}/clusters/c1$"

    emu.inject("GET", cluster_path, 429, times=1)
    proc = gcloud("container", "clusters", "describe", "c1", f"--location={L}", "--format=json")
    assert json.loads(proc.stdout)["name"] == "c1"
    assert len(emu.find_requests("GET", cluster_path)) == 2  # retried once, after a backoff

    emu.clear_log()
    emu.inject("GET", cluster_path, 503, times=1)
    proc = gcloud("container", "clusters", "describe", "c1", f"--location={L}", rc=1)
    assert "code=503" in proc.stderr
    assert len(emu.find_requests("GET", cluster_path)) == 1  # container: no retry on 503

    emu.clear_log()
    emu.inject("GET", rf"/v1/projects/{P}/services$", 503, times=1)
    gcloud("services", "list", "--enabled", "--format=value(config.name)")
    assert len(emu.find_requests("GET", rf"/v1/projects/{P}/services$")) == 2
    assert [status for _, status in emu.injections_fired] == [503]


@needs_gcloud
def test_running_operation_is_polled_until_done(gcloud, gcp_emulator):
    emu = gcp_emulator
    emu.add_cluster(P, L, "c1")
    emu.op_polls_before_done = 1
    proc = gcloud("container", "node-pools", "create", "p1", "--cluster=c1", f"--location={L}",
                  "--num-nodes=1")
    polls = emu.find_requests("GET", r"/operations/operation-")
    assert len(polls) == 2  # RUNNING, then (after gcloud's 5 s sleep) DONE
    assert proc.elapsed >= 4.5
    assert emu.get_nodepool(P, L, "c1", "p1")["status"] == "RUNNING"

    # --async leaves the operation running; the cluster refuses a second operation meanwhile
    gcloud("container", "clusters", "update", "c1", f"--location={L}", "--gateway-api=standard",
           "--async")
    cluster = emu.get_cluster(P, L, "c1")
    assert cluster["status"] == "RECONCILING"
    assert "gatewayApiConfig" not in cluster["networkConfig"]
    proc = gcloud("container", "clusters", "update", "c1", f"--location={L}",
                  "--release-channel=rapid", rc=1)
    assert "incompatible operation" in proc.stderr
    assert len(emu.pending_operations()) == 1
    emu.finish_operations()
    cluster = emu.get_cluster(P, L, "c1")
    assert cluster["status"] == "RUNNING"
    assert cluster["networkConfig"]["gatewayApiConfig"]["channel"] == "CHANNEL_STANDARD"


@needs_gcloud
def test_gcloud_connects_only_to_loopback(gcloud, gcp_emulator, tmp_path):
    from tests.conftest import require_tool

    require_tool("strace", "apt-get install -y strace")
    gcp_emulator.add_cluster(P, L, "c1")
    trace = tmp_path / "connect.trace"
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-e", "signal=none",
         "-o", str(trace), GCLOUD, "container", "clusters", "get-credentials", "c1",
         f"--location={L}"],
        env=gcloud.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    inet = [line for line in trace.read_text().splitlines() if "AF_INET" in line]
    assert inet, "expected at least the connection to the emulator"
    v4 = re.findall(r'inet_addr\("([\d.]+)"\)', "\n".join(inet))
    v6 = re.findall(r'inet_pton\(AF_INET6, "([^"]+)"', "\n".join(inet))
    assert set(v4) == {"127.0.0.1"}, inet
    assert not v6, inet


# --------------------------------------------------------------------------- emulator API
def _http(emu, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(emu.url + path.lstrip("/"), data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_errors_log_injection_and_concurrency():
    with GcpEmulator(op_polls_before_done=0) as emu:
        assert emu.url.startswith("http://127.0.0.1:") and emu.url.endswith("/")
        status, body = _http(emu, "GET", f"/v1/projects/{P}/locations/{L}/clusters/nope")
        assert status == 404
        assert body["error"]["status"] == "NOT_FOUND" and body["error"]["code"] == 404
        assert "nope" in body["error"]["message"]

        status, body = _http(emu, "GET", f"/v1/projects/other/locations/{L}/clusters")
        assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"

        emu.disable_services(P, "container.googleapis.com")
        status, body = _http(emu, "GET", f"/v1/projects/{P}/locations/{L}/clusters")
        assert status == 403
        assert body["error"]["details"][0]["reason"] == "SERVICE_DISABLED"
        emu.enable_services(P, "container.googleapis.com")

        emu.inject("POST", r"/clusters$", 503, times=2, body={"error": {"code": 503,
                                                                       "message": "busy"}})
        spec = {"cluster": {"name": "c9", "nodePools": [{"name": "np", "initialNodeCount": 1}]}}
        path = f"/v1/projects/{P}/locations/{ZONE}/clusters"
        assert _http(emu, "POST", path, spec)[0] == 503
        assert _http(emu, "POST", path, spec) == (503, {"error": {"code": 503, "message": "busy"}})
        status, op = _http(emu, "POST", path, spec)
        assert status == 200 and op["status"] == "DONE" and op["operationType"] == "CREATE_CLUSTER"
        assert _http(emu, "POST", path, spec)[0] == 409
        assert emu.get_cluster(P, ZONE, "c9")["locations"] == [ZONE]

        log = emu.requests
        assert [r.method for r in log[-4:]] == ["POST"] * 4
        assert log[-1].body == spec and log[-1].path == path
        method, rpath, query, rbody = log[-1]  # plain 4-tuples
        assert (method, rpath, rbody) == ("POST", path, spec)
        assert len(emu.mutating_requests()) == 4
        emu.clear_log()
        assert emu.requests == []

        # proto3 rendering: zero/false are omitted, maps keep their values
        emu.add_nodepool(P, ZONE, "c9", "auto", autoscaling={"enabled": True, "minNodeCount": 0,
                                                            "maxNodeCount": 3},
                         config={"labels": {"zero": "0"}})
        np_ = emu.get_nodepool(P, ZONE, "c9", "auto")
        assert np_["autoscaling"] == {"enabled": True, "maxNodeCount": 3}
        assert np_["config"]["labels"] == {"zero": "0"}

        # many concurrent clients
        results = []

        def worker():
            results.append(_http(emu, "GET", f"/v1/projects/{P}/locations/{ZONE}/clusters/c9")[0])

        threads = [threading.Thread(target=worker) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 24


def test_operations_state_machine_without_gcloud():
    with GcpEmulator(op_polls_before_done=2) as emu:
        emu.add_cluster(P, L, "c1")
        status, op = _http(emu, "PUT", f"/v1/projects/{P}/locations/{L}/clusters/c1",
                           {"update": {"desiredReleaseChannel": {"channel": "RAPID"}}})
        assert status == 200 and op["status"] == "RUNNING"
        op_path = f"/v1/projects/{P}/locations/{L}/operations/{op['name']}"
        assert _http(emu, "GET", op_path)[1]["status"] == "RUNNING"
        assert emu.get_cluster(P, L, "c1")["releaseChannel"]["channel"] == "REGULAR"
        assert _http(emu, "GET", op_path)[1]["status"] == "RUNNING"
        done = _http(emu, "GET", op_path)[1]
        assert done["status"] == "DONE" and "error" not in done
        assert emu.get_cluster(P, L, "c1")["releaseChannel"]["channel"] == "RAPID"

        # Service Usage: pending in the reply, operations/... polled
        status, op = _http(emu, "POST", f"/v1/projects/{P}/services:batchEnable",
                           {"serviceIds": ["tpu.googleapis.com"]})
        assert op["name"].startswith("operations/") and not op.get("done")
        for _ in range(2):
            assert not _http(emu, "GET", "/v1/" + op["name"])[1].get("done")
        done = _http(emu, "GET", "/v1/" + op["name"])[1]
        assert done["done"] and done["response"]["services"][0]["state"] == "ENABLED"

        # Artifact Registry: LRO; the repository appears when the operation is done
        emu.op_polls_before_done = 0
        emu.fail_operation(r"/repositories$", "boom", code=13)
        status, op = _http(emu, "POST", f"/v1/projects/{P}/locations/{L}/repositories?repositoryId=r1",
                           {"format": "DOCKER"})
        assert op["done"] and op["error"] == {"code": 13, "message": "boom"}
        assert emu.get_repository(P, L, "r1") is None
        status, op = _http(emu, "POST", f"/v1/projects/{P}/locations/{L}/repositories?repositoryId=r1",
                           {"format": "DOCKER"})
        assert op["done"] and op["response"]["name"].endswith("/repositories/r1")
        assert emu.get_repository(P, L, "r1")["mode"] == "STANDARD_REPOSITORY"
