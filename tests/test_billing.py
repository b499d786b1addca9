"""Nothing starts billing without saying so: accelerator pools are created scaled to zero unless warm
capacity is asked for, every create says what a node costs (or that its price is unknown), and the
example environment sets up only the target a first-time user needs."""

from __future__ import annotations

import json

from tests.conftest import run_inv

P, L, C = "test-project", "us-central1", "gptoss"


def created_pools(emu) -> dict[str, dict]:
    return {r.body["nodePool"]["name"]: r.body["nodePool"] for r in emu.find_requests("POST", r"/nodePools$")}


def test_accelerator_pools_are_created_with_zero_nodes_and_the_plan_prices_a_node(gcloud_world, tmp_path):
    emu, env = gcloud_world
    report = tmp_path / "report.json"
    proc = run_inv(["setup-cluster", f"--report={report}"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pools = created_pools(emu)
    assert set(pools) == {"l4-gptoss", "ironwood-gptoss"}
    assert all(p.get("initialNodeCount", 0) == 0 for p in pools.values()), pools  # no TPU node billed at once
    out = proc.stdout
    assert ("changed: create node pool l4-gptoss (g2-standard-4, 1× nvidia-l4): 0 nodes now, nothing billed "
            "until a pod needs one; autoscaling up to 1 node(s), $0.71/h per node on demand") in out
    assert "price unknown for tpu7x-standard-4t: add prices.tpu7x-standard-4t.on_demand to " in out
    assert "BILLING STARTS when this pool is created" not in out  # no accelerator node at once
    assert ("BILLING STARTS when the cluster is created: its default pool runs 1× e2-standard-4 in each of the "
            "region's zones GKE picks (price unknown for e2-standard-4: add prices.e2-standard-4.on_demand to ") in out
    facts = {s["name"]: s["facts"] for s in json.loads(report.read_text())["steps"]}
    assert facts["node pool l4-gptoss (l4)"]["hourly_price_per_node"] == 0.7068
    assert facts["node pool ironwood-gptoss (ironwood)"]["nodes_at_creation"] == 0


def test_warm_capacity_is_created_only_when_asked_and_announced_with_its_cost(gcloud_world):
    emu, env = gcloud_world
    env = {**env, "GPTOSS_TARGETS__L4__NODE_POOL__MIN_NODES": "1", "GPTOSS_TARGETS__L4__NODE_POOL__MAX_NODES": "2"}
    # Without a terminal and without --yes, nothing that bills at once is created.
    refused = run_inv(["setup-cluster", "--target=l4"], env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "l4-gptoss" not in created_pools(emu)
    assert ("failed: node pool l4-gptoss not created: it starts 1 node(s) at once ($0.71/h) and that was not "
            "confirmed") in refused.stdout
    assert "fix: answer y at the prompt, pass --yes, or set targets.l4.node_pool.min_nodes" in refused.stdout

    proc = run_inv(["setup-cluster", "--target=l4", "--yes"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert created_pools(emu)["l4-gptoss"]["initialNodeCount"] == 1
    out = proc.stdout
    announce = ("BILLING STARTS when this pool is created: 1× g2-standard-4 = $0.71/h "
                "(targets.l4.node_pool.min_nodes asks for warm capacity")
    # Said before the create command ran (the plan's lines come first), not only after it.
    assert announce in out and out.index(announce) < out.index("$ gcloud container node-pools create l4-gptoss")
    assert "1 node(s) start now and bill from creation: $0.71/h ($0.71/h per node on demand); autoscaling up to 2 " \
           "($1.41/h)" in out


def test_the_example_environment_sets_up_only_the_l4_target(offline_env):
    proc = run_inv(["setup-cluster", "--dry-run"], offline_env)  # the repository's env/dev.yaml
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "targets=l4 " in proc.stdout
    assert "would run: gcloud container node-pools create l4-gptoss" in proc.stdout
    assert "ironwood" not in proc.stdout
