"""The target catalogue: everything a tutorial fixes about one deployment, errata applied.

Adding a target is one entry in CATALOGUE plus one folder under manifests/ (its workload; what every
target shares is in manifests/common/). The flags' help, the settings' `targets.<name>` keys and the
checks all come from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# What vLLM loads from a gpt-oss repo: the root shards, index, configs, tokenizer, chat template.
# The repos also carry original/ and metal/ copies of the weights (3x the bytes). fnmatch's `*`
# crosses `/`, so an allow-list like "*.safetensors" would pull original/ too: exclude explicitly.
GPTOSS_IGNORE = ("original/*", "metal/*")
GPTOSS_ALLOW = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class NodePoolShape:
    name: str
    machine_type: str
    accelerator_type: str | None = None  # GPU type for --accelerator; TPUs are implied by machine type
    accelerator_count: int = 0
    gpu_driver_version: str | None = None
    tpu_topology: str | None = None
    min_nodes: int = 0
    max_nodes: int = 1
    initial_nodes: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[str, ...] = ()  # key=value:Effect
    accelerator_resource: str = ""  # the Kubernetes extended resource a pod requests
    accelerator_memory_gib: float = 0.0  # per node, for `plan`
    min_gke_version: str | None = None
    tpu_accelerator: str | None = None  # the node label value GKE sets (cloud.google.com/gke-tpu-accelerator)

    @property
    def node_selector(self) -> dict[str, str]:
        """How a pod finds this pool's nodes, from the labels GKE puts on them."""
        if self.tpu_topology:
            return {"cloud.google.com/gke-tpu-accelerator": self.tpu_accelerator or "",
                    "cloud.google.com/gke-tpu-topology": self.tpu_topology}
        selector = {"cloud.google.com/gke-nodepool": self.name}
        if self.accelerator_type:
            selector["cloud.google.com/gke-accelerator"] = self.accelerator_type
        return selector


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    model_id: str
    model_revision: str  # a commit: weights never change under a running deployment
    image: str  # upstream serving image; mirrored into Artifact Registry and pinned by digest
    node_pool: NodePoolShape
    vllm_args: tuple[str, ...]
    weights: str  # "bucket" (staged to GCS, mounted with GCS FUSE) or "pvc" (downloaded in-cluster)
    manifests: str  # folder under manifests/
    load_budget_s: int  # image pull + weight load + compile, sizes the startupProbe and the wait
    smoke: str  # "chat" or "completion"
    port: int = 8000  # where vLLM listens in the pod
    service_port: int | None = None  # the ClusterIP Service's port (default: the same as port)
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.9
    kv_cache_dtype: str = "auto"
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    # For `inv plan`: weights as loaded into accelerator memory, the rest of vLLM's non-KV use, and a
    # throughput for tokens-per-dollar until a measured one is given.
    weight_memory_gib: float = 0.0
    memory_overhead_gib: float = 0.0  # per device: activations at max_num_batched_tokens, runtime, graphs
    memory_overhead_source: str = "not measured"
    kv_platform: str = "cuda"  # "tpu": vLLM's TPU backend sizes KV pages differently (not modelled)
    assumed_tokens_per_s: float = 0.0
    ignore_patterns: tuple[str, ...] = GPTOSS_IGNORE
    allow_patterns: tuple[str, ...] = GPTOSS_ALLOW
    # The folder the spot capacity profiles render (weights from the bucket, replicas across zones);
    # None: the target offers only on-demand capacity (gptoss_gke/profiles.py).
    spot_manifests: str | None = None
    # Cold start: the published figures the startup timeline is printed beside ((phase or "total",
    # seconds, what the source says)), and one line naming the source.
    startup_figures: tuple[tuple[str, float, str], ...] = ()
    startup_source: str = ""

    def with_overrides(self, **changes) -> "Target":
        pool = changes.pop("node_pool", None)
        target = replace(self, **{k: v for k, v in changes.items() if v is not None})
        if pool:
            target = replace(target, node_pool=replace(target.node_pool, **{k: v for k, v in pool.items()
                                                                             if v is not None}))
        return target


L4 = Target(
    name="l4",
    title="gpt-oss-20b on one NVIDIA L4 with vLLM 0.12 (the L4 tutorial)",
    model_id="openai/gpt-oss-20b",
    model_revision="6cee5e81ee83917806bbde320786a8fb61efebee",
    image="docker.io/vllm/vllm-openai:v0.12.0",
    node_pool=NodePoolShape(
        name="l4-gptoss",
        machine_type="g2-standard-4",
        accelerator_type="nvidia-l4",
        accelerator_count=1,
        gpu_driver_version="latest",
        min_nodes=0,
        max_nodes=1,
        initial_nodes=0,
        labels={"service": "gpt-oss-20b"},
        taints=("nvidia.com/gpu=present:NoSchedule",),
        accelerator_resource="nvidia.com/gpu",
        accelerator_memory_gib=22.49,  # 23,034 MiB usable of the 24 GB card
    ),
    # Errata applied: no --api-key on argv (vLLM reads VLLM_API_KEY), no --swap-space (the V1
    # engine never swaps), no --max-num-partial-prefills (1 is the default).
    vllm_args=(
        "--tensor-parallel-size=1",
        "--enable-auto-tool-choice",
        "--tool-call-parser=openai",
    ),
    weights="pvc",
    manifests="l4",
    spot_manifests="l4-spot",
    service_port=80,  # the L4 tutorial's Service
    load_budget_s=1200,
    smoke="chat",
    max_model_len=128000,
    gpu_memory_utilization=0.85,
    kv_cache_dtype="fp8",
    max_num_batched_tokens=8128,
    max_num_seqs=3,
    # "Model loading took 13.7193 GiB" in the tutorial's log; the overhead is what makes 0.85 x 22.49
    # GiB - weights come out at its measured "Available KV cache memory: 4.17 GiB".
    weight_memory_gib=13.7193,
    memory_overhead_gib=1.2237,
    memory_overhead_source="measured: the L4 tutorial's startup log",
    assumed_tokens_per_s=52.0,  # the tutorial's short-prompt figure
    # The L4 tutorial: ~20 minutes for the first start (13 GB download + compile), ~3 minutes for a restart
    # with the weights and torch.compile artifacts on the PVC; its startup log (a warm compile cache).
    startup_figures=(
        ("total", 1200.0, "~20 min first start, incl. the 13 GB download"),
        ("total", 180.0, "~3 min restart with a warm cache"),
        ("weights", 104.73, "Model loading took 13.7193 GiB memory and 104.729963 seconds"),
        ("compile", 13.67, "torch.compile takes 13.67 s in total (from the cache)"),
    ),
    startup_source="the L4 tutorial",
)

IRONWOOD = Target(
    name="ironwood",
    title="gpt-oss-120b on TPU v7 Ironwood 2x2x1 (the Ironwood tutorial)",
    model_id="openai/gpt-oss-120b",
    model_revision="b5c939de8f754692c1647ca79fbf85e8c1e70f8a",
    image="docker.io/vllm/vllm-tpu:nightly-ironwood-20251217-baf570b-0cd5353",
    node_pool=NodePoolShape(
        name="ironwood-gptoss",
        machine_type="tpu7x-standard-4t",
        tpu_topology="2x2x1",
        min_nodes=0,
        max_nodes=1,
        initial_nodes=0,  # created scaled to zero: a TPU node bills from the moment it exists
        labels={"service": "gpt-oss-120b"},
        accelerator_resource="google.com/tpu",
        accelerator_count=4,
        accelerator_memory_gib=4 * 192.0,  # 192 GB HBM per Ironwood chip
        min_gke_version="1.34.0-gke.2201000",
        tpu_accelerator="tpu7x",
    ),
    vllm_args=(
        "--tensor-parallel-size=2",
        "--data-parallel-size=4",
        "--no-enable-prefix-caching",
        "--load-format=runai_streamer",
        "--async-scheduling",
    ),
    weights="bucket",
    manifests="ironwood",
    load_budget_s=3600,
    smoke="completion",
    max_model_len=9216,
    gpu_memory_utilization=0.86,
    kv_cache_dtype="fp8",
    max_num_batched_tokens=16384,
    max_num_seqs=2048,
    weight_memory_gib=60.8,  # ~65.3 GB of root safetensors
    # Per TPU device (96 GiB; tensor parallel 2 x data parallel 4 over the slice's 8 devices). Nobody has
    # published this figure: an assumption, 3x L4's measured 1.2 GiB for twice the batched tokens.
    memory_overhead_gib=4.0,
    memory_overhead_source="assumed, not measured on Ironwood",
    kv_platform="tpu",
    startup_source="the Ironwood tutorial",
)

CATALOGUE: dict[str, Target] = {t.name: t for t in (L4, IRONWOOD)}
