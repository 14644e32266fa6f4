"""C implementations of `ops` for the CPU, float32 (see `_build` for how they load).

`available(*tensors)` says whether a call on these tensors takes the C path: all
are float32 on the CPU and the kernels are built. Each op here has the signature
of its torch reference in `ops/` and is tested against it.
"""

from __future__ import annotations

import torch

from ops.cpu._build import library
from ops.layout import rows_of, with_contiguous_heads

# Attention shapes the kernel takes (its stack buffers; whole 16-float vectors);
# others take the torch path.
MAX_GROUP, MAX_HEAD_DIM = 16, 256


def available(*tensors: torch.Tensor) -> bool:
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return library() is not None


def attention_supported(num_heads: int, num_kv_heads: int, head_dim: int, block_size: int) -> bool:
    return (
        num_heads % num_kv_heads == 0
        and num_heads // num_kv_heads <= MAX_GROUP
        and head_dim <= MAX_HEAD_DIM
        and head_dim % 16 == 0
        and block_size >= 1
    )


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor | None,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of `query` `[T, Hq, D]` over the paged cache, read in place.

    `query_start_loc` `[B + 1]` places each sequence's rows as in
    `paged_attention_prefill`; None means one row per sequence (decode)."""
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
    # Rows before query_start_loc[0] belong to no sequence: the kernel skips them.
    skipped = starts is not None and int(starts[0]) != 0
    out = (torch.zeros if skipped else torch.empty)(
        num_tokens, num_heads, head_dim, dtype=query.dtype
    )
    rc = lib.llmcore_paged_attention_f32(
        query.data_ptr(), query.stride(0), query.stride(1),
        key_cache.data_ptr(), value_cache.data_ptr(),
        tables.data_ptr(), tables.stride(0),
        lens.data_ptr(), None if starts is None else starts.data_ptr(),
        lens.shape[0], num_heads, num_kv_heads, head_dim, block_size, float(scale),
        out.data_ptr(), out.stride(0), out.stride(1),
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError("llmcore_paged_attention_f32 failed (sizes past its buffers?)")
    return out


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """As `ops.reshape_and_cache` (caches must be contiguous)."""
    lib = library()
    assert lib is not None and key_cache.is_contiguous() and value_cache.is_contiguous()
    slot_shape = key_cache.shape[2:]
    if (
        key.dim() != 3
        or key.shape[1:] != slot_shape
        or value.shape != key.shape
        or value_cache.shape != key_cache.shape
        or slot_mapping.shape != (key.shape[0],)
    ):
        raise ValueError(
            f"reshape_and_cache: key {tuple(key.shape)}, value {tuple(value.shape)} and "
            f"slot_mapping {tuple(slot_mapping.shape)} do not fit caches {tuple(key_cache.shape)}"
        )
    key, value = with_contiguous_heads(key), with_contiguous_heads(value)
    slots = slot_mapping.to(torch.int64).contiguous()
    rc = lib.llmcore_reshape_and_cache_f32(
        key.data_ptr(), key.stride(0), value.data_ptr(), value.stride(0),
        key_cache.data_ptr(), value_cache.data_ptr(), slots.data_ptr(),
        key.shape[0], key_cache.shape[2] * key_cache.shape[3],
        key_cache.shape[0] * key_cache.shape[1],
    )  # fmt: skip
    if rc != 0:  # checked by the kernel before it writes anything
        raise IndexError("slot_mapping points past the end of the KV cache")


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """As `ops.rotary_embedding`, in place (query and key must have a contiguous
    last dim; the cache float32 and contiguous)."""
    lib = library()
    assert lib is not None and query.stride(-1) == 1 and key.stride(-1) == 1
    rotary_dim = cos_sin_cache.shape[1]
    if (
        query.dim() != 3
        or key.dim() != 3
        or positions.shape != (query.shape[0],)
        or key.shape[0] != query.shape[0]
        or rotary_dim > min(query.shape[2], key.shape[2])
        or rotary_dim % 2
    ):
        raise ValueError(
            f"rotary_embedding: positions {tuple(positions.shape)}, query "
            f"{tuple(query.shape)}, key {tuple(key.shape)} and a table of width {rotary_dim} "
            "do not fit"
        )
    pos = positions.to(torch.int64).contiguous()
    cos_sin = cos_sin_cache.contiguous()
    rc = lib.llmcore_rotary_embedding_f32(
        pos.data_ptr(), query.data_ptr(), query.stride(0), query.stride(1), query.shape[1],
        key.data_ptr(), key.stride(0), key.stride(1), key.shape[1],
        cos_sin.data_ptr(), cos_sin.shape[0], cos_sin.shape[1], query.shape[0], int(is_neox),
    )  # fmt: skip
    if rc != 0:  # checked by the kernel before it rotates anything
        raise IndexError("a position is outside the rotary cos/sin table")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As `ops.rms_norm`."""
    lib = library()
    assert lib is not None
    rows, w = rows_of(x), weight.contiguous()
    out = torch.empty(rows.shape, dtype=x.dtype)
    lib.llmcore_rms_norm_f32(
        rows.data_ptr(), rows.stride(0), w.data_ptr(), float(eps),
        out.data_ptr(), out.stride(0), rows.shape[0], rows.shape[1],
    )  # fmt: skip
    return out.view(x.shape)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """As `ops.fused_add_rms_norm`: `(rms_norm(x + residual), x + residual)`."""
    lib = library()
    assert lib is not None
    xr, rr, w = rows_of(x), rows_of(residual), weight.contiguous()
    out = torch.empty(xr.shape, dtype=x.dtype)
    summed = torch.empty(xr.shape, dtype=x.dtype)
    lib.llmcore_fused_add_rms_norm_f32(
        xr.data_ptr(), xr.stride(0), rr.data_ptr(), rr.stride(0), w.data_ptr(), float(eps),
        out.data_ptr(), summed.data_ptr(), xr.shape[0], xr.shape[1],
    )  # fmt: skip
    return out.view(x.shape), summed.view(x.shape)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """As `ops.silu_and_mul`."""
    lib = library()
    assert lib is not None
    rows = rows_of(x)
    d = rows.shape[1] // 2
    out = torch.empty(rows.shape[0], d, dtype=x.dtype)
    lib.llmcore_silu_and_mul_f32(rows.data_ptr(), rows.stride(0), out.data_ptr(), rows.shape[0], d)
    return out.view(*x.shape[:-1], d)


__all__ = [
    "attention_supported",
    "available",
    "fused_add_rms_norm",
    "library",
    "paged_attention",
    "reshape_and_cache",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
]
