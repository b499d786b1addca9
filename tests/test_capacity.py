"""KV-cache planner against vLLM 0.12.0's own arithmetic.

Every expected number below is derived by hand in the comments from vLLM 0.12.0:
  vllm/v1/kv_cache_interface.py   AttentionSpec.page_size_bytes, FullAttentionSpec /
                                  SlidingWindowSpec.max_memory_usage_bytes
  vllm/v1/core/kv_cache_utils.py  get_kv_cache_groups, _get_kv_cache_groups_uniform_page_size,
                                  get_kv_cache_config_from_groups, get_num_blocks,
                                  _report_kv_cache_config, get_max_concurrency_for_kv_cache_config
Notation: page = 2 * block_size * kv_heads * head_dim * dtype_bytes (one block, one layer);
num_blocks = mem // page // group_size; tokens = num_blocks // num_groups * block_size;
full group needs ceil(max_model_len / bs) blocks per request, a sliding group
ceil(min(window - 1 + max_num_batched_tokens, max_model_len) / bs) + 1;
concurrency = num_blocks / sum over groups.
"""

from __future__ import annotations

import pytest

from gptoss_gke.errors import ConfigError
from gptoss_gke.serving.capacity import (
    FULL,
    SLIDING,
    LayerSpec,
    ModelShape,
    catalogue_model_ids,
    estimate_kv_cache_memory,
    kv_cache_plan,
    load_catalogue_config,
)

GIB = 1 << 30

# The L4 tutorial (gpt-oss-20b on one L4, vLLM 0.12, --kv-cache-dtype fp8 --max-model-len 128000
# --max-num-batched-tokens 8128) logged:
#   Available KV cache memory: 4.17 GiB
#   GPU KV cache size: 182,336 tokens
#   Maximum concurrency for 128,000 tokens per request: 2.68x
#
# "4.17 GiB" is rounded (%.2f), i.e. anywhere in [4.165, 4.175) GiB, which alone would give
# 181,968..182,400 tokens. The token count pins the bytes down:
#   page = 2 * 16 * 8 * 64 * 1 (fp8) = 16,384 B; 12 sliding + 12 full layers -> 2 groups of 12;
#   tokens = num_blocks // 2 * 16 = 182,336  =>  num_blocks // 2 = 11,396  =>  num_blocks in
#   {22,792, 22,793};  num_blocks = mem // 16,384 // 12 = mem // 196,608
#   =>  mem in [22,792 * 196,608, 22,794 * 196,608) = [4,481,089,536, 4,481,482,752) bytes
#   = [4.17338, 4.17375) GiB, consistent with the logged "4.17 GiB".
TUTORIAL_MEM_LO = 22_792 * 196_608  # 4,481,089,536
TUTORIAL_MEM_HI = 22_794 * 196_608  # 4,481,482,752 (exclusive)
TUTORIAL_MEM = TUTORIAL_MEM_LO + 100_000  # inside the range: 100,000 < 196,608, so 22,792 blocks


@pytest.fixture(scope="module")
def oss20b() -> ModelShape:
    return ModelShape.from_hf_config(load_catalogue_config("openai/gpt-oss-20b"))


@pytest.fixture(scope="module")
def oss120b() -> ModelShape:
    return ModelShape.from_hf_config(load_catalogue_config("openai/gpt-oss-120b"))


def _tutorial(shape: ModelShape, mem: int = TUTORIAL_MEM, **kw):
    args = dict(kv_cache_dtype="fp8", max_model_len=128_000, max_num_batched_tokens=8128)
    args.update(kw)
    return kv_cache_plan(shape, kv_cache_memory_bytes=mem, **args)


# ---------------------------------------------------------------- 1. the tutorial's log lines


def test_the_l4_tutorials_figures_reproduce(oss20b):
    plan = _tutorial(oss20b)
    assert plan.page_size_bytes == 16_384
    assert (plan.num_groups, plan.group_size) == (2, 12)
    assert plan.num_blocks == 22_792  # (4,481,089,536 + 100,000) // 196,608
    assert plan.kv_cache_tokens == 182_336
    # sliding group: min(128 - 1 + 8128, 128000) = 8255 -> ceil(8255 / 16) + 1 = 516 + 1 = 517
    # full group:    ceil(128000 / 16) = 8000              -> 8517 blocks per request
    assert [g.blocks_per_request for g in plan.groups] == [517, 8000]
    assert plan.blocks_per_request == 8517
    assert plan.max_concurrency == 22_792 / 8517  # 2.67606...
    assert plan.max_concurrency_display == "2.68"
    assert plan.kv_cache_memory_display == "4.17"
    assert plan.log_lines == (
        "Available KV cache memory: 4.17 GiB",
        "GPU KV cache size: 182,336 tokens",
        "Maximum concurrency for 128,000 tokens per request: 2.68x",
    )
    # The L4 tutorial's "24,576 bytes per token" is the headline cost: 2 groups x 12 layers x 1,024 B.
    assert plan.bytes_per_token_per_layer == 2 * 8 * 64 * 1
    assert plan.bytes_per_token_by_type == {SLIDING: 12 * 1024, FULL: 12 * 1024}
    assert 24_576 <= plan.bytes_per_logged_token < 24_577
    # One 128k request reserves 8517 blocks x 16,384 B x 12 layers.
    assert plan.memory_per_request_bytes == 8517 * 16_384 * 12
    assert plan.fits


def test_tutorial_byte_range_is_exact(oss20b):
    assert _tutorial(oss20b, TUTORIAL_MEM_LO).kv_cache_tokens == 182_336
    assert _tutorial(oss20b, TUTORIAL_MEM_HI - 1).kv_cache_tokens == 182_336
    assert _tutorial(oss20b, TUTORIAL_MEM_LO - 1).kv_cache_tokens == 182_320  # 22,791 // 2 * 16
    assert _tutorial(oss20b, TUTORIAL_MEM_HI).kv_cache_tokens == 182_352  # 22,794 // 2 * 16


def test_tutorial_without_hybrid_manager_gives_the_naive_figure(oss20b):
    # --disable-hybrid-kv-cache-manager: sliding specs become full ones (unify_hybrid_kv_cache_specs)
    # -> one group of 24 layers; num_blocks = mem // 16,384 // 24 = 11,396; tokens 11,396 * 16 =
    # 182,336 (same headline); a request needs ceil(128000/16) = 8000 blocks -> 11,396 / 8000 =
    # 1.4245 -> "1.42": the L4 tutorial's "naive" ratio, which vLLM's hybrid manager avoids.
    plan = _tutorial(oss20b, hybrid_kv_cache_manager=False)
    assert (plan.num_groups, plan.group_size, plan.num_blocks) == (1, 24, 11_396)
    assert plan.kv_cache_tokens == 182_336
    assert plan.max_concurrency == 11_396 / 8000
    assert plan.max_concurrency_display == "1.42"


# ---------------------------------------------------------------- 2. hand-derived cases


def test_full_attention_llama_style():
    # Llama-3.1-8B-like: 32 layers, 8 KV heads, head_dim 128, bf16 (auto, 2 B).
    # page = 2 * 16 * 8 * 128 * 2 = 65,536 B. All specs identical -> one group of 32 layers.
    # mem 18 GiB = 19,327,352,832 B: // 65,536 = 294,912; // 32 = 9,216 blocks.
    # tokens = 9,216 // 1 * 16 = 147,456.
    # max_model_len 100,000: ceil(100000 / 16) = 6,250 blocks; 9,216 / 6,250 = 1.47456 -> "1.47".
    # needed at startup: 32 * 6,250 * 65,536 = 13,107,200,000 B <= 18 GiB -> starts.
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 32,
        "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    }
    shape = ModelShape.from_hf_config(config)
    assert shape.head_dim == 128  # hidden_size // num_attention_heads
    assert shape.num_full_layers == 32 and not shape.is_hybrid
    assert shape.derived_max_model_len == 131072  # llama3 rope type does not scale
    plan = kv_cache_plan(shape, kv_cache_memory_bytes=18 * GIB, max_model_len=100_000,
                         max_num_batched_tokens=8192)
    assert plan.page_size_bytes == 65_536
    assert (plan.num_groups, plan.group_size, plan.num_blocks) == (1, 32, 9_216)
    assert plan.kv_cache_tokens == 147_456
    assert plan.blocks_per_request == 6_250
    assert plan.max_concurrency == 1.47456
    assert plan.max_concurrency_display == "1.47"
    assert plan.required_memory_bytes == 13_107_200_000 and plan.fits
    # max_num_batched_tokens does not matter without sliding layers.
    other = kv_cache_plan(shape, kv_cache_memory_bytes=18 * GIB, max_model_len=100_000,
                          max_num_batched_tokens=512)
    assert other.max_concurrency == plan.max_concurrency


def test_gpt_oss_120b_bf16_default_length(oss120b):
    # 36 layers: 18 sliding(128) + 18 full -> group_size 18, 2 groups. kv dtype auto = bf16.
    # page = 2 * 16 * 8 * 64 * 2 = 32,768 B. mem 8 GiB = 8,589,934,592 B:
    # // 32,768 = 262,144; // 18 = 14,563 blocks (18 * 14,563 = 262,134).
    # tokens = 14,563 // 2 * 16 = 7,281 * 16 = 116,496.
    # max_model_len derived: yarn, 4096 * 32 = 131,072.
    # sliding: min(127 + 8192, 131072) = 8,319 -> ceil(8319/16) + 1 = 520 + 1 = 521
    # full:    ceil(131072 / 16) = 8,192                      -> 8,713 blocks per request
    # concurrency 14,563 / 8,713 = 1.67141... -> "1.67"
    # startup check: 18 * (521 + 8192) * 32,768 = 5,139,136,512 B <= 8 GiB.
    plan = kv_cache_plan(oss120b, kv_cache_memory_bytes=8 * GIB, max_num_batched_tokens=8192)
    assert plan.max_model_len == 131_072
    assert plan.page_size_bytes == 32_768
    assert (plan.num_groups, plan.group_size, plan.num_blocks) == (2, 18, 14_563)
    assert plan.kv_cache_tokens == 116_496
    assert [g.blocks_per_request for g in plan.groups] == [521, 8192]
    assert plan.max_concurrency == 14_563 / 8_713
    assert plan.max_concurrency_display == "1.67"
    assert plan.required_memory_bytes == 5_139_136_512 and plan.fits


def test_gpt_oss_120b_tensor_parallel_halves_kv_heads(oss120b):
    # TP=2: 8 // 2 = 4 KV heads per rank; fp8 page = 2 * 16 * 4 * 64 * 1 = 8,192 B.
    # mem 8 GiB // 8,192 = 1,048,576; // 18 = 58,254 blocks; tokens = 29,127 * 16 = 466,032.
    # concurrency 58,254 / 8,713 = 6.6859... -> "6.69".
    plan = kv_cache_plan(oss120b, kv_cache_memory_bytes=8 * GIB, max_num_batched_tokens=8192,
                         kv_cache_dtype="fp8", tensor_parallel_size=2)
    assert plan.kv_heads_per_rank == 4 and plan.page_size_bytes == 8_192
    assert plan.num_blocks == 58_254
    assert plan.kv_cache_tokens == 466_032
    assert plan.max_concurrency_display == "6.69"


@pytest.mark.parametrize(
    ("batched", "sliding_blocks", "display"),
    [
        # min(127 + 2048, 128000) = 2,175 -> ceil(2175/16) = 136, +1 = 137; 8,137 total;
        # 22,792 / 8,137 = 2.8010 -> "2.80"
        (2048, 137, "2.80"),
        # the tutorial: 8,255 -> 516 + 1 = 517; 8,517 -> "2.68"
        (8128, 517, "2.68"),
        # min(127 + 16384, 128000) = 16,511 -> ceil = 1,032, +1 = 1,033; 9,033;
        # 22,792 / 9,033 = 2.5232 -> "2.52"
        (16384, 1033, "2.52"),
    ],
)
def test_hybrid_concurrency_depends_on_max_num_batched_tokens(oss20b, batched, sliding_blocks,
                                                               display):
    plan = _tutorial(oss20b, max_num_batched_tokens=batched)
    assert plan.kv_cache_tokens == 182_336  # the headline never moves
    assert plan.groups[0].attention == SLIDING
    assert plan.groups[0].blocks_per_request == sliding_blocks
    assert plan.max_concurrency == 22_792 / (sliding_blocks + 8000)
    assert plan.max_concurrency_display == display


def test_all_sliding_mistral_style():
    # Mistral-7B-v0.1-like: sliding_window 4096 and no layer_types -> CacheConfig.sliding_window
    # applies to all 32 layers -> one uniform sliding group. page 65,536 B (as Llama above),
    # mem 18 GiB -> 9,216 blocks, 147,456 tokens.
    # per request: min(4095 + 2048, 32768) = 6,143 -> ceil(6143/16) = 384, +1 = 385 blocks;
    # 9,216 / 385 = 23.9377 -> "23.94".
    config = {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral",
        "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
        "num_key_value_heads": 8, "sliding_window": 4096, "max_position_embeddings": 32768,
    }
    shape = ModelShape.from_hf_config(config)
    assert shape.num_sliding_layers == 32 and not shape.is_hybrid
    plan = kv_cache_plan(shape, kv_cache_memory_bytes=18 * GIB, max_model_len=32_768,
                         max_num_batched_tokens=2048)
    assert (plan.num_groups, plan.num_blocks, plan.kv_cache_tokens) == (1, 9_216, 147_456)
    assert plan.blocks_per_request == 385
    assert plan.max_concurrency_display == "23.94"


def test_five_to_one_hybrid_pads_groups():
    # Gemma-3-1B-like geometry: 26 layers, every 6th full (5, 11, 17, 23), 22 sliding(512);
    # 1 KV head, head_dim 256, bf16 -> page = 2 * 16 * 1 * 256 * 2 = 16,384 B.
    # group_size = min(22, 4) = 4 (22 >= 4 * 1.25). Sliding: ceil(22/4) = 6 groups, layer list
    # [i::6] -> sizes 4,4,4,4,3,3 (2 padding layers); full: 1 group of 4 -> 7 groups.
    # mem 1 GiB // 16,384 = 65,536; // 4 = 16,384 blocks; tokens = 16,384 // 7 * 16 = 37,440.
    # per request: sliding min(511 + 8192, 32768) = 8,703 -> 544 + 1 = 545 (x6); full 2,048;
    # 6 * 545 + 2048 = 5,318; 16,384 / 5,318 = 3.0809 -> "3.08".
    layers = tuple(
        LayerSpec(i, FULL) if (i + 1) % 6 == 0 else LayerSpec(i, SLIDING, 512) for i in range(26)
    )
    plan = kv_cache_plan(ModelShape(layers, 1, 256), kv_cache_memory_bytes=GIB,
                         max_model_len=32_768, max_num_batched_tokens=8192)
    assert (plan.group_size, plan.num_groups) == (4, 7)
    assert [len(g.layer_indices) for g in plan.groups] == [4, 4, 4, 4, 3, 3, 4]
    assert plan.groups[0].layer_indices == (0, 7, 14, 21)
    assert sum(g.padding_layers for g in plan.groups) == 2
    assert plan.groups[-1].layer_indices == (5, 11, 17, 23)
    assert (plan.num_blocks, plan.kv_cache_tokens) == (16_384, 37_440)
    assert plan.blocks_per_request == 5_318
    assert plan.max_concurrency_display == "3.08"


def test_twelve_plus_thirteen_uses_the_larger_group(oss20b):
    # 12 sliding + 13 full (gpt-oss-20b + one extra full layer): 13 < 12 * 1.25 -> group_size 13,
    # 2 groups, the sliding one padded by 1. num_blocks = mem // page // 13.
    layers = oss20b.layers + (LayerSpec(24, FULL),)
    plan = _tutorial(ModelShape(layers, 8, 64))
    assert (plan.group_size, plan.num_groups) == (13, 2)
    assert [g.padding_layers for g in plan.groups] == [1, 0]
    assert plan.num_blocks == TUTORIAL_MEM // 16_384 // 13


def test_not_enough_memory_is_flagged(oss20b):
    # needed = 12 * (517 + 8000) * 16,384 = 1,674,510,336 B > 1 GiB -> vLLM would refuse to start.
    # Largest length: 12 * 16,384 * (517 + ceil(L/16)) <= 1 GiB -> ceil(L/16) <= 4,944 -> 79,104.
    plan = _tutorial(oss20b, GIB)
    assert plan.required_memory_bytes == 1_674_510_336
    assert not plan.fits
    assert plan.estimated_max_model_len == 79_104
    assert any("refuses to start" in line for line in plan.explanation)


def test_block_size_and_platform_defaults(oss20b):
    assert _tutorial(oss20b).block_size == 16
    assert _tutorial(oss20b, platform="rocm").block_size == 16
    assert _tutorial(oss20b, platform="xpu").block_size == 64
    assert _tutorial(oss20b, platform="cpu").block_size == 128
    # block 32: page 32,768; mem // 32,768 // 12 = 11,396; tokens 5,698 * 32 = 182,336.
    assert _tutorial(oss20b, block_size=32).kv_cache_tokens == 182_336
    with pytest.raises(ConfigError):
        _tutorial(oss20b, platform="tpu")
    with pytest.raises(ConfigError):
        _tutorial(oss20b, block_size=24)
    with pytest.raises(ConfigError):
        _tutorial(oss20b, kv_cache_dtype="fp8_ds_mla")


def test_num_gpu_blocks_override(oss20b):
    plan = _tutorial(oss20b, num_gpu_blocks_override=1000)
    assert plan.num_blocks == 1000 and plan.kv_cache_tokens == 500 * 16


def test_estimate_kv_cache_memory():
    # 24 GB card at 0.85, 13 GB weights, 1.5 GB overhead.
    assert estimate_kv_cache_memory(24 * 10**9, 0.85, 13 * 10**9, 15 * 10**8) == 5_900_000_000
    assert estimate_kv_cache_memory(10, 0.5, 100, 0) == 0
    with pytest.raises(ConfigError):
        estimate_kv_cache_memory(10, 1.5, 0, 0)


# ---------------------------------------------------------------- 3. shipped configs


def test_shipped_configs_parse(oss20b, oss120b):
    assert catalogue_model_ids() == ("openai/gpt-oss-120b", "openai/gpt-oss-20b")
    for shape, layers, experts, name in ((oss20b, 24, 32, "20b"), (oss120b, 36, 128, "120b")):
        cfg = load_catalogue_config(f"openai/gpt-oss-{name}")
        assert cfg["architectures"] == ["GptOssForCausalLM"]
        assert cfg["num_local_experts"] == experts
        assert "_source" in cfg
        assert shape.model_type == "gpt_oss"
        assert shape.num_layers == layers
        assert shape.num_sliding_layers == shape.num_full_layers == layers // 2
        assert (shape.num_kv_heads, shape.head_dim) == (8, 64)
        assert shape.max_position_embeddings == 131_072
        assert shape.derived_max_model_len == 131_072
        # even layers slide (vllm/model_executor/models/gpt_oss.py: layer_idx % 2 == 0)
        assert all((layer.attention == SLIDING) == (layer.index % 2 == 0) for layer in shape.layers)
        assert {layer.sliding_window for layer in shape.layers} == {128, None}


def test_load_catalogue_config_returns_fresh_dicts():
    cfg = load_catalogue_config("openai/gpt-oss-20b")
    cfg["num_hidden_layers"] = 1
    assert load_catalogue_config("openai/gpt-oss-20b")["num_hidden_layers"] == 24
    with pytest.raises(ConfigError):
        load_catalogue_config("openai/gpt-oss-7b")
    with pytest.raises(ConfigError):
        load_catalogue_config("../etc/passwd")


def test_from_hf_config_variants():
    # Qwen2-style: sliding_window present but use_sliding_window false -> all full.
    qwen = {"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 3584,
            "num_attention_heads": 28, "num_key_value_heads": 4, "sliding_window": 131072,
            "use_sliding_window": False, "max_position_embeddings": 32768}
    shape = ModelShape.from_hf_config(qwen)
    assert shape.num_full_layers == 28 and shape.head_dim == 128
    # layer_types on a non-gpt-oss model are followed literally.
    mixed = {"model_type": "llama", "num_hidden_layers": 4, "num_attention_heads": 8,
             "head_dim": 64, "sliding_window": 256,
             "layer_types": [FULL, SLIDING, SLIDING, FULL]}
    shape = ModelShape.from_hf_config(mixed)
    assert [layer.attention for layer in shape.layers] == [FULL, SLIDING, SLIDING, FULL]
    assert shape.num_kv_heads == 8  # falls back to num_attention_heads
    # gpt-oss whose layer_types contradict what vLLM does is refused.
    bad = load_catalogue_config("openai/gpt-oss-20b")
    bad["layer_types"] = list(reversed(bad["layer_types"]))
    with pytest.raises(ConfigError):
        ModelShape.from_hf_config(bad)
    with pytest.raises(ConfigError):
        ModelShape.from_hf_config({"num_attention_heads": 8})
