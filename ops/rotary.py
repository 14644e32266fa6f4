"""Rotary position embeddings: the cos/sin table and its in-place application.

`build_rope_cache` returns `[max_positions, rotary_dim]` float32 holding
`cos(pos * inv_freq)` in the first half of each row and `sin` in the second; the
products are formed in float32 exactly as Hugging Face forms them, so the table
is identical to theirs. `rotary_embedding` rotates query and key in place, in the
neox layout (halves) or the GPT-J layout (interleaved pairs); its shapes and
devices are checked once per call (`_check`), before any implementation. Positions
are range-checked where it costs nothing: by torch's `index_select` in the
reference and by the C kernel (`IndexError` either way), not by a reduction per
layer; the CUDA kernel trusts them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ops import cpu, cuda
from ops.cpu import rotary as cpu_rotary
from ops.cuda import rotary as cuda_rotary
from ops.dispatch import Impl, Op


def rope_inv_freq(
    rotary_dim: int, base: float, scaling: dict[str, Any] | None = None
) -> torch.Tensor:
    """The inverse frequencies `[rotary_dim // 2]` (float32), after `scaling`.

    Supported scaling types: none/"default", "linear" and "llama3" (Llama 3.1's
    frequency-dependent scaling). Raises ValueError for any other type."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    inv_freq = 1.0 / (base**exponents)
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if kind == "default":
        return inv_freq
    assert scaling is not None
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise ValueError(f"unsupported rope scaling type {kind!r} (supported: default, linear, llama3)")


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_len = float(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def build_rope_cache(inv_freq: torch.Tensor, max_positions: int) -> torch.Tensor:
    """`[max_positions, 2 * len(inv_freq)]` float32: cos then sin of `pos * inv_freq`."""
    positions = torch.arange(max_positions, dtype=torch.int64).to(torch.float32)
    freqs = positions[:, None] * inv_freq[None, :].to(torch.float32)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def _rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """Rotate `query` `[T, Hq, D]` and `key` `[T, Hkv, D]` in place by `positions`
    `[T]`. The first `cos_sin_cache.shape[1]` features of each head are rotated
    (partial rotary leaves the rest untouched)."""
    cos_sin = cos_sin_cache.index_select(0, positions)
    half = cos_sin.shape[-1] // 2
    cos = cos_sin[:, None, :half]
    sin = cos_sin[:, None, half:]
    for x in (query, key):
        _rotate_(x, cos.to(x.dtype), sin.to(x.dtype), 2 * half, is_neox)


def _rotate_(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int, is_neox: bool
) -> None:
    rot = x[..., :rotary_dim]
    if is_neox:
        x1, x2 = rot.chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    rot.copy_(out)


def _check(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
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
    device = query.device
    if positions.device != device or cos_sin_cache.device != device:
        raise ValueError(
            f"rotary_embedding: positions on {positions.device} and the table on "
            f"{cos_sin_cache.device}, query on {device}"
        )


rotary_embedding = Op(
    "rotary_embedding",
    _rotary_embedding,
    on=lambda positions, query, key, cos_sin_cache, is_neox=True: (query, key),
    validate=_check,
    kernels=[
        Impl(cuda.BACKEND, cuda_rotary.rotary_embedding),
        Impl(cpu.BACKEND, cpu_rotary.rotary_embedding),
    ],
)
