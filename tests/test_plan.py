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


LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096, "head_dim": 128,
            "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 8192,
            "torch_dtype": "bfloat16"}
# Parameters: 2 x 128,256 x 4,096 embeddings + 32 layers x (4,096 x 128 x (2 x 32 + 2 x 8) attention +
# 3 x 4,096 x 14,336 MLP) = 1,050,673,152 + 32 x 218,103,808 = 8,029,995,008 → x 2 B = 16,059,990,016 B.
LLAMA_8B_BYTES = 16_059_990_016


def test_full_attention_model_from_a_config_path_uses_its_own_weights(offline_env, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(LLAMA_8B))
    # 14.96 GiB of weights + 1.22 GiB overhead + 4 GiB KV = 20.18 GiB > 0.85 x 22.49 GiB = 19.12 GiB.
    proc, doc = plan(offline_env, tmp_path, "--target=l4", f"--model={cfg}", "--max-model-len=8192",
                     "--kv-cache-dtype=auto", "--kv-cache-memory=4294967296")
    assert proc.returncode == 1, proc.stdout
    assert "does not fit: weights 14.96 GiB + activations/overhead 1.22 GiB" in proc.stdout
    assert "fix: lower --kv-cache-memory to at most" in proc.stdout
    assert doc["plans"][0]["weight_bytes"] == LLAMA_8B_BYTES
    assert doc["plans"][0]["weight_source"] == "an estimate from config.json (parameters x 2 bytes)"

    proc, doc = plan(offline_env, tmp_path, "--target=l4", f"--model={cfg}", "--max-model-len=8192",
                     "--kv-cache-dtype=auto", "--kv-cache-memory=2147483648")
    assert proc.returncode == 0, proc.stdout
    # 2 x 16 x 8 x 128 x 2 B = 65,536 B per block per layer; one group of 32 layers →
    # 2 GiB // 65,536 // 32 = 1,024 blocks = 16,384 tokens; 8,192 tokens = 512 blocks → 2.00x.
    assert doc["kv_cache_tokens"] == 16_384 and doc["max_concurrency"] == 2.0

    # Beside its safetensors index, the checkpoint's own size is used instead of the estimate.
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 30 * 2**30}}))
    proc, doc = plan(offline_env, tmp_path, "--target=l4", f"--model={tmp_path}", "--kv-cache-memory=2147483648")
    assert proc.returncode == 1 and "weights 30.00 GiB (the checkpoint's size" in proc.stdout


def test_a_kv_cache_that_cannot_sit_beside_the_weights_does_not_fit(offline_env, tmp_path):
    # 13.72 GiB weights + 1.22 GiB overhead + 8 GiB = 22.94 GiB: more than the card's 0.85 x 22.49 GiB.
    proc, doc = plan(offline_env, tmp_path, "--target=l4", "--kv-cache-memory=8589934592")
    assert proc.returncode == 1
    assert ("failed: does not fit: weights 13.72 GiB + activations/overhead 1.22 GiB (measured: the L4 tutorial's "
            "startup log) + KV cache 8.00 GiB = 22.94 GiB, more than the 19.12 GiB vLLM may use") in proc.stdout
    assert "fix: lower --kv-cache-memory to at most 4,481,261,501 bytes" in proc.stdout


def test_another_catalogue_model_is_planned_with_its_own_weights(offline_env, tmp_path):
    proc, doc = plan(offline_env, tmp_path, "--target=l4", "--model=openai/gpt-oss-120b")
    assert proc.returncode == 1
    assert ("does not fit: weights 60.80 GiB (the ironwood target's figure for openai/gpt-oss-120b) + "
            "activations/overhead 1.22 GiB already exceed the 19.12 GiB") in proc.stdout


def test_ironwood_is_planned_per_tpu_device_with_its_parallelism(offline_env, tmp_path):
    proc, doc = plan(offline_env, tmp_path, "--target=ironwood")
    assert proc.returncode == 0, proc.stdout
    p = doc["plans"][0]
    # 4 chips x 192 GiB over tensor parallel 2 x data parallel 4 = 8 devices of 96 GiB; each holds half
    # the 60.8 GiB of weights; 0.86 x 96 - 30.4 - 4 (assumed overhead) = 48.16 GiB of KV cache.
    assert (p["devices"], p["tensor_parallel_size"], p["data_parallel_size"]) == (8, 2, 4)
    assert p["weight_bytes"] == int(60.8 * 2**30) // 2
    assert "KV cache 48.16 GiB (estimate) per device" in proc.stdout
    assert "assumed, not measured on Ironwood" in proc.stdout
    proc, _ = plan(offline_env, tmp_path, "--target=ironwood", f"--kv-cache-memory={60 * 2**30}")
    assert proc.returncode == 1 and "does not fit: weights 30.40 GiB (1/2 of 60.80 GiB)" in proc.stdout


def test_warns_when_max_model_len_exceeds_the_model(offline_env, tmp_path):
    proc, doc = plan(offline_env, tmp_path, "--target=l4", "--max-model-len=200000")
    assert "exceeds the model's limit 131,072" in proc.stdout


def test_unknown_model_is_a_usage_error(offline_env, tmp_path):
    proc, doc = plan(offline_env, tmp_path, "--target=l4", "--model=nope/nothing")
    assert proc.returncode == 2 and "neither a catalogue model" in proc.stderr
    assert "TASK [" not in proc.stdout and doc is None  # refused before any step


def test_kv_cache_memory_in_the_units_people_write(offline_env, tmp_path):
    proc, doc = plan(offline_env, tmp_path, "--target=l4", "--kv-cache-memory=4GiB", "--max-model-len=64k")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["plans"][0]["kv_cache_memory_bytes"] == 4 * 2**30 and doc["plans"][0]["max_model_len"] == 64_000
