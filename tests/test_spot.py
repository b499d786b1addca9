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


def test_plan_prices_every_capacity_profile_beside_the_tutorial(offline_env, tmp_path):
    import json

    from tests.conftest import run_inv

    report = tmp_path / "plan.json"
    proc = run_inv(["plan", "--target=l4", f"--report={report}", *SPOT_FALLBACK], offline_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cost = json.loads(report.read_text())["plans"][0]["cost"]
    rows = {(r["profile"], r["replicas"]): r for r in cost["profiles"]}
    # The default prices: $0.7068/h on demand, $0.2121/h spot, 730 h a month.
    assert rows[("on-demand", 1)]["monthly"] == round(0.7068 * 730, 2)
    # Two spot replicas: ~0.6x the tutorial's $506, plus what replacements are billed before they serve.
    two_spot = rows[("spot", 2)]["monthly"]
    assert 2 * 0.2121 * 730 < two_spot < 2 * 0.2121 * 730 * 1.02 and 0.6 < two_spot / 506 < 0.63
    # The fallback share is paid at on-demand prices; one replica with fallback is the "3x" option, with a gap.
    assert rows[("spot-with-fallback", 2)]["monthly"] > two_spot
    one = rows[("spot-with-fallback", 1)]
    assert one["monthly"] < 506 / 2.5 and "gap" in one["guarantee"]
    assert rows[("spot-with-fallback", 2)]["current"] and not one["current"]
    assert cost["profile_assumptions"]["fallback_share"] == 0.10
    assert "the tutorial: $506/month" in proc.stdout and "assumed: 1 preemption per spot node a day" in proc.stdout
    # Prices come from the settings.
    cheap = run_inv(["plan", "--target=l4", "--set", "prices.g2-standard-4.on_demand=1.0",
                     "--set", "prices.g2-standard-4.spot=0.1", f"--report={report}"], offline_env)
    assert cheap.returncode == 0, cheap.stdout
    rows = {(r["profile"], r["replicas"]): r for r in json.loads(report.read_text())["plans"][0]["cost"]["profiles"]}
    assert rows[("on-demand", 1)]["monthly"] == 730.0 and rows[("spot", 2)]["monthly"] < 2 * 0.1 * 730 * 1.02


# The fields of cloud.google.com/v1 ComputeClass we write, from GKE's CRD reference
# (docs: kubernetes-engine/docs/reference/crds/computeclass); kubernetes-validate ships no schema for it.
COMPUTE_CLASS_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cloud.google.com/v1"},
        "kind": {"const": "ComputeClass"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["priorities"],
            "properties": {
                "description": {"type": "string"},
                "priorities": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"nodepools": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                                   "spot": {"type": "boolean"}, "machineFamily": {"type": "string"}}}},
                "activeMigration": {"type": "object", "additionalProperties": False,
                                    "properties": {"optimizeRulePriority": {"type": "boolean"},
                                                   "ensureAllDaemonSetPodsRunning": {"type": "boolean"}}},
                "nodePoolAutoCreation": {"type": "object", "additionalProperties": False,
                                         "properties": {"enabled": {"type": "boolean"}}},
                "whenUnsatisfiable": {"enum": ["ScaleUpAnyway", "DoNotScaleUp"]},
            },
        },
    },
}


def _settings(*sets):
    from gptoss_gke.config import load_settings, parse_set
    from tests.conftest import REPO

    return load_settings("dev", environ={"GPTOSS_ENV_DIR": str(REPO / "env")},
                         overrides=parse_set(["models.bucket=test-project-models", *sets]))


def test_each_profile_renders_schema_valid_objects_and_a_valid_compute_class():
    import jsonschema
    import kubernetes_validate

    from gptoss_gke.k8s.computeclass import compute_class
    from gptoss_gke.k8s.manifests import render
    from gptoss_gke.profiles import pools

    for capacity in ("on-demand", "spot", "spot-with-fallback"):
        s = _settings(f"targets.l4.capacity={capacity}")
        objects = render(s, s.target("l4"), "registry.example/vllm@sha256:" + "a" * 64)
        for obj in objects:
            kubernetes_validate.validate(obj, "1.34.0", strict=True)
        kinds = {o["kind"]: o for o in objects}
        [names] = [[p.shape.name for p in pools(s, "l4")]]
        if capacity == "on-demand":  # the tutorial's way, unchanged: a StatefulSet on its zonal claim
            assert "StatefulSet" in kinds and "Deployment" not in kinds and "PodDisruptionBudget" not in kinds
            assert names == ["l4-gptoss"]
            continue
        jsonschema.validate(compute_class(s, "l4"), COMPUTE_CLASS_SCHEMA)
        assert names == ["l4-gptoss-spot"] + (["l4-gptoss-fallback"] if capacity == "spot-with-fallback" else [])
        assert ("activeMigration" in compute_class(s, "l4")["spec"]) == (capacity == "spot-with-fallback")
        d = kinds["Deployment"]
        pod = d["spec"]["template"]["spec"]
        assert d["spec"]["replicas"] == 2 and d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert pod["nodeSelector"] == {CLASS_KEY: "l4-gptoss"}
        assert {"key": CLASS_KEY, "operator": "Equal", "value": "l4-gptoss", "effect": "NoSchedule"} in pod["tolerations"]
        [spread] = pod["topologySpreadConstraints"]
        assert spread["topologyKey"] == "topology.kubernetes.io/zone" and spread["maxSkew"] == 1
        assert spread["labelSelector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]
        # A preempted spot node gives non-system pods 15 s: the preStop and the grace period fit inside it.
        [c] = pod["containers"]
        sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
        assert 0 < sleep < pod["terminationGracePeriodSeconds"] <= 15
        assert c["readinessProbe"]["periodSeconds"] * c["readinessProbe"]["failureThreshold"] <= 10
        # Weights from the bucket, read-only, in any zone; no zonal claim.
        mount = next(m for m in c["volumeMounts"] if m["name"] == "model-vol")
        assert mount["readOnly"] is True
        assert kinds["PersistentVolume"]["spec"]["csi"]["driver"] == "gcsfuse.csi.storage.gke.io"
        assert kinds["PersistentVolume"]["spec"]["csi"]["volumeHandle"] == "test-project-models"
        assert any(a.startswith("--model=/model-vol-mount/models/openai/gpt-oss-20b/") for a in c["args"])
        assert "volumeClaimTemplates" not in d["spec"]
        assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
        assert kinds["PodDisruptionBudget"]["spec"]["selector"] == d["spec"]["selector"]
    # One replica (the cheapest, accepting a gap): no disruption budget, which would block every drain.
    s = _settings("targets.l4.capacity=spot-with-fallback", "targets.l4.replicas=1")
    kinds = [o["kind"] for o in render(s, s.target("l4"), "img")]
    assert "PodDisruptionBudget" not in kinds and "Deployment" in kinds


def test_a_target_without_spot_manifests_refuses_a_spot_profile(offline_env):
    from tests.conftest import run_inv

    proc = run_inv(["render", "--target=ironwood", "--set", "targets.ironwood.capacity=spot"], offline_env)
    assert proc.returncode == 2
    assert "targets.ironwood.capacity" in proc.stdout + proc.stderr
