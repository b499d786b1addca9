"""The spot capacity profiles of l4 (targets.l4.capacity): pools, ComputeClass, workload, teardown.

setup-cluster and teardown drive the real gcloud against the GKE emulator and the real kubernetes
client against the Kubernetes API emulator (the deploy world: its cluster's endpoint is that API)."""

from __future__ import annotations

import threading
import time

import pytest

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

    # Another environment's class (same tool, env "prod") is not ours to delete.
    w.kube.seed({"apiVersion": "cloud.google.com/v1", "kind": "ComputeClass",
                 "metadata": {"name": "prod-class", "labels": {"app.kubernetes.io/managed-by": "gptoss-gke",
                                                               "gptoss-gke/env": "prod", "gptoss-gke/target": "l4"}},
                 "spec": {"priorities": [{"spot": True}]}})
    down = w.inv("teardown", "--target=l4", "--yes", *SPOT_FALLBACK)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [c["metadata"]["name"] for c in w.kube.objects("ComputeClass")] == ["prod-class"]
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


# ---------------------------------------------------------------------------------------------
# Chaos: preemptions while a client sends requests through the Service

API_KEY = "chaos-test-key"


def _api_pools(s) -> list[dict]:
    """The profile's pools as the GKE API describes them once setup-cluster made them (the bodies the
    first test checks)."""
    from gptoss_gke.gcp.cluster import _taint
    from gptoss_gke.profiles import pools

    return [{"name": p.shape.name, "locations": s.node_locations("l4"),
             "autoscaling": {"enabled": True, "maxNodeCount": p.shape.max_nodes},
             "config": {"spot": p.spot, "labels": dict(p.shape.labels), "taints": [_taint(t) for t in p.shape.taints]}}
            for p in pools(s, "l4")]


class _Client(threading.Thread):
    """Sends requests through the Service without pause; counts the answers that are not 200."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.ok, self.failed, self.errors = port, 0, 0, []
        self.done = threading.Event()

    def run(self):
        import http.client

        while not self.done.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.errors.append(f"{resp.status} {body[:80]!r}")
            except OSError as exc:
                self.failed += 1
                self.errors.append(repr(exc))


def _spot_world(kube_emulator, *, prestop_sleep: int | None = None, spread: bool = True,
                tokens_per_second: float = 200.0):
    from gptoss_gke.k8s.computeclass import compute_class
    from gptoss_gke.k8s.manifests import render, selector
    from tests.emulators.kube.chaos import ServiceProxy, SpotCluster
    from tests.emulators.vllm import FakeVllm

    s = _settings("targets.l4.capacity=spot-with-fallback")
    target = s.target("l4")
    for obj in render(s, target, "registry.example/vllm@sha256:" + "a" * 64):
        if obj["kind"] == "Deployment" and prestop_sleep is not None:
            obj["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1] = \
                str(prestop_sleep)
        if obj["kind"] == "Deployment" and not spread:
            del obj["spec"]["template"]["spec"]["topologySpreadConstraints"]
        kube_emulator.seed(obj)
    kube_emulator.seed(compute_class(s, "l4"))

    def container():
        backend = FakeVllm(model_id="openai/gpt-oss-20b", api_key=API_KEY, tokens_per_second=tokens_per_second)
        backend.start()
        backend.wait_ready()
        return backend

    pools = _api_pools(s)
    if not spread:  # room for both replicas in the first zone
        for pool in pools:
            pool["autoscaling"]["maxNodeCount"] = 2
    cluster = SpotCluster(kube_emulator, pools, container)
    proxy = ServiceProxy(cluster, {"matchLabels": selector(target)})
    return cluster, proxy, selector(target)


def _wait(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _serving(cluster, proxy, sel, n=2):
    return lambda: len(cluster.ready_pods({"matchLabels": sel})) >= n and len(proxy._programmed) >= n


def _zone(cluster, pod_name):
    node = cluster.emu.get("Node", None, cluster.node_of(pod_name))
    return node["metadata"]["labels"]["topology.kubernetes.io/zone"]


def _run_preemptions(kube_emulator, n: int, *, prestop_sleep=None, stockout_at=None):
    cluster, proxy, sel = _spot_world(kube_emulator, prestop_sleep=prestop_sleep)
    client = None
    try:
        cluster.start()
        proxy.start()
        _wait(_serving(cluster, proxy, sel), "two replicas serving")
        first = [p["metadata"]["name"] for p in cluster.ready_pods({"matchLabels": sel})]
        assert len({_zone(cluster, p) for p in first}) == 2  # spread over two zones
        client = _Client(proxy.port)
        client.start()
        _wait(lambda: client.ok >= 20, "the client's first answers")
        for i in range(n):
            if i == stockout_at:  # spot gone everywhere: replacements come from the class's next priority
                cluster.unavailable |= {(p["name"], z) for p in cluster.pools.values() if p["config"]["spot"]
                                        for z in p["locations"]}
            victim = next(p["metadata"]["name"] for p in cluster.ready_pods({"matchLabels": sel})
                          if cluster.emu.get("Node", None, p["spec"]["nodeName"])["metadata"]["labels"]
                          .get("cloud.google.com/gke-spot") == "true")
            seen = client.ok
            cluster.preempt(cluster.node_of(victim))
            _wait(lambda v=victim: cluster.node_of(v) is None, f"preempted pod {victim} gone")
            _wait(_serving(cluster, proxy, sel), f"two replicas serving after preemption {i + 1}")
            _wait(lambda s0=seen: client.ok > s0 + 20, "answers after the replacement")
        client.done.set()
        client.join(15)
        return cluster, proxy, client
    finally:
        if client is not None:
            client.done.set()
        proxy.stop()
        cluster.stop()


def test_preemptions_under_load_never_fail_a_request_and_fall_back_when_spot_is_gone(kube_emulator):
    cluster, proxy, client = _run_preemptions(kube_emulator, 5, stockout_at=3)
    print(f"chaos: {client.ok} requests answered, {client.failed} failed, over 5 preemptions; "
          f"placements {cluster.placements}")
    assert client.failed == 0, client.errors[:5]
    assert client.ok >= 200
    assert proxy.least_endpoints >= 1  # never a moment without a Ready endpoint behind the Service
    pools = [pool for _, pool, _ in cluster.placements]
    assert pools[:5] == ["l4-gptoss-spot"] * 5  # two at start, then three replacements on spot
    assert pools[5:] == ["l4-gptoss-fallback"] * 2  # spot unavailable: the class's next priority
    last = [zone for _, _, zone in cluster.placements[-2:]]
    assert len(set(last)) == 2  # still spread over zones


def test_without_the_prestop_sleep_preemptions_fail_requests(kube_emulator):
    """The control: the same world with the container stopping at once loses requests, so the test
    above can fail."""
    _, _, client = _run_preemptions(kube_emulator, 2, prestop_sleep=0)
    assert client.failed > 0


def test_the_disruption_budget_refuses_to_evict_the_last_ready_replica(kube_emulator):
    import kubernetes

    cluster, proxy, sel = _spot_world(kube_emulator)
    try:
        cluster.start()
        proxy.start()
        _wait(_serving(cluster, proxy, sel), "two replicas serving")
        api = kubernetes.config.new_client_from_config(config_file=str(kube_emulator.kubeconfig_path), context="test")
        core = kubernetes.client.CoreV1Api(api)
        cluster.unavailable |= {(p["name"], z) for p in cluster.pools.values() for z in p["locations"]}  # no room
        first, second = [p["metadata"]["name"] for p in cluster.ready_pods({"matchLabels": sel})]

        def evict(name):
            body = kubernetes.client.V1Eviction(metadata=kubernetes.client.V1ObjectMeta(name=name, namespace=NS))
            return core.create_namespaced_pod_eviction(name, NS, body)

        evict(first)  # a drain may take one of two: the other still serves
        with pytest.raises(kubernetes.client.ApiException) as refused:
            evict(second)
        assert refused.value.status == 429 and "disruption budget" in refused.value.body
        assert second in [p["metadata"]["name"] for p in cluster.ready_pods({"matchLabels": sel})]
    finally:
        proxy.stop()
        cluster.stop()


def test_setup_cluster_and_deploy_l4_spot_with_fallback_end_to_end(deploy_world, hf_hub):
    """setup-cluster makes the pools and the class; deploy stages the weights into the bucket, applies the
    Deployment, its claim on the bucket and the budget; GKE's autoscaler (emulated) places the replicas by
    the class in two zones of the pools setup-cluster created; the rollout passes, and the smoke test too,
    from a Job's pod through the Service (the key never in the Job, its ConfigMap, its log or the output)."""
    import json

    from tests.emulators.hfhub import make_gptoss_like_repo
    from tests.emulators.kube.chaos import ServiceProxy, SpotCluster
    from tests.gcs import PROJECT_NUMBER
    from tests.registry import publish

    w = deploy_world
    w.gcp.add_project("test-project", PROJECT_NUMBER)
    sha = make_gptoss_like_repo(hf_hub, "openai/gpt-oss-20b", shard_size=1024 * 1024, n_shards=2,
                                copy_size=1024 * 1024)
    env = {"HF_ENDPOINT": hf_hub.url, "HF_TOKEN": hf_hub.token, "HF_HUB_DISABLE_TELEMETRY": "1"}
    # The smoke Job's image (the tools image, python:3.12-slim on Docker Hub) on the loopback "Docker Hub".
    publish(w.src, "library/python", "3.12-slim", w.tmp)
    sets = [*SPOT_FALLBACK, "--set", f"targets.l4.model_revision={sha}",
            "--set", f"models.stager_image={w.src.host}/library/python:3.12-slim"]
    setup = w.inv("setup-cluster", "--target=l4", *sets, env=env)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    pools = [w.gcp.get_nodepool("test-project", "us-central1", "gptoss", n) for n in ("l4-gptoss-spot", "l4-gptoss-fallback")]

    class Container:  # each replica's container: the world's vLLM (it takes the key the Secret holds)
        port = w.vllm.port

        def stop(self):
            pass

    # The on-demand profile's StatefulSet, still deployed from before the switch to spot: refused, not
    # run beside (both behind one Service, its node still billing), and nothing of the spot profile made.
    w.kube.seed({"apiVersion": "apps/v1", "kind": "StatefulSet",
                 "metadata": {"name": "gptoss-l4", "namespace": NS,
                              "labels": {"app.kubernetes.io/managed-by": "gptoss-gke", "gptoss-gke/env": "dev",
                                         "gptoss-gke/target": "l4"}},
                 "spec": {"replicas": 1, "serviceName": "gptoss-l4", "selector": {"matchLabels": {"app": "x"}},
                          "template": {"metadata": {"labels": {"app": "x"}},
                                       "spec": {"containers": [{"name": "vllm", "image": "x"}]}}}})
    blocked = w.inv("deploy", "--target=l4", *sets, env=env)
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    assert ("failed: StatefulSet gptoss/gptoss-l4 (this target's workload under another capacity profile) is "
            "still deployed") in blocked.stdout
    assert "fix: inv teardown --target=l4 --yes" in blocked.stdout
    assert w.kube.get("Deployment", NS, "gptoss-l4") is None
    assert w.kube.get("PodDisruptionBudget", NS, "gptoss-l4") is None  # refused before the first object
    assert w.kube.remove("StatefulSet", NS, "gptoss-l4")  # as teardown --target=l4 would

    cluster = SpotCluster(w.kube, pools, Container).start()
    proxy = ServiceProxy(cluster, {"matchLabels": {"app.kubernetes.io/name": "vllm",
                                                   "app.kubernetes.io/instance": "gptoss-l4"}}, service=SERVICE)
    proxy.start()
    w.kube.controllers.jobs.run_for_real("smoke-")
    report = w.tmp / "deploy.json"
    try:
        deploy = w.inv("deploy", "--target=l4", *sets, f"--report={report}", env=env)
        out = deploy.stdout
        assert deploy.returncode == 0, out + deploy.stderr
        assert "changed: create Deployment gptoss/gptoss-l4" in out
        # The pools the profile runs on wake (spot first, at the spot price), not the on-demand pool.
        assert ("waking node pools l4-gptoss-spot, l4-gptoss-fallback from 0 nodes (a g2-standard-4 node per "
                "replica, billed until the pool scales back to zero: $") in out and "per node spot)" in out
        assert "changed: create PodDisruptionBudget gptoss/gptoss-l4" in out
        # The smoke test went through the Service, 2 generations per replica, every one answered.
        assert "ok: openai/gpt-oss-20b answered through Service gptoss/gptoss-l4 (4 of 4 requests answered)" in out
        [smoke] = [st["facts"]["smoke"] for st in json.loads(report.read_text())["steps"] if "smoke" in st["facts"]]
        assert smoke["via"] == "service" and smoke["requests"] == 4 and smoke["requests_answered"] == 4
        assert len([path for _, path, pod in proxy.routed if path == "/v1/chat/completions" and pod]) == 4
        assert _smoke_leftovers(w.kube) == []  # the Job, its pod and its code are gone
        key = w.api_key()
        assert key and key not in out + deploy.stderr and key not in report.read_text()
        sent = [r for r in w.kube.requests if r.body and ("/jobs" in r.path or "/configmaps" in r.path)]
        assert any("/jobs" in r.path for r in sent) and any("/configmaps" in r.path for r in sent)
        # The Job ran the tools image mirrored into "Artifact Registry", pinned by digest.
        [image] = {r.body["spec"]["template"]["spec"]["containers"][0]["image"] for r in sent
                   if "/jobs" in r.path and (r.body.get("spec") or {}).get("template")}
        assert image.startswith(f"{w.dst.host}/test-project/gptoss/library/python@sha256:"), image
        assert "TASK [images : tools image (models.stager_image)]" in out
        assert not any(key in json.dumps(r.body) for r in sent)  # the Job and its ConfigMap never carry it
        [log] = [lines for name, _, _, lines in w.kube.kubelet._logs if name.startswith("smoke-l4-")]
        assert any('"check": "without_key", "ok": true' in ln for ln in log) and not any(key in ln for ln in log)
        # What clients see: the Service routes to both replicas, in two zones.
        assert "ok: Service gptoss/gptoss-l4 routes to 2 Ready endpoints in us-central1-" in out
        staged = {b.name for b in w.gcs.backend.client().list_blobs("test-project-models")}
        d = w.kube.get("Deployment", NS, "gptoss-l4")
        assert d["spec"]["replicas"] == 2
        assert w.kube.get("StatefulSet", NS, "gptoss-l4") is None  # the on-demand workload is not made
        zones = {zone for _, _, zone in cluster.placements}
        assert len(zones) == 2 and {pool for _, pool, _ in cluster.placements} == {"l4-gptoss-spot"}
        # The weights the pods mount came through the verified staging, without the original/ copy.
        assert any(n.endswith(".safetensors") and sha in n for n in staged)
        assert not any("/original/" in n for n in staged)
    finally:
        proxy.stop()
        cluster.stop()


def test_the_service_endpoint_check_fails_when_both_replicas_share_a_zone(kube_emulator):
    """Deploy's check of what the Service routes to: passes for the rendered Deployment, fails (with the
    zone named) when the replicas lose their zone spread."""
    from gptoss_gke.errors import StepError
    from gptoss_gke.k8s.endpoints import ServiceEndpoints
    from tests.conftest import in_process

    sets = ("targets.l4.capacity=spot-with-fallback", f"kube.kubeconfig={kube_emulator.kubeconfig_path}",
            "kube.context=test", "kube.poll_interval_s=0.05")
    for spread in (True, False):
        cluster, proxy, sel = _spot_world(kube_emulator, spread=spread)
        try:
            cluster.start()
            _wait(lambda: len(cluster.ready_pods({"matchLabels": sel})) >= 2, "two replicas ready")
            ctx, _ = in_process(_settings(*sets))
            step = ServiceEndpoints(ctx.settings, "l4")
            if spread:
                plan = step.verdict(ctx, step.probe(ctx, None))
                assert "routes to 2 Ready endpoints in us-central1-a, us-central1-b" in plan.reason
            else:
                with pytest.raises(StepError) as err:
                    step.verdict(ctx, step._read(ctx))
                assert "are all in us-central1-a: one zonal spot reclaim takes every replica" in str(err.value.problem)
        finally:
            cluster.stop()
            proxy.server.server_close()  # never started here
        for kind in ("Deployment", "ReplicaSet", "Pod", "Node"):  # a fresh workload for the next round
            for obj in kube_emulator.objects(kind, None):
                kube_emulator.remove(kind, obj["metadata"].get("namespace"), obj["metadata"]["name"])


# ---------------------------------------------------------------------------------------------
# The smoke test through the Service: a Job's pod, a client of the Service like any other

SERVICE = ("gptoss-l4", NS, 80)  # the l4 Service: its name, namespace and port (the tutorial's port 80)


def _smoke_settings(kube_emulator):
    return _settings("targets.l4.capacity=spot-with-fallback", f"kube.kubeconfig={kube_emulator.kubeconfig_path}",
                     "kube.context=test", "kube.poll_interval_s=0.05")


def _smoke_world(kube_emulator, **kw):
    """The spot world, its API-key Secret, and cluster DNS for the Service: the smoke Job's pod runs here."""
    import base64

    cluster, proxy, sel = _spot_world(kube_emulator, **kw)
    kube_emulator.seed({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": "vllm-api-key", "namespace": NS},
                        "data": {"VLLM_API_KEY": base64.b64encode(API_KEY.encode()).decode()}})
    kube_emulator.controllers.jobs.run_for_real("smoke-")
    proxy.service = SERVICE
    return cluster, proxy, sel


# The tools image as images.tools_image pins it once mirrored: the smoke Job's pod runs here whatever it names.
PINNED_TOOLS = "us-central1-docker.pkg.dev/test-project/gptoss/library/python@sha256:" + "c" * 64


def _run_smoke(settings, **kw):
    from gptoss_gke.core import Runner
    from gptoss_gke.images import TOOLS
    from gptoss_gke.serving.smoke import Smoke
    from tests.conftest import in_process

    ctx, out = in_process(settings)
    ctx.fact(f"image.{TOOLS}", lambda: PINNED_TOOLS)  # mirrored already (the end-to-end test mirrors it for real)
    step = Smoke(settings, "l4", **kw)
    [result] = Runner(ctx).run([step])
    return result, out.getvalue(), step


def _smoke_leftovers(kube_emulator) -> list[str]:
    return [f"{kind} {o['metadata']['name']}" for kind in ("Job", "ConfigMap", "Pod")
            for o in kube_emulator.objects(kind, NS) if o["metadata"]["name"].startswith("smoke-")]


def test_the_smoke_test_through_the_service_passes_during_a_preemption(kube_emulator):
    """The smoke Job's pod calls the Service by its DNS name; a replica is preempted while it sends its
    generations: every request is answered (the terminating pod is not routed to once its endpoint is gone)."""
    # 64 tokens at 40 tok/s: each generation takes ~1.6 s, so the next one starts well after the preempted
    # pod's endpoint is gone (no request is cut by the preemption: that is the other chaos test's subject).
    cluster, proxy, sel = _smoke_world(kube_emulator, tokens_per_second=40.0)
    settings = _smoke_settings(kube_emulator)
    outcome: dict = {}
    try:
        cluster.start()
        proxy.start()
        _wait(_serving(cluster, proxy, sel), "two replicas serving")
        runner = threading.Thread(target=lambda: outcome.update(zip(("result", "out", "step"), _run_smoke(settings))))
        runner.start()

        def generations():
            return [(t, pod) for t, path, pod in proxy.routed if path == "/v1/chat/completions"]

        _wait(lambda: generations() or not runner.is_alive(), "the smoke pod's first generation")
        assert generations(), outcome.get("out")
        # Preempt the replica not answering right now: the next requests must go to the other one.
        [(_, busy)] = generations()[:1]
        victim = next(p["metadata"]["name"] for p in cluster.ready_pods({"matchLabels": sel})
                      if p["metadata"]["name"] != busy)
        preempted_at = time.monotonic()
        cluster.preempt(cluster.node_of(victim))
        runner.join(120)
        assert not runner.is_alive()
    finally:
        proxy.stop()
        cluster.stop()
    r, out = outcome["result"], outcome["out"]
    assert r.status == "ok", out
    facts = r.facts["smoke"]
    assert facts["via"] == "service" and facts["requests"] == 4 and facts["requests_answered"] == 4
    assert "generations: 4 of 4 answered through Service gptoss/gptoss-l4" in out
    assert "answered through Service gptoss/gptoss-l4 (4 of 4 requests answered)" in r.reason
    # kube-proxy dropped the terminating pod; every generation after that went to the other replica.
    dropped = next(t for t, endpoints in proxy.programs if t > preempted_at and victim not in endpoints)
    after = [pod for t, pod in generations() if t > dropped]
    assert after, "no generation was sent after the preemption: it did not happen during the smoke test"
    assert victim not in after and len(generations()) == 4
    assert _smoke_leftovers(kube_emulator) == []  # the Job, its pod and its code are gone
    assert API_KEY not in out


def test_the_smoke_test_through_a_service_without_ready_endpoints_fails_with_the_fix(kube_emulator):
    cluster, proxy, sel = _smoke_world(kube_emulator)  # the cluster never scales up: no replica is Ready
    settings = _smoke_settings(kube_emulator)
    try:
        proxy.start()
        r, out, step = _run_smoke(settings, health_timeout_s=2)
    finally:
        proxy.stop()
        proxy.server.server_close()
        cluster.stop()
    assert r.status == "failed", out
    assert r.error.startswith("Service gptoss/gptoss-l4 has no Ready endpoint: nothing answers its clients"), r.error
    assert f"--- Job gptoss/{step.job}, last log lines ---" in r.error  # what the pod said
    assert "[health] failed: GET /health did not answer 200 within 2s through Service gptoss/gptoss-l4" in r.error
    assert "kubectl get pods -n gptoss -l app.kubernetes.io/instance=gptoss-l4" in r.fix
    assert _smoke_leftovers(kube_emulator) == []


def test_ctrl_c_while_following_the_smoke_job_stops_and_says_how_to_delete_it(deploy_world, kube_emulator):
    """Interrupt means stop: no new write (the Job is not deleted by the interrupted run), and the run
    names the command that deletes it. (`inv smoke` mirrors the Job's tools image first: the deploy world
    has the registries and gcloud for it.)"""
    import signal
    import subprocess

    from tests.conftest import INV, REPO
    from tests.envfiles import merged, write_env
    from tests.registry import publish

    w = deploy_world
    cluster, proxy, _ = _smoke_world(kube_emulator)  # no replica Ready: the pod keeps asking for /health
    publish(w.src, "library/python", "3.12-slim", w.tmp)
    settings = merged(w.settings, {"targets": {"l4": {"capacity": "spot-with-fallback"}},
                                   "models": {"stager_image": f"{w.src.host}/library/python:3.12-slim"}})
    env = {**w.env, "GPTOSS_ENV_DIR": write_env(w.tmp / "spot", settings)}
    proc = None
    try:
        proxy.start()
        proc = subprocess.Popen([INV, "smoke", "--target=l4"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

        def running():
            return [p for p in kube_emulator.objects("Pod", NS) if p["metadata"]["name"].startswith("smoke-l4-")
                    and (p.get("status") or {}).get("phase") == "Running"]

        _wait(lambda: running() or proc.poll() is not None, "the smoke Job's pod running", timeout=120)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proxy.stop()
        proxy.server.server_close()
        cluster.stop()
    assert proc.returncode == 130, out
    [job] = kube_emulator.objects("Job", NS)  # still there: deleting it would have been a new write
    name = job["metadata"]["name"]
    assert f"interrupted: Job gptoss/{name} stays until it ends" in out
    assert f"`kubectl -n gptoss delete job {name}` removes it now" in out
    assert not [r for r in kube_emulator.requests if r.method == "DELETE"]
