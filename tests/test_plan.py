"""`inv plan` end to end: vLLM's figures, verdicts, warnings, cost, and the JSON report."""

from __future__ import annotations

import json

from tests.conftest import run_inv

# From the tutorial's startup log; tests/test_capacity.py derives the byte range by hand.
TUTORIAL_KV_BYTES = 4_481_089_536


def plan(offline_env, tmp_path, *args):
    report = tmp_path / "plan.json"
    proc = run_inv(["plan", *args, f"--report={report}"], offline_env)
    return proc, (json.loads(report.read_text()) if report.exists() else None)


def test_l4_plan_reproduces_the_tutorial_log(offline_env, tmp_path):
    proc, doc = plan(offline_env, tmp_path, "--target=l4", f"--kv-cache-memory={TUTORIAL_KV_BYTES}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["kv_cache_tokens"] == 182_336 and isinstance(doc["kv_cache_tokens"], int)
    assert round(doc["max_concurrency"], 2) == 2.68
    assert "GPU KV cache size: 182,336 tokens" in proc.stdout
    assert "$0.71/h on demand" in proc.stdout
    assert doc["plans"][0]["kv_cache_memory_estimated"] is False


def test_estimate_is_labelled(offline_env, tmp_path):
    proc, doc = plan(offline_env, tmp_path, "--target=l4")
    assert "(estimate)" in proc.stdout and doc["plans"][0]["kv_cache_memory_estimated"] is True


def test_does_not_fit_fails_with_the_length_that_would(offline_env, tmp_path):
    proc, doc = plan(offline_env, tmp_path, "--target=l4", "--kv-cache-memory=500000000", "--kv-cache-dtype=auto")
    assert proc.returncode == 1
    assert "failed: does not fit: one 128,000-token request needs" in proc.stdout
    assert "fix: lower --max-model-len to" in proc.stdout


def test_full_attention_model_from_a_config_path(offline_env, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 32,
                               "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
                               "head_dim": 128, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}))
    proc, doc = plan(offline_env, tmp_path, "--target=l4", f"--model={cfg}", "--max-model-len=8192",
                     "--kv-cache-dtype=auto", "--kv-cache-memory=4294967296")
    assert proc.returncode == 0, proc.stdout
    # 2 x 16 x 8 x 128 x 2 B = 65,536 B per block per layer; one group of 32 layers →
    # 4 GiB // 65,536 // 32 = 2,048 blocks = 32,768 tokens; 8,192 tokens = 512 blocks → 4.00x.
    assert doc["kv_cache_tokens"] == 32_768 and doc["max_concurrency"] == 4.0


def test_warns_when_max_model_len_exceeds_the_model(offline_env, tmp_path):
    proc, doc = plan(offline_env, tmp_path, "--target=l4", "--max-model-len=200000",
                     f"--kv-cache-memory={8 * TUTORIAL_KV_BYTES}")
    assert "exceeds the model's limit 131,072" in proc.stdout


def test_unknown_model_is_a_usage_error(offline_env, tmp_path):
    proc, doc = plan(offline_env, tmp_path, "--target=l4", "--model=nope/nothing")
    assert proc.returncode == 2 and "neither a catalogue model" in proc.stderr
    assert "TASK [" not in proc.stdout and doc is None  # refused before any step


def test_kv_cache_memory_in_the_units_people_write(offline_env, tmp_path):
    proc, doc = plan(offline_env, tmp_path, "--target=l4", "--kv-cache-memory=4GiB", "--max-model-len=64k")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["plans"][0]["kv_cache_memory_bytes"] == 4 * 2**30 and doc["plans"][0]["max_model_len"] == 64_000
