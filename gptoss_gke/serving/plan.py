"""`inv plan`: will it fit, how many KV tokens, what concurrency, what it costs — before paying.

The verdict counts what vLLM puts in each accelerator's memory: the model's weights (its share under
tensor parallelism), activations and runtime overhead, and the KV cache, against
``gpu_memory_utilization`` of that accelerator's memory. The KV arithmetic is vLLM 0.12's own
(serving/capacity.py); the memory for the KV cache is either given (--kv-cache-memory, as vLLM's
per-device --kv-cache-memory-bytes) or what is left, labelled as an estimate.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptoss_gke.core.step import Check, Plan, noop
from gptoss_gke.errors import ConfigError, StepError

GIB = 1 << 30
HOURS_PER_MONTH = 730
TUTORIAL_MONTHLY_USD = 506  # the L4 tutorial's figure for its one on-demand g2-standard-4
INDEX_FILE = "model.safetensors.index.json"


def _config_path(model: str) -> Path:
    path = Path(model).expanduser()
    return path / "config.json" if path.is_dir() else path


def load_model_config(model: str) -> dict:
    """A catalogue model id, or a path to a Hugging Face config.json (or its folder)."""
    from gptoss_gke.serving.capacity import catalogue_model_ids, load_catalogue_config

    if model in catalogue_model_ids():
        return load_catalogue_config(model)
    path = _config_path(model)
    if not path.is_file():
        raise ConfigError(f"--model {model}: neither a catalogue model ({', '.join(catalogue_model_ids())}) "
                          f"nor a config.json file", "download the model's config.json and pass its path")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})", "pass the model's config.json") from None


def model_weight_bytes(model: str, config: dict) -> tuple[int, str]:
    """(bytes of weights vLLM loads, where the figure comes from) for the model being planned.

    A catalogue model: the load its target measured. A path: the checkpoint's own size from
    ``model.safetensors.index.json`` beside the config when there is one, else an estimate from the
    config's shape (parameters x 2 bytes: vLLM serves float checkpoints in 16 bits).
    """
    from gptoss_gke.targets import CATALOGUE

    served = next((t for t in CATALOGUE.values() if t.model_id == model), None)
    if served is not None:
        return int(served.weight_memory_gib * GIB), f"the {served.name} target's figure for {model}"
    index = _config_path(model).with_name(INDEX_FILE)
    if index.is_file():
        try:
            total = int(json.loads(index.read_text())["metadata"]["total_size"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{index}: no metadata.total_size", "pass the index the checkpoint ships") from None
        return total, f"the checkpoint's size ({INDEX_FILE})"
    return estimate_weight_bytes(config), "an estimate from config.json (parameters x 2 bytes)"


def estimate_weight_bytes(config: dict) -> int:
    """Parameters of a decoder-only transformer (dense or mixture-of-experts) x 2 bytes."""
    cfg = config.get("text_config") or config
    if cfg.get("quantization_config") or config.get("quantization_config"):
        raise ConfigError("a quantized model's weights cannot be estimated from its config.json",
                          f"pass the model's folder with its {INDEX_FILE} (its metadata.total_size is the size)")
    try:
        hidden, layers, vocab = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1)
        ffn = int(cfg.get("moe_intermediate_size") if experts > 1 and cfg.get("moe_intermediate_size")
                  else cfg["intermediate_size"])
    except KeyError as exc:
        raise ConfigError(f"config.json has no {exc.args[0]!r}, needed to estimate the weights",
                          f"pass the full config.json, or the model's folder with its {INDEX_FILE}") from None
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v projections
    mlp = experts * 3 * hidden * ffn + (hidden * experts if experts > 1 else 0)  # gate, up, down (+ router)
    shared = 3 * hidden * int(cfg.get("shared_expert_intermediate_size") or 0)
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return 2 * (layers * (attention + mlp + shared) + embeddings)


def parallelism(args: list[str]) -> tuple[int, int]:
    """(tensor, data) parallel sizes from vLLM arguments (`--flag=N` or `--flag N`)."""
    sizes = {"--tensor-parallel-size": 1, "--data-parallel-size": 1}
    for i, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        if flag in sizes:
            value = value or (args[i + 1] if i + 1 < len(args) else "1")
            sizes[flag] = int(value)
    return sizes["--tensor-parallel-size"], sizes["--data-parallel-size"]


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


class CapacityPlan(Check):
    """Arithmetic only (nothing is read or changed): it runs in every run, a dry-run too."""

    section = "plan"

    def __init__(self, settings, target_name: str, *, model=None, kv_cache_memory=None, max_model_len=None,
                 max_num_batched_tokens=None, kv_cache_dtype=None, block_size=None, throughput=None):
        from gptoss_gke.k8s.manifests import vllm_args

        self.target = settings.target(target_name)
        self.model = model or self.target.model_id
        self.kv_cache_memory = kv_cache_memory
        self.max_model_len = max_model_len or self.target.max_model_len
        self.max_num_batched_tokens = max_num_batched_tokens or self.target.max_num_batched_tokens
        self.kv_cache_dtype = kv_cache_dtype or self.target.kv_cache_dtype
        self.block_size = block_size
        self.throughput = throughput or self.target.assumed_tokens_per_s
        self.tp, self.dp = parallelism(vllm_args(settings, self.target))
        self.name = f"capacity of {target_name}: {self.model}"
        self.key = f"plan.{target_name}"
        self.report: dict = {}

    def verdict(self, ctx, fits: str) -> Plan:
        return noop(f"fits: {fits}", **{k: self.report[k] for k in ("kv_cache_tokens", "max_concurrency")})

    def probe(self, ctx, current) -> str:
        """The memory and KV arithmetic, printed as it goes; returns what fits (or raises: does not fit)."""
        from gptoss_gke.serving.capacity import ModelShape, estimate_kv_cache_memory, kv_cache_plan

        t = self.target
        pool = t.node_pool
        config = load_model_config(self.model)
        shape = ModelShape.from_hf_config(config)
        warnings: list[str] = []
        # Per device (one GPU, or one TPU device), as vLLM sizes memory: each data-parallel replica holds
        # the whole model, split over its tensor-parallel devices.
        devices = self.tp * self.dp
        device = int(pool.accelerator_memory_gib * GIB / devices)
        budget = int(device * t.gpu_memory_utilization)
        model_weights, weights_source = model_weight_bytes(self.model, config)
        weights = model_weights // self.tp
        overhead = int(t.memory_overhead_gib * GIB)
        if self.kv_cache_memory is not None:
            kv_memory, estimated = int(self.kv_cache_memory), False
        else:
            kv_memory = estimate_kv_cache_memory(device, t.gpu_memory_utilization, weights, overhead)
            estimated = True
        where = (f"{t.gpu_memory_utilization:g} x {_gib(device)} of one {pool.accelerator_type or pool.machine_type} "
                 f"device" + (f" ({devices} devices: tensor parallel {self.tp} x data parallel {self.dp})"
                              if devices > 1 else ""))
        sums = (f"weights {_gib(weights)}{f' (1/{self.tp} of {_gib(model_weights)})' if self.tp > 1 else ''} + "
                f"activations/overhead {_gib(overhead)} ({t.memory_overhead_source}) + KV cache {_gib(kv_memory)}"
                f"{' (what is left)' if estimated else ''}")
        report = {
            "target": t.name, "model": self.model, "accelerator": pool.accelerator_type or pool.machine_type,
            "accelerator_memory_bytes": int(pool.accelerator_memory_gib * GIB), "device_memory_bytes": device,
            "devices": devices, "tensor_parallel_size": self.tp, "data_parallel_size": self.dp,
            "memory_budget_bytes": budget, "weight_bytes": weights, "model_weight_bytes": model_weights,
            "weight_source": weights_source, "overhead_bytes": overhead, "overhead_source": t.memory_overhead_source,
            "kv_cache_memory_bytes": kv_memory, "kv_cache_memory_estimated": estimated,
            "max_model_len": self.max_model_len, "max_num_batched_tokens": self.max_num_batched_tokens,
            "kv_cache_dtype": self.kv_cache_dtype, "max_num_seqs": t.max_num_seqs,
        }
        self.report = report
        room = budget - weights - overhead
        if room <= 0:
            raise StepError(f"does not fit: weights {_gib(weights)} ({weights_source}) + activations/overhead "
                            f"{_gib(overhead)} already exceed the {_gib(budget)} vLLM may use ({where})",
                            "use an accelerator with more memory, or more devices per replica "
                            "(--tensor-parallel-size)", facts={"plan": report})
        if kv_memory > room:
            raise StepError(f"does not fit: {sums} = {_gib(weights + overhead + kv_memory)}, more than the "
                            f"{_gib(budget)} vLLM may use ({where})",
                            f"lower --kv-cache-memory to at most {room:,} bytes", facts={"plan": report})
        ctx.printer.line(f"  memory: {sums} = {_gib(weights + overhead + kv_memory)} of {_gib(budget)} "
                         f"({where}); weights from {weights_source}", "dim")
        limit = shape.derived_max_model_len
        if limit and self.max_model_len > limit:
            warnings.append(f"max-model-len {self.max_model_len:,} exceeds the model's limit {limit:,}")
        label = " (estimate)" if estimated else ""
        if t.kv_platform != "cuda":
            report.update(kv_cache_tokens=None, max_concurrency=None)
            verdict = (f"{_gib(weights + overhead + kv_memory)} of {_gib(budget)} per device; KV cache "
                       f"{_gib(kv_memory)}{label} per device (tokens not modelled: vLLM's TPU backend pages "
                       f"differently)")
        else:
            kv = kv_cache_plan(shape, kv_cache_memory_bytes=kv_memory, max_model_len=self.max_model_len,
                               max_num_batched_tokens=self.max_num_batched_tokens,
                               kv_cache_dtype=self.kv_cache_dtype, block_size=self.block_size,
                               tensor_parallel_size=self.tp)
            report.update(kv_cache_tokens=kv.kv_cache_tokens, max_concurrency=kv.max_concurrency,
                          max_concurrency_display=kv.max_concurrency_display, num_kv_groups=kv.num_groups,
                          page_size_bytes=kv.page_size_bytes, bytes_per_token_by_type=kv.bytes_per_token_by_type,
                          memory_per_request_bytes=kv.memory_per_request_bytes, fits=kv.fits,
                          vllm_log_lines=list(kv.log_lines), explanation=list(kv.explanation))
            if not kv.fits:
                report["warnings"] = warnings
                raise StepError(
                    f"does not fit: one {self.max_model_len:,}-token request needs "
                    f"{kv.required_memory_bytes / GIB:.2f} GiB of KV cache, {kv_memory / GIB:.2f} GiB available"
                    + label,
                    f"lower --max-model-len to {kv.estimated_max_model_len:,} or use kv_cache_dtype fp8"
                    if kv.estimated_max_model_len else "use a larger accelerator", facts={"plan": report})
            if kv.max_concurrency < t.max_num_seqs:
                warnings.append(f"max-num-seqs {t.max_num_seqs} long requests need {t.max_num_seqs}x the pool; "
                                f"it holds {kv.max_concurrency_display}x at {self.max_model_len:,} tokens "
                                f"(vLLM preempts and recomputes the rest)")
            verdict = (f"KV cache {kv_memory / GIB:.2f} GiB{label} holds {kv.kv_cache_tokens:,} tokens; "
                       f"{kv.max_concurrency_display}x concurrency at {self.max_model_len:,} tokens per request")
        report["cost"] = self._cost(ctx)
        report["warnings"] = warnings
        for line in report.get("vllm_log_lines", []):
            ctx.printer.line(f"  vLLM would log: {line}", "dim")
        for line in report.get("explanation", []):
            ctx.printer.line(f"  {line}", "dim")
        for w in warnings:
            ctx.printer.line(f"  warning: {w}", "changed")
        if report["cost"]:
            c = report["cost"]
            ctx.printer.line(f"  cost: ${c['on_demand_hourly']:.2f}/h on demand (${c['on_demand_monthly']:,.0f}/month)"
                             + (f", ${c['spot_hourly']:.2f}/h spot" if c.get("spot_hourly") is not None else "")
                             + (f"; {c['tokens_per_dollar']:,.0f} output tokens per $ at {self.throughput:g} tok/s"
                                if c.get("tokens_per_dollar") else ""))
            self._print_profiles(ctx, c)
        return verdict

    def _print_profiles(self, ctx, cost: dict) -> None:
        profiles = cost.get("profiles")
        if not profiles:
            return
        p = ctx.printer
        a = cost["profile_assumptions"]
        p.line(f"  capacity profiles, per month (the tutorial: ${TUTORIAL_MONTHLY_USD}/month for one on-demand node); "
               f"assumed: {a['preemptions_per_node_day']:g} preemption per spot node a day, each replacement billed "
               f"{a['replacement_s'] / 60:.0f} min before it serves, {a['fallback_share']:.0%} of node-hours on the "
               f"on-demand fallback", "dim")
        for row in profiles:
            mark = " <- targets.{}.capacity".format(self.target.name) if row["current"] else ""
            tokens = f", {row['tokens_per_dollar']:,.0f} tokens/$" if row.get("tokens_per_dollar") else ""
            p.line(f"    {row['profile']:<18} {row['replicas']} replica(s): ${row['monthly']:,.0f}/month "
                   f"({row['vs_tutorial']:.2f}x the tutorial{tokens}) - {row['guarantee']}{mark}", "dim")

    def _cost(self, ctx) -> dict | None:
        machine = self.target.node_pool.machine_type
        on_demand = ctx.settings.hourly_price(machine)
        if on_demand is None:
            ctx.printer.line(f"  cost: no price for {machine}; add prices.{machine}.on_demand to the environment",
                             "dim")
            return None
        spot = ctx.settings.hourly_price(machine, spot=True)
        cost = {"machine_type": machine, "nodes": 1,
                "on_demand_hourly": on_demand, "on_demand_monthly": on_demand * HOURS_PER_MONTH,
                "spot_hourly": spot, "spot_monthly": spot * HOURS_PER_MONTH if spot is not None else None,
                "assumed_tokens_per_s": self.throughput or None}
        if self.throughput and on_demand:
            cost["tokens_per_dollar"] = self.throughput * 3600 / on_demand
        if spot is not None and self.target.spot_manifests:
            cost.update(profile_costs(ctx.settings, self.target.name, on_demand, spot, self.throughput))
        return cost


def profile_costs(settings, target_name: str, on_demand: float, spot: float, throughput: float) -> dict:
    """Monthly cost of each capacity profile, and what each guarantees, under stated assumptions.

    A spot node costs its spot price, plus the node-hours a replacement is billed before it serves
    (preemptions x replacement time); the fallback profile pays on-demand for its fallback share."""
    from gptoss_gke import profiles as pr

    overhead = 1 + pr.ASSUMED_PREEMPTIONS_PER_NODE_DAY * pr.ASSUMED_REPLACEMENT_S / 86400
    spot_hour = spot * overhead
    mixed_hour = (1 - pr.ASSUMED_FALLBACK_SHARE) * spot_hour + pr.ASSUMED_FALLBACK_SHARE * on_demand
    gap = f"a gap of ~{pr.ASSUMED_REPLACEMENT_S / 60:.0f} min per preemption while the replacement loads"
    rows = [
        (pr.ON_DEMAND, 1, on_demand, "one replica, never preempted; a zonal claim holds the weights"),
        (pr.SPOT, pr.SPOT_REPLICAS, spot_hour,
         "one preemption leaves a replica serving (zones spread, PDB); with no spot left its replacement "
         "waits, and a second preemption then leaves none"),
        (pr.SPOT_WITH_FALLBACK, pr.SPOT_REPLICAS, mixed_hour,
         "never without a serving replica on one preemption; replacements fall back to on-demand when spot "
         "is unavailable"),
        (pr.SPOT_WITH_FALLBACK, 1, mixed_hour,
         f"the tutorial's 'about 3x cheaper': {gap} (replicas: 1)"),
    ]
    ts = settings.target_settings(target_name)
    out = []
    for name, replicas, hourly, guarantee in rows:
        monthly = replicas * hourly * HOURS_PER_MONTH
        out.append({"profile": name, "replicas": replicas, "hourly_per_node": round(hourly, 4),
                    "monthly": round(monthly, 2), "vs_tutorial": round(monthly / TUTORIAL_MONTHLY_USD, 3),
                    "tokens_per_dollar": round(throughput * 3600 / hourly) if throughput else None,
                    "guarantee": guarantee, "current": ts.capacity == name and ts.replicas == replicas})
    return {"profiles": out, "profile_assumptions": {
        "preemptions_per_node_day": pr.ASSUMED_PREEMPTIONS_PER_NODE_DAY, "replacement_s": pr.ASSUMED_REPLACEMENT_S,
        "fallback_share": pr.ASSUMED_FALLBACK_SHARE, "tutorial_monthly": TUTORIAL_MONTHLY_USD}}
