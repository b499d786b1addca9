"""`inv plan`: will it fit, how many KV tokens, what concurrency, what it costs — before paying.

The KV arithmetic is vLLM 0.12's own (serving/capacity.py); the memory available for the KV cache is
either given (--kv-cache-memory, as vLLM's --kv-cache-memory-bytes) or estimated and labelled so.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptoss_gke.core.step import Plan, Step, noop
from gptoss_gke.errors import ConfigError, StepError

GIB = 1 << 30
HOURS_PER_MONTH = 730


def load_model_config(model: str) -> dict:
    """A catalogue model id, or a path to a Hugging Face config.json."""
    from gptoss_gke.serving.capacity import catalogue_model_ids, load_catalogue_config

    if model in catalogue_model_ids():
        return load_catalogue_config(model)
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ConfigError(f"--model {model}: neither a catalogue model ({', '.join(catalogue_model_ids())}) "
                          f"nor a config.json file", "download the model's config.json and pass its path")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})", "pass the model's config.json") from None


class CapacityPlan(Step):
    section = "plan"

    def __init__(self, settings, target_name: str, *, model=None, kv_cache_memory=None, max_model_len=None,
                 max_num_batched_tokens=None, kv_cache_dtype=None, block_size=None, throughput=None):
        self.target = settings.target(target_name)
        self.model = model or self.target.model_id
        self.kv_cache_memory = kv_cache_memory
        self.max_model_len = max_model_len or self.target.max_model_len
        self.max_num_batched_tokens = max_num_batched_tokens or self.target.max_num_batched_tokens
        self.kv_cache_dtype = kv_cache_dtype or self.target.kv_cache_dtype
        self.block_size = block_size
        self.throughput = throughput or self.target.assumed_tokens_per_s
        self.name = f"capacity of {target_name}: {self.model}"
        self.report: dict = {}

    def plan(self, ctx, current) -> Plan:
        from gptoss_gke.serving.capacity import ModelShape, estimate_kv_cache_memory, kv_cache_plan

        t = self.target
        pool = t.node_pool
        shape = ModelShape.from_hf_config(load_model_config(self.model))
        warnings: list[str] = []
        accel = int(pool.accelerator_memory_gib * GIB)
        weights = int(t.weight_memory_gib * GIB)
        if self.kv_cache_memory is not None:
            kv_memory, estimated = int(self.kv_cache_memory), False
        else:
            kv_memory = estimate_kv_cache_memory(accel, t.gpu_memory_utilization, weights,
                                                 int(t.memory_overhead_gib * GIB))
            estimated = True
            if kv_memory == 0:
                warnings.append("weights leave no room for the KV cache at this gpu_memory_utilization")
        limit = shape.derived_max_model_len
        if limit and self.max_model_len > limit:
            warnings.append(f"max-model-len {self.max_model_len:,} exceeds the model's limit {limit:,}")
        report = {
            "target": t.name, "model": self.model, "accelerator": pool.accelerator_type or pool.machine_type,
            "accelerator_memory_bytes": accel, "weight_bytes": weights,
            "kv_cache_memory_bytes": kv_memory, "kv_cache_memory_estimated": estimated,
            "max_model_len": self.max_model_len, "max_num_batched_tokens": self.max_num_batched_tokens,
            "kv_cache_dtype": self.kv_cache_dtype, "max_num_seqs": t.max_num_seqs,
        }
        if t.kv_platform != "cuda":
            report.update(kv_cache_tokens=None, max_concurrency=None)
            verdict = (f"weights {t.weight_memory_gib:.1f} GiB of {pool.accelerator_memory_gib:.0f} GiB "
                       f"{pool.machine_type} memory; KV-token arithmetic is modelled for GPUs only "
                       f"(vLLM's TPU backend pages differently)")
        else:
            kv = kv_cache_plan(shape, kv_cache_memory_bytes=kv_memory, max_model_len=self.max_model_len,
                               max_num_batched_tokens=self.max_num_batched_tokens,
                               kv_cache_dtype=self.kv_cache_dtype, block_size=self.block_size)
            report.update(kv_cache_tokens=kv.kv_cache_tokens, max_concurrency=kv.max_concurrency,
                          max_concurrency_display=kv.max_concurrency_display, num_kv_groups=kv.num_groups,
                          page_size_bytes=kv.page_size_bytes, bytes_per_token_by_type=kv.bytes_per_token_by_type,
                          memory_per_request_bytes=kv.memory_per_request_bytes, fits=kv.fits,
                          vllm_log_lines=list(kv.log_lines), explanation=list(kv.explanation))
            if kv.fits and kv.max_concurrency < t.max_num_seqs:
                warnings.append(f"max-num-seqs {t.max_num_seqs} long requests need {t.max_num_seqs}x the pool; "
                                f"it holds {kv.max_concurrency_display}x at {self.max_model_len:,} tokens "
                                f"(vLLM preempts and recomputes the rest)")
            label = " (estimate)" if estimated else ""
            verdict = (f"KV cache {kv_memory / GIB:.2f} GiB{label} holds {kv.kv_cache_tokens:,} tokens; "
                       f"{kv.max_concurrency_display}x concurrency at {self.max_model_len:,} tokens per request")
            if not kv.fits:
                report["warnings"] = warnings
                self.report = report
                raise StepError(
                    f"does not fit: one {self.max_model_len:,}-token request needs "
                    f"{kv.required_memory_bytes / GIB:.2f} GiB of KV cache, {kv_memory / GIB:.2f} GiB available"
                    + (" (estimate)" if estimated else ""),
                    f"lower --max-model-len to {kv.estimated_max_model_len:,} or use kv_cache_dtype fp8"
                    if kv.estimated_max_model_len else "use a larger accelerator")
        report["cost"] = self._cost(ctx)
        report["warnings"] = warnings
        self.report = report
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
        return noop(f"fits: {verdict}", **{k: report[k] for k in ("kv_cache_tokens", "max_concurrency")})

    def _cost(self, ctx) -> dict | None:
        machine = self.target.node_pool.machine_type
        price = ctx.settings.prices.get(machine)
        if price is None:
            ctx.printer.line(f"  cost: no price for {machine}; add prices.{machine}.on_demand to the environment",
                             "dim")
            return None
        cost = {"machine_type": self.target.node_pool.machine_type, "nodes": 1,
                "on_demand_hourly": price.on_demand, "on_demand_monthly": price.on_demand * HOURS_PER_MONTH,
                "spot_hourly": price.spot,
                "spot_monthly": price.spot * HOURS_PER_MONTH if price.spot is not None else None,
                "assumed_tokens_per_s": self.throughput or None}
        if self.throughput and price.on_demand:
            cost["tokens_per_dollar"] = self.throughput * 3600 / price.on_demand
        return cost
