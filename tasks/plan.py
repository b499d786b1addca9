"""`inv plan`: offline, per target, will the model fit, how many KV tokens, what concurrency, what it costs."""

from gptoss_gke.cli import playbook_task
from gptoss_gke.flags import ByteSize, Choice, Integer, ModelConfig, Number
from gptoss_gke.serving.kv_vocabulary import BLOCK_SIZES, KV_CACHE_DTYPES


@playbook_task(
    common=("env", "set_", "report"),
    target="one",
    model=ModelConfig("a catalogue model id or the path of a Hugging Face config.json (default: the target's)"),
    kv_cache_memory=ByteSize("memory for the KV cache, as vLLM's --kv-cache-memory-bytes: 4GiB, 4.5GB, "
                             "4294967296 (default: estimated)"),
    max_model_len=Integer("tokens per request (default: the target's)", minimum=1, human=True),
    max_num_batched_tokens=Integer("vLLM's --max-num-batched-tokens (default: the target's)", minimum=1,
                                   human=True),
    kv_cache_dtype=Choice("KV cache dtype (default: the target's)", choices=KV_CACHE_DTYPES),
    block_size=Choice("KV block size in tokens (default: vLLM's for the platform)", choices=BLOCK_SIZES),
    throughput=Number("output tokens/s for tokens-per-dollar (default: the target's measured or assumed figure)"),
)
def plan(c, f):
    """Offline: will the model fit, KV tokens, max concurrency (vLLM's arithmetic), and cost."""
    from gptoss_gke.playbook import playbook
    from gptoss_gke.serving.plan import CapacityPlan

    with playbook(c, "plan", f, needs_project=False) as pb:
        steps = [CapacityPlan(pb.settings, t, model=f.model, kv_cache_memory=f.kv_cache_memory,
                              max_model_len=f.max_model_len, max_num_batched_tokens=f.max_num_batched_tokens,
                              kv_cache_dtype=f.kv_cache_dtype,
                              block_size=int(f.block_size) if f.block_size else None, throughput=f.throughput)
                 for t in pb.ctx.targets]
        pb.run(steps)
        pb.extra["plans"] = [s.report for s in steps]
        if len(steps) == 1:
            pb.extra.update({k: steps[0].report.get(k) for k in ("kv_cache_tokens", "max_concurrency")})
