"""KV-cache capacity planner: what vLLM 0.12 will log at startup, computed without a GPU.

vLLM prints two capacity lines once the KV cache is sized (vllm/v1/core/kv_cache_utils.py,
``_report_kv_cache_config``)::

    GPU KV cache size: 182,336 tokens
    Maximum concurrency for 128,000 tokens per request: 2.68x

Both follow from integer arithmetic over the model's attention layers, the bytes vLLM has left for
the cache ("Available KV cache memory", vllm/v1/worker/gpu_worker.py) and a few engine flags.
:func:`kv_cache_plan` redoes that arithmetic; the steps are, in the order vLLM runs them:

1. One spec per attention layer (vllm/attention/layer.py ``Attention.get_kv_cache_spec``): a
   ``SlidingWindowSpec`` when the layer has a window, else a ``FullAttentionSpec``. Its page, the
   bytes of one block of ``block_size`` tokens in one layer, is
   ``2 (K and V) * block_size * kv_heads_per_rank * head_dim * dtype_bytes``
   (vllm/v1/kv_cache_interface.py ``AttentionSpec.page_size_bytes``).
2. The startup check (kv_cache_utils.py ``check_enough_kv_cache_memory``): the sum over layers of
   ``max_memory_usage_bytes`` must fit in the available bytes, or vLLM refuses to start.
3. Grouping (kv_cache_utils.py ``get_kv_cache_groups``): identical specs form one group holding every
   layer (``_get_kv_cache_groups_uniform_spec``). Several attention types are split into groups of
   equal layer count (``_get_kv_cache_groups_uniform_page_size``): the group size is the smallest
   per-type layer count, or the largest when ``largest < 1.25 * smallest``; each type is cut into
   ``ceil(count / group_size)`` groups, layer ``i::n`` to group ``i``, the last ones padded.
4. Blocks (kv_cache_utils.py ``get_kv_cache_config_from_groups`` and ``get_num_blocks``): there are
   ``group_size`` shared tensors, each holding one layer of every group, so
   ``num_blocks = available_bytes // page_bytes // group_size``.
5. The logged token count (``_report_kv_cache_config``):
   ``num_blocks // num_groups * block_size``.
6. Concurrency (``get_max_concurrency_for_kv_cache_config``): a request at ``max_model_len`` needs,
   in every group, ``ceil(max_model_len / block_size)`` blocks for full attention
   (``FullAttentionSpec.max_memory_usage_bytes``) or
   ``ceil(min(window - 1 + max_num_batched_tokens, max_model_len) / block_size) + 1`` blocks for a
   sliding window (``SlidingWindowSpec.max_memory_usage_bytes``: the window's tokens plus one
   scheduled chunk, plus one block because the window need not start on a block boundary).
   ``max_concurrency = num_blocks / (sum of those per-group block counts)``, printed with ``%.2f``.

Scope: decoder-only models whose attention layers all share one KV-head count and head size (true
of gpt-oss, Llama, Qwen, Mistral). Tensor parallelism divides the KV heads; pipeline and context
parallelism, MLA, Mamba and chunked-local attention are not modelled. The numbers describe one
worker (one GPU): ``kv_cache_memory_bytes`` is that worker's budget.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptoss_gke.errors import ConfigError
from gptoss_gke.serving.kv_vocabulary import (  # noqa: F401  (BLOCK_SIZES, KV_CACHE_DTYPES: re-exported)
    BLOCK_SIZES,
    KV_CACHE_DTYPES,
    KV_DTYPE_BYTES,
    VALID_BLOCK_SIZES,
)

__all__ = [
    "BLOCK_SIZES",
    "DEFAULT_BLOCK_SIZE",
    "KV_CACHE_DTYPES",
    "FULL",
    "SLIDING",
    "KvCacheGroup",
    "KvCachePlan",
    "LayerSpec",
    "ModelShape",
    "catalogue_model_ids",
    "estimate_kv_cache_memory",
    "kv_cache_plan",
    "load_catalogue_config",
]

FULL = "full_attention"
SLIDING = "sliding_attention"

# CacheConfig.block_size has no static default in vLLM 0.12; each platform's
# check_and_update_config fills it in: vllm/platforms/cuda.py and rocm.py -> 16, xpu.py -> 64,
# cpu.py -> 128. (MLA backends force 64/128 on CUDA, Mamba hybrids raise it in
# vllm/model_executor/models/config.py HybridAttentionMambaModelConfig; neither applies to the
# models this planner covers. GptOssForCausalLMConfig in that file leaves block_size alone.)
# TPU is left out on purpose: the in-tree Pallas backend picks the page size from max_model_len and
# pads head_dim (vllm/v1/attention/backends/pallas.py), and GKE TPU images run the separate
# tpu-inference backend, so this CUDA arithmetic does not describe them.
DEFAULT_BLOCK_SIZE = {"cuda": 16, "rocm": 16, "xpu": 64, "cpu": 128}

# What vLLM accepts (block sizes, KV dtypes and their bytes per element): kv_vocabulary.py.
_VALID_BLOCK_SIZES = VALID_BLOCK_SIZES
_KV_DTYPE_BYTES = KV_DTYPE_BYTES

# The factor in _get_kv_cache_groups_uniform_page_size (vLLM 0.12.0: 1.25; later releases use 1.5).
_GROUP_SIZE_SLACK = 1.25

_GIB = 1 << 30
_CONFIG_DIR = Path(__file__).with_name("model_configs")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------------------------
# Model shape
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """One attention layer as vLLM's KV-cache manager sees it."""

    index: int
    attention: str  # FULL or SLIDING
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.attention not in (FULL, SLIDING):
            raise ConfigError(f"layer {self.index}: unknown attention type {self.attention!r}")
        if (self.attention == SLIDING) != (self.sliding_window is not None):
            raise ConfigError(
                f"layer {self.index}: a sliding layer needs a window and a full layer has none"
            )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"layer {self.index}: sliding window must be >= 1")

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.attention, self.sliding_window)


@dataclass(frozen=True)
class ModelShape:
    """The attention geometry of a model: all the KV-cache arithmetic needs."""

    layers: tuple[LayerSpec, ...]
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int | None = None
    # What vLLM would use for --max-model-len when none is given (_get_and_verify_max_len).
    derived_max_model_len: int | None = None
    model_type: str | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("a model shape needs at least one attention layer")
        if self.num_kv_heads < 1 or self.head_dim < 1:
            raise ConfigError("num_kv_heads and head_dim must be positive")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_full_layers(self) -> int:
        return sum(1 for layer in self.layers if layer.attention == FULL)

    @property
    def num_sliding_layers(self) -> int:
        return sum(1 for layer in self.layers if layer.attention == SLIDING)

    @property
    def is_hybrid(self) -> bool:
        return len({layer.key for layer in self.layers}) > 1

    @classmethod
    def uniform(
        cls,
        num_layers: int,
        *,
        num_kv_heads: int,
        head_dim: int,
        sliding_window: int | None = None,
        max_position_embeddings: int | None = None,
    ) -> ModelShape:
        """Every layer alike: full attention, or one sliding window everywhere."""
        attention = SLIDING if sliding_window is not None else FULL
        layers = tuple(LayerSpec(i, attention, sliding_window) for i in range(num_layers))
        return cls(layers, num_kv_heads, head_dim, max_position_embeddings, max_position_embeddings)

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Build the shape from a Hugging Face config.json (as a dict), the way vLLM 0.12 reads it.

        Which layers slide:

        * gpt-oss (``model_type == "gpt_oss"``): vllm/model_executor/models/gpt_oss.py gives the
          window to every even-indexed layer (``layer_idx % 2 == 0``) and ignores ``layer_types``;
          the published configs list exactly that pattern, and a config that disagrees is refused
          rather than silently planned one way or the other.
        * other models with ``layer_types`` naming both kinds (Llama-family code in
          vllm/model_executor/models/llama.py, Qwen2/3, Gemma): a layer slides iff its entry is
          ``"sliding_attention"``.
        * otherwise (no ``layer_types``, or only one kind listed) with ``sliding_window`` set
          (Mistral-style): vllm/engine/arg_utils.py puts the window in
          ``CacheConfig.sliding_window`` because the model is not interleaved
          (vllm/transformers_utils/config.py ``is_interleaved``), and every ``Attention`` layer
          without a per-layer window falls back to it, so every layer slides.
        * ``use_sliding_window: false`` (Qwen2/Qwen3 configs) drops the window first, as the
          transformers config classes do before vLLM ever sees it.

        KV heads come from ``num_key_value_heads`` (else ``num_attention_heads``), the head size
        from ``head_dim`` (else ``hidden_size // num_attention_heads``), as in vllm/config/model.py
        ``get_total_num_kv_heads`` and ``get_head_size``. A ``text_config`` block, when present, is
        read instead of the top level (multimodal wrappers).
        """
        cfg: Mapping[str, Any] = config.get("text_config") or config
        model_type = cfg.get("model_type") or config.get("model_type")

        def need(key: str) -> Any:
            value = cfg.get(key)
            if value is None:
                raise ConfigError(f"config.json has no {key!r}", "pass the model's full config.json")
            return value

        num_layers = int(need("num_hidden_layers"))
        num_heads = cfg.get("num_attention_heads")
        num_kv_heads = cfg.get("num_key_value_heads") or num_heads
        if num_kv_heads is None:
            raise ConfigError("config.json has neither 'num_key_value_heads' nor 'num_attention_heads'")
        head_dim = cfg.get("head_dim")
        if head_dim is None:
            head_dim = int(need("hidden_size")) // int(need("num_attention_heads"))

        window = cfg.get("sliding_window")
        if cfg.get("use_sliding_window") is False:
            window = None
        window = int(window) if window is not None else None

        layer_types = cfg.get("layer_types")
        if layer_types is not None and len(layer_types) != num_layers:
            raise ConfigError(
                f"config.json lists {len(layer_types)} layer_types for {num_layers} layers"
            )
        for kind in set(layer_types or ()):
            if kind not in (FULL, SLIDING):
                raise ConfigError(
                    f"layer type {kind!r} is not modelled (only {FULL!r} and {SLIDING!r})"
                )

        if model_type == "gpt_oss":
            sliding = [window is not None and i % 2 == 0 for i in range(num_layers)]
            if layer_types is not None and window is not None:
                listed = [kind == SLIDING for kind in layer_types]
                if listed != sliding:
                    raise ConfigError(
                        "gpt-oss layer_types do not alternate sliding/full from layer 0",
                        "vLLM 0.12 ignores layer_types for gpt-oss and slides the even layers",
                    )
        elif layer_types is not None and len(set(layer_types)) > 1:
            if window is None:
                raise ConfigError("layer_types lists sliding layers but sliding_window is not set")
            sliding = [kind == SLIDING for kind in layer_types]
        else:
            sliding = [window is not None] * num_layers

        layers = tuple(
            LayerSpec(i, SLIDING, window) if s else LayerSpec(i, FULL, None)
            for i, s in enumerate(sliding)
        )
        max_pos = cfg.get("max_position_embeddings")
        return cls(
            layers=layers,
            num_kv_heads=int(num_kv_heads),
            head_dim=int(head_dim),
            max_position_embeddings=int(max_pos) if max_pos is not None else None,
            derived_max_model_len=_derived_max_model_len(cfg, model_type),
            model_type=model_type,
        )


def _derived_max_model_len(cfg: Mapping[str, Any], model_type: str | None) -> int | None:
    """The default --max-model-len, following vllm/config/model.py ``_get_and_verify_max_len``.

    Smallest of the length keys; ``model_max_length`` wins outright; then RoPE scaling: any
    ``factor`` of a rope type other than su/longrope/llama3 multiplies, and yarn starts from
    ``original_max_position_embeddings`` (gpt-oss: 4096 * 32 = 131072). Tokenizer limits and
    longrope defaults are not modelled.
    """
    keys = (
        "max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
        "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len",
    )
    values = [cfg[k] for k in keys if cfg.get(k) is not None]
    if not values:
        return None
    derived: float = min(values)
    if cfg.get("model_max_length"):
        derived = cfg["model_max_length"]
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
    if rope and "gemma3" not in (model_type or ""):
        per_type = rope if all(isinstance(v, Mapping) for v in rope.values()) else {"": rope}
        factor = 1.0
        for params in per_type.values():
            rope_type = params.get("rope_type") or params.get("type") or "default"
            if rope_type not in ("su", "longrope", "llama3"):
                factor = params.get("factor", factor)
                if rope_type == "yarn":
                    derived = params["original_max_position_embeddings"]
        derived *= factor
    return int(derived)


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KvCacheGroup:
    """One KV-cache group: layers that share a block table."""

    attention: str  # FULL or SLIDING (after --disable-hybrid-kv-cache-manager: FULL)
    sliding_window: int | None  # the window; kept on FULL groups made from sliding layers
    layer_indices: tuple[int, ...]
    padding_layers: int  # group_size - len(layer_indices): memory reserved for no layer
    blocks_per_request: int  # blocks one request at max_model_len holds in this group


@dataclass(frozen=True)
class KvCachePlan:
    """What vLLM 0.12 computes for one worker. See the module docstring for each formula."""

    block_size: int
    kv_dtype_bytes: int
    kv_heads_per_rank: int
    page_size_bytes: int  # one block, one layer
    num_groups: int
    group_size: int  # layers per group = number of shared KV tensors
    groups: tuple[KvCacheGroup, ...]
    num_blocks: int
    kv_cache_tokens: int  # "GPU KV cache size: N tokens"
    max_model_len: int
    max_num_batched_tokens: int
    blocks_per_request: int
    max_concurrency: float  # "Maximum concurrency for L tokens per request: Xx", unrounded
    max_concurrency_display: str  # X exactly as printed ("%.2f")
    kv_cache_memory_bytes: int
    kv_cache_memory_display: str  # "Available KV cache memory: X GiB" ("%.2f")
    bytes_per_token_per_layer: int
    bytes_per_token_by_type: dict[str, int]  # all layers of one type, one token
    bytes_per_logged_token: float  # kv_cache_memory_bytes / kv_cache_tokens
    memory_per_request_bytes: int  # what one max_model_len request reserves (vLLM's own measure)
    required_memory_bytes: int  # check_enough_kv_cache_memory's "needed" figure
    fits: bool  # False: vLLM refuses to start ("To serve at least one request ...")
    estimated_max_model_len: int | None  # vLLM's suggestion when it does not fit
    hybrid_kv_cache_manager: bool
    explanation: tuple[str, ...] = field(default_factory=tuple)

    @property
    def log_lines(self) -> tuple[str, ...]:
        """The three startup lines, formatted as vLLM formats them."""
        return (
            f"Available KV cache memory: {self.kv_cache_memory_display} GiB",
            f"GPU KV cache size: {self.kv_cache_tokens:,} tokens",
            f"Maximum concurrency for {self.max_model_len:,} tokens per request: "
            f"{self.max_concurrency_display}x",
        )


@dataclass(frozen=True)
class _Spec:
    """A layer's KV-cache spec (kv_cache_interface.py), reduced to what sizing needs."""

    attention: str
    sliding_window: int | None


def _blocks_for(spec: _Spec, *, block_size: int, max_model_len: int, max_batched: int) -> int:
    if spec.attention == SLIDING:
        # SlidingWindowSpec.max_memory_usage_bytes
        tokens = min(spec.sliding_window - 1 + max_batched, max_model_len)  # type: ignore[operator]
        return _cdiv(tokens, block_size) + 1
    # FullAttentionSpec.max_memory_usage_bytes (a recorded window does not shrink it)
    return _cdiv(max_model_len, block_size)


def _group_layers(specs: list[tuple[int, _Spec]]) -> tuple[list[tuple[_Spec, list[int]]], int]:
    """kv_cache_utils.py get_kv_cache_groups for same-page-size attention layers."""
    by_type: dict[_Spec, list[int]] = {}
    for index, spec in specs:
        by_type.setdefault(spec, []).append(index)

    every = [index for index, _ in specs]
    if len(by_type) == 1:
        # is_kv_cache_spec_uniform -> _get_kv_cache_groups_uniform_spec: one group, every layer.
        return [(next(iter(by_type)), every)], len(every)
    if all(s.attention == FULL for s in by_type):
        # FullAttentionSpec.merge also accepts full layers with and without a recorded window
        # (what --disable-hybrid-kv-cache-manager leaves behind), so this is uniform too.
        windows = {s.sliding_window for s in by_type if s.sliding_window is not None}
        if len(windows) > 1:
            raise ConfigError("full-attention layers recording different windows cannot be merged")
        return [(_Spec(FULL, windows.pop() if windows else None), every)], len(every)

    # _get_kv_cache_groups_uniform_page_size
    counts = [len(v) for v in by_type.values()]
    group_size = min(counts)
    if max(counts) < min(counts) * _GROUP_SIZE_SLACK:
        group_size = max(counts)
    groups: list[tuple[_Spec, list[int]]] = []
    for spec, indices in by_type.items():
        n = _cdiv(len(indices), group_size)
        groups.extend((spec, indices[i::n]) for i in range(n))
    return groups, group_size


def kv_cache_plan(
    shape: ModelShape,
    *,
    kv_cache_memory_bytes: int,
    max_num_batched_tokens: int,
    max_model_len: int | None = None,
    kv_cache_dtype: str = "auto",
    model_dtype_bytes: int = 2,
    block_size: int | None = None,
    platform: str = "cuda",
    tensor_parallel_size: int = 1,
    hybrid_kv_cache_manager: bool = True,
    num_gpu_blocks_override: int | None = None,
) -> KvCachePlan:
    """Size the KV cache exactly as vLLM 0.12 does for one worker.

    Args:
        shape: the model's attention layers (:meth:`ModelShape.from_hf_config`).
        kv_cache_memory_bytes: the bytes vLLM found for the cache on this GPU ("Available KV cache
            memory"), or ``--kv-cache-memory``. :func:`estimate_kv_cache_memory` guesses it.
        max_num_batched_tokens: ``--max-num-batched-tokens``. Required: vLLM's default depends on
            the usage context and the GPU, and it sizes the sliding-window reservation.
        max_model_len: ``--max-model-len``; None means the length vLLM derives from the config.
        kv_cache_dtype: ``--kv-cache-dtype``: "auto" (the model dtype), "bfloat16", "fp8",
            "fp8_e4m3", "fp8_e5m2" or "fp8_inc".
        model_dtype_bytes: bytes per element of the model dtype, used by "auto" (2 for bf16/fp16;
            vLLM's dtype "auto" serves float32 checkpoints in 16 bits too).
        block_size: ``--block-size``; None takes the platform default (:data:`DEFAULT_BLOCK_SIZE`:
            16 on CUDA and ROCm).
        platform: "cuda", "rocm", "xpu" or "cpu"; only picks the default block size.
        tensor_parallel_size: KV heads per rank are ``max(1, kv_heads // tp)``
            (vllm/config/model.py ``get_num_kv_heads``).
        hybrid_kv_cache_manager: False for ``--disable-hybrid-kv-cache-manager`` (also forced by
            vLLM with ``--kv-transfer-config`` or ``--kv-events-config``): sliding layers are then
            kept for the whole context (kv_cache_utils.py ``unify_hybrid_kv_cache_specs``).
        num_gpu_blocks_override: ``--num-gpu-blocks-override`` (``may_override_num_blocks``).
    """
    if platform not in DEFAULT_BLOCK_SIZE:
        raise ConfigError(
            f"platform {platform!r} is not modelled",
            f"use one of {sorted(DEFAULT_BLOCK_SIZE)} (TPU sizing follows other rules)",
        )
    if block_size is None:
        block_size = DEFAULT_BLOCK_SIZE[platform]
    if block_size not in _VALID_BLOCK_SIZES:
        raise ConfigError(f"block size {block_size} is not one vLLM accepts {_VALID_BLOCK_SIZES}")
    if kv_cache_dtype == "auto":
        kv_bytes = model_dtype_bytes
    elif kv_cache_dtype in _KV_DTYPE_BYTES:
        kv_bytes = _KV_DTYPE_BYTES[kv_cache_dtype]
    else:
        raise ConfigError(
            f"kv cache dtype {kv_cache_dtype!r} is not modelled",
            f"use 'auto' or one of {sorted(_KV_DTYPE_BYTES)}",
        )
    if max_model_len is None:
        max_model_len = shape.derived_max_model_len
        if max_model_len is None:
            raise ConfigError("max_model_len not given and the config has no length to derive it from")
    if max_model_len < 1 or max_num_batched_tokens < 1:
        raise ConfigError("max_model_len and max_num_batched_tokens must be positive")
    if tensor_parallel_size < 1:
        raise ConfigError("tensor_parallel_size must be >= 1")
    if kv_cache_memory_bytes < 0:
        raise ConfigError("kv_cache_memory_bytes must not be negative")

    kv_heads = max(1, shape.num_kv_heads // tensor_parallel_size)
    per_token_layer = 2 * kv_heads * shape.head_dim * kv_bytes
    page = block_size * per_token_layer  # AttentionSpec.page_size_bytes

    def blocks(spec: _Spec, model_len: int) -> int:
        return _blocks_for(
            spec, block_size=block_size, max_model_len=model_len, max_batched=max_num_batched_tokens
        )

    layer_specs = [(layer.index, _Spec(layer.attention, layer.sliding_window)) for layer in shape.layers]

    # check_enough_kv_cache_memory runs on the layers' own specs, before any unification.
    def required(model_len: int) -> int:
        return sum(blocks(spec, model_len) * page for _, spec in layer_specs)

    required_bytes = required(max_model_len)
    fits = 0 < kv_cache_memory_bytes and required_bytes <= kv_cache_memory_bytes
    estimated_len: int | None = None
    if not fits and kv_cache_memory_bytes > 0:
        # estimate_max_model_len: binary search over 1..max_model_len
        lo, hi, best = 1, max_model_len, 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if required(mid) <= kv_cache_memory_bytes:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        estimated_len = best

    if not hybrid_kv_cache_manager:
        # unify_hybrid_kv_cache_specs: with full layers present, sliding specs become full ones
        # that remember their window.
        if any(spec.attention == FULL for _, spec in layer_specs):
            layer_specs = [(i, _Spec(FULL, spec.sliding_window)) for i, spec in layer_specs]

    grouped, group_size = _group_layers(layer_specs)

    num_blocks = max(int(kv_cache_memory_bytes // page // group_size), 0)  # get_num_blocks
    if num_gpu_blocks_override is not None:
        num_blocks = num_gpu_blocks_override

    groups = tuple(
        KvCacheGroup(
            attention=spec.attention,
            sliding_window=spec.sliding_window,
            layer_indices=tuple(indices),
            padding_layers=group_size - len(indices),
            blocks_per_request=blocks(spec, max_model_len),
        )
        for spec, indices in grouped
    )
    num_groups = len(groups)
    tokens = num_blocks // num_groups * block_size  # _report_kv_cache_config
    per_request_blocks = sum(g.blocks_per_request for g in groups)
    concurrency = num_blocks / per_request_blocks  # get_max_concurrency_for_kv_cache_config

    by_type: dict[str, int] = {}
    for layer in shape.layers:
        by_type[layer.attention] = by_type.get(layer.attention, 0) + per_token_layer

    explanation = [
        f"page = 2 (K,V) x {block_size} tokens x {kv_heads} KV heads x {shape.head_dim} head_dim x "
        f"{kv_bytes} B = {page:,} B per block per layer",
    ]
    padding = sum(g.padding_layers for g in groups)
    kinds = ", ".join(
        f"{g.attention}{f'({g.sliding_window})' if g.sliding_window else ''}:{len(g.layer_indices)}"
        for g in groups
    )
    explanation.append(
        f"{shape.num_layers} layers -> {num_groups} group(s) of {group_size} layer(s) [{kinds}]"
        + (f", {padding} padding layer(s)" if padding else "")
    )
    explanation.append(
        f"num_blocks = {kv_cache_memory_bytes:,} B // {page:,} B // {group_size} = {num_blocks:,}"
        + (" (overridden)" if num_gpu_blocks_override is not None else "")
    )
    explanation.append(
        f"GPU KV cache size = {num_blocks:,} // {num_groups} groups x {block_size} = {tokens:,} tokens"
    )
    per_group = " + ".join(str(g.blocks_per_request) for g in groups)
    explanation.append(
        f"one {max_model_len:,}-token request holds {per_group} = {per_request_blocks:,} blocks; "
        f"concurrency = {num_blocks:,} / {per_request_blocks:,} = {concurrency:.4f} "
        f"(logged {concurrency:.2f}x)"
    )
    if any(g.attention == SLIDING for g in groups):
        w = next(g.sliding_window for g in groups if g.attention == SLIDING)
        explanation.append(
            f"a sliding group keeps min({w} - 1 + {max_num_batched_tokens} max_num_batched_tokens, "
            f"{max_model_len}) tokens + 1 block per request, not the whole context"
        )
    elif shape.num_sliding_layers and not hybrid_kv_cache_manager:
        explanation.append(
            "hybrid KV cache manager disabled: sliding layers hold the whole context like full ones"
        )
    if not fits:
        explanation.append(
            f"vLLM refuses to start: a {max_model_len:,}-token request needs {required_bytes:,} B "
            f"of KV cache, more than {kv_cache_memory_bytes:,} B"
            + (f"; largest length that fits: {estimated_len:,}" if estimated_len else "")
        )

    return KvCachePlan(
        block_size=block_size,
        kv_dtype_bytes=kv_bytes,
        kv_heads_per_rank=kv_heads,
        page_size_bytes=page,
        num_groups=num_groups,
        group_size=group_size,
        groups=groups,
        num_blocks=num_blocks,
        kv_cache_tokens=tokens,
        max_model_len=max_model_len,
        max_num_batched_tokens=max_num_batched_tokens,
        blocks_per_request=per_request_blocks,
        max_concurrency=concurrency,
        max_concurrency_display=f"{concurrency:.2f}",
        kv_cache_memory_bytes=kv_cache_memory_bytes,
        kv_cache_memory_display=f"{kv_cache_memory_bytes / _GIB:.2f}",
        bytes_per_token_per_layer=per_token_layer,
        bytes_per_token_by_type=by_type,
        bytes_per_logged_token=(kv_cache_memory_bytes / tokens) if tokens else float("inf"),
        memory_per_request_bytes=per_request_blocks * page * group_size,
        required_memory_bytes=required_bytes,
        fits=fits,
        estimated_max_model_len=estimated_len,
        hybrid_kv_cache_manager=hybrid_kv_cache_manager,
        explanation=tuple(explanation),
    )


def estimate_kv_cache_memory(
    accelerator_memory_bytes: int,
    gpu_memory_utilization: float,
    weight_bytes: int,
    overhead_bytes: int,
) -> int:
    """An ESTIMATE of the bytes vLLM will find for the KV cache on one GPU.

    vLLM measures rather than computes this (vllm/v1/worker/gpu_worker.py
    ``determine_available_memory``): ``total_memory * gpu_memory_utilization`` minus what a profiling
    run actually used (weights, peak activations, non-torch memory such as NCCL and the CUDA
    context). Here the caller supplies the weights and a lump ``overhead_bytes`` for the rest, so the
    result is only as good as that guess; feed the real "Available KV cache memory" to
    :func:`kv_cache_plan` when a startup log is at hand. Never negative.
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise ConfigError("gpu_memory_utilization must be in (0, 1]")
    if min(accelerator_memory_bytes, weight_bytes, overhead_bytes) < 0:
        raise ConfigError("memory figures must not be negative")
    requested = int(accelerator_memory_bytes * gpu_memory_utilization)
    return max(requested - weight_bytes - overhead_bytes, 0)


# --------------------------------------------------------------------------------------------
# Shipped configs
# --------------------------------------------------------------------------------------------


def _config_path(model_id: str) -> Path:
    return _CONFIG_DIR / (model_id.replace("/", "__") + ".json")


def catalogue_model_ids() -> tuple[str, ...]:
    """Model ids whose config.json fields ship with the package."""
    return tuple(sorted(p.stem.replace("__", "/") for p in _CONFIG_DIR.glob("*.json")))


def load_catalogue_config(model_id: str) -> dict[str, Any]:
    """The shipped copy of a catalogue model's config.json fields (a fresh dict each call)."""
    path = _config_path(model_id)
    if "/" not in model_id or not path.is_file():
        raise ConfigError(
            f"no shipped config for model {model_id!r}",
            f"known: {', '.join(catalogue_model_ids())}",
        )
    return json.loads(path.read_text(encoding="utf-8"))
