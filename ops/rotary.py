"""Rotary position embeddings: the cos/sin table and its in-place application.

`build_rope_cache` returns `[max_positions, rotary_dim]` float32 holding
`cos(pos * inv_freq)` in the first half of each row and `sin` in the second
(times YaRN's or LongRoPE's attention factor); the products are formed in float32
exactly as Hugging Face forms them, so the table is identical to theirs.
`rope_inv_freq` and `rope_attention_factor` follow transformers'
`ROPE_INIT_FUNCTIONS` for every scaling type, except that the two types
transformers makes depend on the length of each forward pass (dynamic NTK,
LongRoPE) are fixed by the served length instead (see `rope_inv_freq`).
`rotary_embedding` rotates query and key in place, in the neox layout (halves) or
the GPT-J layout (interleaved pairs); its shapes and devices are checked once per
call (`_check`), before any implementation. Positions are range-checked where it
costs nothing: by torch's `index_select` in the reference and by the C kernel
(`IndexError` either way), not by a reduction per layer; the CUDA kernel trusts
them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ops import cpu, cuda
from ops.cpu import rotary as cpu_rotary
from ops.cuda import rotary as cuda_rotary
from ops.dispatch import Impl, Op

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


def rope_type(scaling: dict[str, Any] | None) -> str:
    """The rope type a `rope_scaling` / `rope_parameters` dict names ("su", LongRoPE's
    old name, reads as "longrope"); "default" for none."""
    kind = str((scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default")
    return "longrope" if kind == "su" else kind


def rope_inv_freq(
    rotary_dim: int,
    base: float,
    scaling: dict[str, Any] | None = None,
    *,
    max_position_embeddings: int | None = None,
    max_positions: int | None = None,
) -> torch.Tensor:
    """The inverse frequencies `[rotary_dim // 2]` (float32), after `scaling`, formed
    as `transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS` forms them.

    Scaling types: none/"default", "linear", "llama3", "yarn" (`factor`,
    `original_max_position_embeddings`, `beta_fast`/`beta_slow`, `truncate`),
    "dynamic" (NTK) and "longrope" (`short_factor`/`long_factor`,
    `original_max_position_embeddings`; "su" is its old name). Raises ValueError
    for any other type or a missing parameter. `max_position_embeddings` is the
    config's; yarn and longrope default `original_max_position_embeddings` to it
    as transformers does.

    Position-consistent rule: in a paged, prefix-cached server a key is rotated
    once, when it is written, so every token's rotation may depend only on its
    position and the model, never on the length of the forward pass it came in.
    transformers makes two types depend on the pass (`dynamic_rope_update`):
    dynamic NTK recomputes the base from the pass's last position, and LongRoPE
    switches from short to long factors once a pass reaches past
    `original_max_position_embeddings`, so its own cached keys then disagree with
    its new ones. Here both are fixed by `max_positions`, the longest sequence the
    cos/sin table serves (default `max_position_embeddings`), as vLLM fixes them by
    its `max_model_len`:
    - dynamic: the NTK base for a sequence of `max_positions` tokens, i.e. the
      unscaled rope while `max_positions <= max_position_embeddings`. Equal to
      transformers for every pass within `max_position_embeddings`; past it,
      equal only for a pass ending exactly at `max_positions`.
    - longrope: `long_factor` for every position when `max_positions >
      original_max_position_embeddings` (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini
      served at their full context), else `short_factor`. Equal to transformers
      for passes that reach past `original_max_position_embeddings` (long) or stay
      within it (short), respectively; transformers rotates a short sequence on a
      long-context model with the short factors, this table with the long ones."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    kind = rope_type(scaling)
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"unsupported rope scaling type {kind!r} (supported: {', '.join(ROPE_TYPES)})"
        )
    if kind == "default":
        return 1.0 / (base**exponents)
    assert scaling is not None
    try:
        if kind == "linear":
            return 1.0 / (base**exponents) / float(scaling["factor"])
        if kind == "llama3":
            return _llama3_inv_freq(1.0 / (base**exponents), scaling)
        if kind == "dynamic":
            return _dynamic_ntk_inv_freq(
                rotary_dim, base, scaling, _need(max_position_embeddings, kind), max_positions
            )
        original = _original_max(scaling, max_position_embeddings, kind)
        if kind == "yarn":
            return _yarn_inv_freq(rotary_dim, base, scaling, original, max_position_embeddings)
        sets = {k: [float(f) for f in scaling[k]] for k in ("short_factor", "long_factor")}
    except KeyError as exc:
        raise ValueError(f"rope scaling {kind!r} lacks the parameter {exc.args[0]!r}") from exc
    for key, values in sets.items():  # longrope
        if len(values) != len(exponents):
            raise ValueError(
                f"rope scaling 'longrope': {key} has {len(values)} entries for a "
                f"rotary dimension of {rotary_dim} (want {len(exponents)})"
            )
    served = max_positions or _need(max_position_embeddings, kind)
    chosen = sets["long_factor" if served > original else "short_factor"]
    factors = torch.tensor(chosen, dtype=torch.float32)
    return 1.0 / (factors * base**exponents)


def rope_attention_factor(
    scaling: dict[str, Any] | None, max_position_embeddings: int | None = None
) -> float:
    """The factor transformers multiplies cos and sin by (its `attention_scaling`):
    `attention_factor` if the config names it; else, for yarn, YaRN's
    `0.1 * ln(factor) + 1` (or the ratio of the `mscale` and `mscale_all_dim`
    forms), for longrope `sqrt(1 + ln(factor) / ln(original))` with `factor`
    defaulting to `max_position_embeddings / original_max_position_embeddings`;
    1.0 for every other type."""
    kind = rope_type(scaling)
    if kind not in ("yarn", "longrope"):
        return 1.0
    assert scaling is not None
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    original = _original_max(scaling, max_position_embeddings, kind)
    factor = scaling.get("factor")
    if factor is None:
        factor = _need(max_position_embeddings, kind) / original
    factor = float(factor)
    if kind == "yarn":
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            return _yarn_mscale(factor, float(mscale)) / _yarn_mscale(factor, float(mscale_all_dim))
        return _yarn_mscale(factor)
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original))


def _need(max_position_embeddings: int | None, kind: str) -> int:
    if max_position_embeddings is None:
        raise ValueError(f"rope scaling {kind!r} needs the model's max_position_embeddings")
    return int(max_position_embeddings)


def _original_max(scaling: dict[str, Any], max_position_embeddings: int | None, kind: str) -> int:
    original = scaling.get("original_max_position_embeddings")
    return int(original) if original else _need(max_position_embeddings, kind)


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


def _dynamic_ntk_inv_freq(
    rotary_dim: int,
    base: float,
    scaling: dict[str, Any],
    max_position_embeddings: int,
    max_positions: int | None,
) -> torch.Tensor:
    """NTK-aware base for a sequence of `max_positions` tokens (never fewer than
    `max_position_embeddings`: no scaling within the trained context)."""
    factor = float(scaling["factor"])
    seq_len = max(max_positions or max_position_embeddings, max_position_embeddings)
    ntk = (factor * seq_len / max_position_embeddings) - (factor - 1)
    scaled_base = base * ntk ** (rotary_dim / (rotary_dim - 2))
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    return 1.0 / (scaled_base**exponents)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_inv_freq(
    rotary_dim: int,
    base: float,
    scaling: dict[str, Any],
    original: int,
    max_position_embeddings: int | None,
) -> torch.Tensor:
    """YaRN: interpolated (divided by `factor`) below the correction range of
    dimensions, extrapolated (unscaled) above it, a linear ramp between."""
    factor = scaling.get("factor")
    factor = float(
        factor if factor is not None else _need(max_position_embeddings, "yarn") / original
    )
    beta_fast = float(scaling.get("beta_fast") or 32)
    beta_slow = float(scaling.get("beta_slow") or 1)
    truncate = scaling.get("truncate", True)

    def correction_dim(rotations: float) -> float:
        return (rotary_dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = (torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)
    extrapolate = 1 - ramp.clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, rotary_dim, 2).to(torch.float32) / rotary_dim)
    interpolated, extrapolated = 1.0 / (factor * pos_freqs), 1.0 / pos_freqs
    return interpolated * (1 - extrapolate) + extrapolated * extrapolate


def build_rope_cache(
    inv_freq: torch.Tensor, max_positions: int, attention_factor: float = 1.0
) -> torch.Tensor:
    """`[max_positions, 2 * len(inv_freq)]` float32: cos then sin of `pos * inv_freq`,
    each times `attention_factor` (YaRN's and LongRoPE's scaling of cos and sin, as
    transformers applies it; see `rope_attention_factor`)."""
    positions = torch.arange(max_positions, dtype=torch.int64).to(torch.float32)
    freqs = positions[:, None] * inv_freq[None, :].to(torch.float32)
    cos, sin = freqs.cos(), freqs.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return torch.cat([cos, sin], dim=-1)


def rope_cache(
    rotary_dim: int,
    base: float,
    scaling: dict[str, Any] | None,
    max_position_embeddings: int,
    *,
    max_positions: int | None = None,
    freq_factors: torch.Tensor | None = None,
) -> torch.Tensor:
    """The cos/sin table of a model's rope for positions `[0, max_positions)`
    (default `max_position_embeddings`): `rope_inv_freq` (divided by a GGUF's
    `freq_factors` where it has them) and `rope_attention_factor`."""
    served = max_positions or max_position_embeddings
    inv_freq = rope_inv_freq(
        rotary_dim,
        base,
        scaling,
        max_position_embeddings=max_position_embeddings,
        max_positions=served,
    )
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.float().cpu()
    return build_rope_cache(
        inv_freq, served, rope_attention_factor(scaling, max_position_embeddings)
    )


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
