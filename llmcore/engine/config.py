"""`EngineConfig`: the engine's knobs, and how KV memory turns into blocks."""

from __future__ import annotations

import os
from dataclasses import dataclass

from llmcore.model_config import ModelConfig

DEFAULT_CPU_KV_BYTES = 4 << 30


@dataclass(slots=True)
class EngineConfig:
    block_size: int = 16
    # KV cache size: bytes (int > 1), or a fraction (0 < x <= 1) of total memory;
    # None: min(4 GiB, a quarter of memory) on the CPU.
    kv_cache_memory: float | int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # cap below the model's own context
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    max_logprobs: int = 20
    seed: int | None = None  # of the shared generator for unseeded requests
    task: str = "auto"  # "generate" | "embed"; auto: embed for encoders, else generate
    # The KV cache's dtype: "auto" (the model's), "float32", "bfloat16", "float16"
    kv_cache_dtype: str = "auto"
    # No CUDA graphs for decode steps (`llmcore.decode_graphs`; CUDA devices only)
    enforce_eager: bool = False
    # Build a step's output deltas while the next step runs on the GPU (None: on
    # for CUDA devices; see `EngineCore.step`)
    overlap_steps: bool | None = None
    # Schedule and launch the next step before the last one's tokens are known
    # (vLLM's async scheduling; None: on for CUDA devices; implies overlap_steps)
    async_scheduling: bool | None = None
    # A stream's deltas after its first: at least this many new tokens each (or
    # its end), as vLLM's --stream-interval; 1: every step's
    stream_interval: int = 1

    def kv_bytes_per_token(self, model: ModelConfig, dtype_size: int) -> int:
        return 2 * model.num_hidden_layers * model.num_key_value_heads * model.head_dim * dtype_size

    def kv_cache_bytes(self) -> int:
        total = _total_memory()
        value = self.kv_cache_memory
        if value is None:
            return min(DEFAULT_CPU_KV_BYTES, total // 4)
        if 0 < value <= 1:
            return int(total * value)
        if value > 1:
            return int(value)
        raise ValueError(f"kv_cache_memory must be bytes or a fraction in (0, 1], got {value}")

    def num_blocks(self, model: ModelConfig, dtype_size: int) -> int:
        per_block = self.kv_bytes_per_token(model, dtype_size) * self.block_size
        return max(1, self.kv_cache_bytes() // per_block)


def _total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_memory(text: str) -> float | int:
    """`--kv-cache-memory`: "0.2" (a fraction), "2GiB", "512MB", "1e9" (bytes)."""
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    lowered = text.strip().lower()
    for suffix, scale in units.items():
        if lowered.endswith(suffix):
            return int(float(lowered[: -len(suffix)]) * scale)
    value = float(lowered)
    return value if value <= 1 else int(value)
