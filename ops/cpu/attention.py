"""C kernel of paged attention for float32 CPU queries (kernels/attention.c) over
float32, float16 or bfloat16 caches (each element converted to float32 exactly as it
is loaded; the arithmetic is the float32 cache's).

One kernel serves decode and prefill: a task per (query row, kv head) walks its
sequence's blocks in place with an online softmax (no gather, no padding, no
mask), so a sequence's result does not depend on the rest of the batch. A
sliding window starts each row's walk at its window (blocks before it are never
read); a soft cap is applied to each tile of scores before the softmax.
`supports` says which shapes its stack buffers take (group size, head size);
other shapes run the torch reference.
"""

from __future__ import annotations

import torch

from ops.cpu._build import library
from ops.cpu.kv_cache import KV_DTYPES

# Attention shapes the kernel takes (its stack buffers; whole 16-float vectors).
MAX_GROUP, MAX_HEAD_DIM = 16, 256


def attention_supported(num_heads: int, num_kv_heads: int, head_dim: int, block_size: int) -> bool:
    return (
        num_heads % num_kv_heads == 0
        and num_heads // num_kv_heads <= MAX_GROUP
        and head_dim <= MAX_HEAD_DIM
        and head_dim % 16 == 0
        and block_size >= 1
    )


def supports(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> bool:
    """The dispatch test of both attention ops (their dispatch tensors)."""
    _, block_size, num_kv_heads, head_dim = key_cache.shape
    return attention_supported(query.shape[1], num_kv_heads, head_dim, block_size)


def paged_attention_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """As `ops.paged_attention_decode`: one query row per sequence."""
    return _paged_attention(
        query, key_cache, value_cache, block_tables, None, seq_lens, scale, sliding_window,
        soft_cap,
    )  # fmt: skip


def paged_attention_prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """As `ops.paged_attention_prefill`. Rows before `query_start_loc[0]` belong to
    no sequence: the kernel skips them and they come back as zeros."""
    return _paged_attention(
        query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, scale,
        sliding_window, soft_cap,
    )  # fmt: skip


def _paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor | None,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    soft_cap: float | None,
) -> torch.Tensor:
    """Causal attention of `query` `[T, Hq, D]` over the paged cache, read in place;
    `query_start_loc` None means one row per sequence (decode). The kernel takes
    0 for no window and no cap."""
    lib = library()
    assert lib is not None
    if query.stride(-1) != 1:
        query = query.contiguous()
    key_cache, value_cache = key_cache.contiguous(), value_cache.contiguous()
    tables = block_tables.to(torch.int32).contiguous()  # no copy when already so
    lens = seq_lens.to(torch.int32).contiguous()
    starts = None if query_start_loc is None else query_start_loc.to(torch.int32).contiguous()
    num_tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    skipped = starts is not None and int(starts[0]) != 0
    out = (torch.zeros if skipped else torch.empty)(
        num_tokens, num_heads, head_dim, dtype=query.dtype
    )
    rc = lib.llmcore_paged_attention_f32(
        query.data_ptr(), query.stride(0), query.stride(1),
        key_cache.data_ptr(), value_cache.data_ptr(), KV_DTYPES[key_cache.dtype],
        tables.data_ptr(), tables.stride(0),
        lens.data_ptr(), None if starts is None else starts.data_ptr(),
        lens.shape[0], num_heads, num_kv_heads, head_dim, block_size, float(scale),
        sliding_window or 0, float(soft_cap or 0.0), out.data_ptr(), out.stride(0), out.stride(1),
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError("llmcore_paged_attention_f32 failed (sizes past its buffers?)")
    return out
