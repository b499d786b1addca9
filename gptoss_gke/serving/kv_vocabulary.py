"""What vLLM 0.12 accepts for the KV cache's dtype and block size: the values `inv plan` checks on its command
line and the arithmetic in ``capacity.py`` uses. Kept apart from that arithmetic so that building the task
list (`inv --list`) does not import it."""

# vllm/config/cache.py BlockSize literal.
VALID_BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)

# vllm/config/cache.py CacheDType, mapped to bytes per element through
# vllm/utils/torch_utils.py STR_DTYPE_TO_TORCH_DTYPE ("fp8*" are stored as uint8). "auto" means the
# model dtype (kv_cache_dtype_str_to_dtype). "fp8_ds_mla" is MLA-only and rejected here.
KV_DTYPE_BYTES = {"bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1}

# What `inv plan` accepts on its command line (checked before any step).
KV_CACHE_DTYPES = ("auto", *KV_DTYPE_BYTES)
BLOCK_SIZES = tuple(str(n) for n in VALID_BLOCK_SIZES)
