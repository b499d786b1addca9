"""The benchmark: measurement accuracy against a fake with known pacing, the three-test table and JSON,
failed requests kept out of the means, and `vllm bench serve` as a schedulable in-cluster Job."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from gptoss_gke.k8s.manifests import render
from gptoss_gke.k8s.portforward import port_forward
from gptoss_gke.serving.bench import TUTORIAL_TESTS, Bench, BenchJob, parse_bench_summary
from gptoss_gke.serving.client import Endpoint, request
from tests.conftest import run_inv
from tests.test_smoke import NAMESPACE, inv_env, make_ctx, make_world, run_steps

# How close the figures come to the server's pacing is a benchmark (bench/bench_client_accuracy.py):
# under load the scheduler's delays land in them. What is asserted here holds under any load.
SLACK_S = 0.005  # clock granularity and the server's own timer


@pytest.fixture
def world(kube_emulator, fake_vllm, tmp_path):
    return make_world(kube_emulator, fake_vllm, tmp_path)


def test_measured_figures_never_beat_the_servers_pacing_and_agree_with_each_other(world):
    delay, rate, n = 0.3, 100.0, 31
    world.fake.first_token_delay, world.fake.tokens_per_second = delay, rate
    ctx, _ = make_ctx(world.settings)
    with port_forward(ctx, world.settings.target("l4")) as port:
        r = request(Endpoint(f"http://127.0.0.1:{port}", world.key, timeout=30), "chat", "openai/gpt-oss-20b",
                    "hello", n)
    assert r.ok, r.error
    assert r.output_tokens == n and r.token_chunks == n and len(r.itl_s) == n - 1
    # The server waits `delay` before the first token and paces the rest: no measurement can be faster.
    assert r.ttft_s >= delay - SLACK_S, r.ttft_s
    assert r.latency_s >= delay + (n - 1) / rate - SLACK_S, r.latency_s
    # The derived figures are one set of timestamps seen three ways.
    assert r.tpot_s == pytest.approx(sum(r.itl_s) / (n - 1))
    assert r.mean_itl_s == pytest.approx(r.tpot_s)
    assert r.decode_tokens_per_s == pytest.approx(1 / r.tpot_s)
    assert r.tokens_per_s == pytest.approx(n / r.latency_s)
    assert r.ttft_s + sum(r.itl_s) <= r.latency_s + SLACK_S


def test_inv_bench_prints_the_three_tests_beside_the_tutorial_and_writes_json(world):
    world.fake.first_token_delay, world.fake.tokens_per_second = 0.02, 2000.0
    report = world.tmp / "bench.json"
    proc = run_inv(["bench", "--target=l4", f"--report={report}"], inv_env(world), timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:] if ln.strip() and ln.split()[0] in
            ("test", "short", "long", "parallel")}
    assert set(rows) == {"test", "short", "long", "parallel"}, out
    assert "L4 tok/s" in rows["test"] and "TTFT" in rows["test"] and "mean ITL" in rows["test"]
    assert rows["short"].rstrip().endswith("52.0    237 ms")
    assert rows["long"].rstrip().endswith("53.0   ~1.47 s")
    assert rows["parallel"].rstrip().endswith("32.0    410 ms")
    assert world.key not in out and world.key not in report.read_text()

    doc = json.loads(report.read_text())
    bench = doc["bench"]
    assert bench["target"] == "l4" and bench["model"] == "openai/gpt-oss-20b" and bench["via"] == "port-forward"
    assert [t["name"] for t in bench["tests"]] == ["short", "long", "parallel"]
    for test, spec in zip(bench["tests"], TUTORIAL_TESTS):
        assert test["max_tokens"] == spec.max_tokens and test["parallel"] == spec.parallel
        assert len(test["requests"]) == spec.parallel
        assert test["tutorial_l4"] == spec.tutorial
        agg = test["aggregate"]
        assert agg["requests"] == agg["succeeded"] == spec.parallel and agg["failed"] == 0 and agg["errors"] == []
        assert agg["output_tokens"] == spec.max_tokens * spec.parallel
        for key in ("ttft_s", "mean_itl_s", "tpot_s", "tokens_per_s", "decode_tokens_per_s", "wall_s"):
            assert agg[key] > 0, key
        for r in test["requests"]:
            assert r["ok"] and r["output_tokens"] == spec.max_tokens and r["ttft_s"] > 0
    assert doc["steps"][0]["facts"]["bench"]["tests"] == bench["tests"]
    # What reached the server: the tutorial's prompts, streamed, ignore_eos so every test makes its tokens.
    bodies = [q.body for q in world.fake.completion_requests()]
    assert len(bodies) == 5 and all(b["stream"] and b["ignore_eos"] for b in bodies)
    long_prompt = bodies[1]["messages"][0]["content"]
    assert long_prompt.startswith("word word ") and long_prompt.endswith("Summarize the above.")
    assert long_prompt.count("word ") == 8000


def test_a_failed_request_is_reported_and_left_out_of_the_means(world):
    world.fake.fail_requests = 1
    parallel = TUTORIAL_TESTS[2]
    step = Bench(world.settings, "l4", tests=(parallel,))
    [r], out, report = run_steps(world, [step])
    assert r.status == "failed"
    assert r.error == "1 of 3 benchmark requests failed; the figures above leave them out"
    [test] = json.loads(report)["steps"][0]["facts"]["bench"]["tests"]
    ok = [q for q in test["requests"] if q["ok"]]
    bad = [q for q in test["requests"] if not q["ok"]]
    assert len(ok) == 2 and len(bad) == 1
    assert bad[0]["status"] == 500 and bad[0]["error"].startswith("HTTP 500: EngineCore encountered an issue")
    assert bad[0]["ttft_s"] is None and bad[0]["output_tokens"] == 0
    agg = test["aggregate"]
    assert (agg["requests"], agg["succeeded"], agg["failed"]) == (3, 2, 1)
    assert agg["errors"] == [bad[0]["error"]]
    assert agg["ttft_s"] == pytest.approx(sum(q["ttft_s"] for q in ok) / 2, abs=1e-5)
    assert agg["tokens_per_s"] == pytest.approx(sum(q["tokens_per_s"] for q in ok) / 2, abs=1e-5)
    assert agg["output_tokens"] == 2 * parallel.max_tokens
    assert "failed: parallel request" in out and "HTTP 500" in out and "(left out of the means)" in out


def test_bench_dry_run_shows_the_plan_and_sends_nothing(world):
    [r], out, _ = run_steps(world, [Bench(world.settings, "l4")], dry_run=True)
    assert r.status == "ok" and r.reason.startswith("would run 3 benchmark tests through a port-forward")
    assert r.dry_run
    assert "long: ~8,000-token prompt → 200 tokens" in out and "parallel: 3 parallel requests" in out
    assert world.fake.requests == []


# ---- in-cluster: vllm bench serve as a Job ---------------------------------------------------------------

SERVER_IMAGE = "us-central1-docker.pkg.dev/test-project/gptoss/vllm-openai@sha256:" + "b" * 64
BENCH_LOG = """\
INFO 12-01 10:00:00 [serve.py:100] Starting initial single prompt test run...
Traffic request rate: inf
Maximum request concurrency: 3
============ Serving Benchmark Result ============
Successful requests:                     30
Maximum request concurrency:             3
Benchmark duration (s):                  301.52
Total input tokens:                      30720
Total generated tokens:                  15000
Request throughput (req/s):              0.10
Output token throughput (tok/s):         49.75
Total Token throughput (tok/s):          151.63
---------------Time to First Token----------------
Mean TTFT (ms):                          412.33
Median TTFT (ms):                        401.12
P99 TTFT (ms):                           655.20
-----Time per Output Token (excl. 1st token)------
Mean TPOT (ms):                          19.35
Median TPOT (ms):                        19.30
P99 TPOT (ms):                           20.10
---------------Inter-token Latency----------------
Mean ITL (ms):                           19.35
Median ITL (ms):                         19.01
P99 ITL (ms):                            25.70
==================================================
"""


def seed_server(world):
    """The l4 StatefulSet and Service as deploy leaves them (rendered from the real manifests)."""
    target = world.settings.target("l4")
    for obj in render(world.settings, target, SERVER_IMAGE):
        if obj["kind"] in ("StatefulSet", "Service"):
            world.emu.seed(obj)


def test_parse_bench_summary_reads_every_figure():
    summary = parse_bench_summary(BENCH_LOG)
    assert summary["successful_requests"] == 30
    assert summary["output_token_throughput_tok_s"] == 49.75
    assert summary["mean_ttft_ms"] == 412.33 and summary["p99_itl_ms"] == 25.7
    assert summary["request_throughput_req_s"] == 0.1
    assert "traffic_request_rate" not in summary  # only the result block counts
    assert parse_bench_summary("Traceback (most recent call last):\n  ...") == {}


def test_in_cluster_job_is_schedulable_uses_the_server_image_and_reads_the_summary(world):
    seed_server(world)
    world.emu.set_logs("gptoss-l4-bench", BENCH_LOG, container="bench")
    step = BenchJob(world.settings, "l4", num_prompts=30, concurrency=3)
    [r], out, report = run_steps(world, [step])
    assert r.status == "changed", out
    job = world.emu.get("Job", NAMESPACE, "gptoss-l4-bench")
    spec = job["spec"]["template"]["spec"]
    kubernetes_validate.validate(step._job_body, "1.34.0", strict=True)
    assert "nodeSelector" not in spec and "tolerations" not in spec and "affinity" not in spec
    [c] = spec["containers"]
    assert c["image"] == SERVER_IMAGE
    assert c["command"] == ["vllm"] and c["args"][:2] == ["bench", "serve"]
    assert "--base-url=http://gptoss-l4.gptoss.svc:80" in c["args"]
    assert "--model=openai/gpt-oss-20b" in c["args"] and "--num-prompts=30" in c["args"]
    assert "--dataset-name=random" in c["args"] and "--max-concurrency=3" in c["args"]
    assert not any(k.endswith("gpu") or k.endswith("tpu") for k in c["resources"]["requests"])
    key_env = next(e for e in c["env"] if e["name"] == "OPENAI_API_KEY")
    assert key_env["valueFrom"]["secretKeyRef"] == {"name": "vllm-api-key", "key": "VLLM_API_KEY"}
    assert not any(world.key in a for a in c["args"])
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gptoss-gke"
    facts = json.loads(report)["steps"][0]["facts"]["bench"]
    assert facts["via"] == "in-cluster Job" and facts["summary"]["mean_tpot_ms"] == 19.35
    assert "output_token_throughput_tok_s: 49.75" in out


def test_in_cluster_job_that_fails_shows_its_log_tail(world):
    seed_server(world)
    world.emu.script_pods("gptoss-l4-bench", "failed")
    world.emu.set_logs("gptoss-l4-bench", ["Traceback (most recent call last):",
                                           "OSError: can't load tokenizer for 'openai/gpt-oss-20b'"],
                       container="bench")
    [r], _, _ = run_steps(world, [BenchJob(world.settings, "l4")])
    assert r.status == "failed"
    assert r.error.startswith("Job gptoss/gptoss-l4-bench failed")
    assert "can't load tokenizer" in r.error
    assert "kubectl logs -n gptoss job/gptoss-l4-bench" in r.fix


def test_in_cluster_bench_without_a_deployment_says_deploy_first(world):
    [r], _, _ = run_steps(world, [BenchJob(world.settings, "l4")])
    assert r.status == "failed"
    assert r.error == ("StatefulSet gptoss-l4 and Service gptoss-l4 not found in namespace gptoss: nothing to "
                       "benchmark")
    assert world.emu.get("Job", NAMESPACE, "gptoss-l4-bench") is None
