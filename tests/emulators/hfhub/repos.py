"""Builders for gpt-oss-like repos on a :class:`HubEmulator`."""

from __future__ import annotations

import json
import struct
from typing import Any

from .content import Synthetic, _default_gitattributes
from .server import HubEmulator


# --------------------------------------------------------------------------------------------------
# gpt-oss-like repo
# --------------------------------------------------------------------------------------------------

def gptoss_like_layout(n_shards: int = 3) -> dict[str, list[str]]:
    """Paths of a gpt-oss-like repo: ``{"root": [...], "original": [...], "metal": [...]}`` (sorted)."""
    last = n_shards - 1
    root = [f"model-{i:05d}-of-{last:05d}.safetensors" for i in range(n_shards)] + [
        ".gitattributes", "LICENSE", "README.md", "USAGE_POLICY", "chat_template.jinja", "config.json",
        "generation_config.json", "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json",
    ]
    return {"root": sorted(root),
            "original": ["original/config.json", "original/dtypes.json", "original/model.safetensors"],
            "metal": ["metal/model.bin"]}


def _safetensors(size: int, seed: Any, names: list[str]) -> Synthetic:
    """A valid safetensors file of exactly ``size`` bytes: U8 tensors ``names`` over synthetic data."""
    header_len = 0
    for _ in range(16):  # header length and data length depend on each other: grow the header until it fits
        data_len = size - 8 - header_len
        if data_len < len(names):
            raise ValueError(f"safetensors size {size} too small for {len(names)} tensors")
        per, off = data_len // len(names), 0
        meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        for i, n in enumerate(names):
            ln = per if i < len(names) - 1 else data_len - off
            meta[n] = {"dtype": "U8", "shape": [ln], "data_offsets": [off, off + ln]}
            off += ln
        raw = json.dumps(meta, separators=(",", ":")).encode()
        need = len(raw) + (-len(raw)) % 8
        if need <= header_len:
            return Synthetic(size, seed, prefix=struct.pack("<Q", header_len) + raw + b" " * (header_len - len(raw)))
        header_len = need
    raise RuntimeError("could not lay out safetensors header")


def make_gptoss_like_repo(hub: HubEmulator, repo_id: str = "openai/gpt-oss-mini", shard_size: int = 2 * 1024 * 1024,
                          n_shards: int = 3, *, copy_size: int | None = None, gated: Any = False,
                          private: bool = False, seed: Any = 0, num_layers: int = 24) -> str:
    """Create a repo laid out like ``openai/gpt-oss-20b`` (root shards + ``original/`` + ``metal/`` copies).

    Root ``model-0000{i}-of-0000{n-1}.safetensors`` are valid safetensors files of ``shard_size`` bytes each;
    ``original/model.safetensors`` and ``metal/model.bin`` are whole copies of ``copy_size`` bytes (default
    ``n_shards * shard_size``), like the real repo holding the weights three times. Returns the commit sha.
    """
    copy_size = n_shards * shard_size if copy_size is None else copy_size
    last = n_shards - 1
    weight_map: dict[str, str] = {}
    files: dict[str, Any] = {}
    per_shard = max(1, num_layers // n_shards)
    for i in range(n_shards):
        shard = f"model-{i:05d}-of-{last:05d}.safetensors"
        layers = range(i * per_shard, num_layers if i == last else (i + 1) * per_shard)
        names = [f"model.layers.{layer}.mlp.experts.gate_up_proj_blocks" for layer in layers] or [f"model.shard{i}"]
        if i == last:
            names += ["model.embed_tokens.weight", "lm_head.weight"]
        files[shard] = _safetensors(shard_size, f"{seed}:root:{i}", names)
        weight_map.update({n: shard for n in names})
    files["original/model.safetensors"] = _safetensors(
        copy_size, f"{seed}:original", [f"block.{layer}.mlp.mlp1_weight.blocks" for layer in range(num_layers)])
    files["metal/model.bin"] = Synthetic(copy_size, f"{seed}:metal")
    layer_types = ["sliding_attention" if j % 2 == 0 else "full_attention" for j in range(num_layers)]
    config = {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "num_hidden_layers": num_layers,
        "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "hidden_size": 2880,
        "num_local_experts": 32, "experts_per_token": 4, "sliding_window": 128, "layer_types": layer_types,
        "vocab_size": 201088, "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "mxfp4",
                                "modules_to_not_convert": ["model.layers.*.self_attn", "model.embed_tokens", "lm_head"]},
    }
    files["config.json"] = json.dumps(config, indent=2).encode()
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": n_shards * shard_size}, "weight_map": weight_map}, indent=2).encode()
    files["generation_config.json"] = json.dumps(
        {"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999,
         "do_sample": True}, indent=2).encode()
    files["tokenizer.json"] = json.dumps(
        {"version": "1.0", "model": {"type": "BPE", "vocab": {f"tok{i}": i for i in range(256)}, "merges": []},
         "added_tokens": [{"id": 199998, "content": "<|startoftext|>"}]}).encode()
    files["tokenizer_config.json"] = json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072}, indent=2).encode()
    files["special_tokens_map.json"] = json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}).encode()
    files["chat_template.jinja"] = b"{%- for message in messages -%}<|start|>{{ message.role }}<|message|>" \
                                   b"{{ message.content }}<|end|>{%- endfor -%}\n"
    files["README.md"] = (f"---\nlicense: apache-2.0\nlibrary_name: transformers\npipeline_tag: text-generation\n"
                          f"---\n# {repo_id}\n\nSynthetic gpt-oss-like repo served by the test emulator.\n").encode()
    files["LICENSE"] = b"Apache License\nVersion 2.0, January 2004\n(placeholder text for tests)\n"
    files["USAGE_POLICY"] = b"Usage policy placeholder for tests.\n"
    files["original/config.json"] = json.dumps(
        {"num_hidden_layers": num_layers, "num_experts": 32, "experts_per_token": 4, "vocab_size": 201088,
         "hidden_size": 2880, "head_dim": 64, "num_attention_heads": 64, "num_key_value_heads": 8,
         "sliding_window": 128}, indent=2).encode()
    files["original/dtypes.json"] = json.dumps(
        {f"block.{layer}.mlp.mlp1_weight.blocks": "FP4" for layer in range(num_layers)}, indent=2).encode()
    files[".gitattributes"] = _default_gitattributes(("tokenizer.json",))
    return hub.add_repo(repo_id, files, gated=gated, private=private, message="Add gpt-oss-like weights")
