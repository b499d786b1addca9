"""The spot capacity profiles of l4 (targets.l4.capacity): pools, ComputeClass, workload, teardown.

setup-cluster and teardown drive the real gcloud against the GKE emulator and the real kubernetes
client against the Kubernetes API emulator (the deploy world: its cluster's endpoint is that API)."""

from __future__ import annotations

from tests.deploy_world import NS

SPOT_FALLBACK = ("--set", "targets.l4.capacity=spot-with-fallback")
CLASS_KEY = "cloud.google.com/compute-class"
ZONES = ["us-central1-a", "us-central1-b", "us-central1-c"]


def pool_bodies(w) -> dict[str, dict]:
    return {r.body["nodePool"]["name"]: r.body["nodePool"] for r in w.gcp.find_requests("POST", r"/nodePools$")}


def test_setup_cluster_creates_spot_and_fallback_pools_and_the_compute_class_teardown_removes_them(deploy_world):
    w = deploy_world
    first = w.inv("setup-cluster", "--target=l4", *SPOT_FALLBACK)
    assert first.returncode == 0, first.stdout + first.stderr
    pools = pool_bodies(w)
    assert set(pools) == {"l4-gptoss-spot", "l4-gptoss-fallback"}
    for name, spot in (("l4-gptoss-spot", True), ("l4-gptoss-fallback", False)):
        p = pools[name]
        cfg = p["config"]
        assert bool(cfg.get("spot")) is spot
        assert sorted(p["locations"]) == ZONES  # the region's L4 zones
        assert p["autoscaling"]["enabled"] and p["autoscaling"].get("minNodeCount", 0) == 0
        assert p.get("initialNodeCount", 0) == 0  # scale-to-zero: nothing billed until a pod needs a node
        assert cfg["labels"][CLASS_KEY] == "l4-gptoss"  # what GKE requires of a pool a ComputeClass names
        assert {"key": CLASS_KEY, "value": "l4-gptoss", "effect": "NO_SCHEDULE"} in cfg["taints"]
        assert cfg["accelerators"][0]["acceleratorType"] == "nvidia-l4"
    [cc] = w.kube.objects("ComputeClass")
    assert [p["nodepools"] for p in cc["spec"]["priorities"]] == [["l4-gptoss-spot"], ["l4-gptoss-fallback"]]
    assert cc["spec"]["activeMigration"] == {"optimizeRulePriority": True}
    assert cc["metadata"]["labels"]["gptoss-gke/env"] == "dev"

    w.gcp.clear_log()
    w.kube.clear_log()
    again = w.inv("setup-cluster", "--target=l4", *SPOT_FALLBACK)
    assert again.returncode == 0, again.stdout + again.stderr
    assert w.gcp.mutating_requests() == [] and w.kube.writes() == []
    assert "changed:" not in again.stdout

    down = w.inv("teardown", "--target=l4", "--yes", *SPOT_FALLBACK)
    assert down.returncode == 0, down.stdout + down.stderr
    assert w.kube.objects("ComputeClass") == []
    for name in ("l4-gptoss", "l4-gptoss-spot", "l4-gptoss-fallback"):
        assert w.gcp.get_nodepool("test-project", "us-central1", "gptoss", name) is None, name
    assert w.gcp.get_nodepool("test-project", "us-central1", "gptoss", "ironwood-gptoss") is not None  # not l4's
