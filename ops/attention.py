"""Attention over the paged KV cache (torch reference).

Layout: the cache of one layer is `[num_blocks, block_size, num_kv_heads, head_dim]`;
sequence `i` owns the blocks `block_tables[i, :ceil(seq_lens[i] / block_size)]`, in
order. Grouped-query attention: query head `h` reads kv head `h // (Hq // Hkv)`.

`paged_attention_prefill` handles any number of query tokens per sequence (a whole
prompt, a chunk of one after earlier chunks, or a single decode token): the query
tokens of sequence `i` are the last `q_len` of its `seq_lens[i]` tokens, and each
attends causally to every token at or before its own position.
`paged_attention_decode` is the one-token-per-sequence case.

Both ops check their arguments' shapes and devices once per call (`_check_*`), then
dispatch: the C kernel of `ops.cpu.attention` (float32 CPU queries, caches of
float32, float16 or bfloat16, groups up to 16, head sizes a multiple of 16 up to
256) and the CUDA kernels of `ops.cuda.attention` (head sizes 64/80/96/128) read the
cache in place. The torch reference gathers every sequence's keys and values token
by token (one `index_select` per cache) into a padded batch and makes one attention
call. Positions past a sequence's end gather a copy of its last token instead of an
unwritten slot, so whatever those slots hold (even NaN) never reaches the
arithmetic; the mask then gives the copies zero weight.

The caches may hold another dtype than the query (issue 19: float16 or bfloat16
caches with float32 queries, which the C kernel reads in place; the reference casts
the gathered keys and values to the query's dtype).

Two options serve the Gemma and Mistral families:
- `sliding_window=W`: a query at position `p` sees keys at positions `p - W + 1`
  to `p` (Hugging Face's `q - k < W`). Blocks wholly before the window of a
  sequence's first new token are never read: their block-table entries may name
  freed blocks.
- `soft_cap=c`: scores become `c * tanh(score / c)` (after `scale`) before the
  softmax (Gemma 2's attention logit soft-capping).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ops import cpu, cuda
from ops.cpu import attention as cpu_attention
from ops.cuda import attention as cuda_attention
from ops.dispatch import Impl, Op

# A batched prefill pads every sequence's query rows to the longest; past this much
# padding (padded rows / real rows) one call per sequence does less work.
_MAX_QUERY_PADDING = 2.0


def _gather_padded(
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    max_len: int,
    dtype: torch.dtype,
    first: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values `[B, Hkv, max_len, D]` of `dtype` (the query's; strided views
    where the cache has it already): each sequence's cached
    tokens, the positions past its end filled with copies of its last token, and
    those before `first` (`[B]`, a sliding window's start) with copies of the
    token at `first`: blocks out of every query's window are never read (the KV
    cache manager may have freed them)."""
    block_size, num_kv_heads, head_dim = key_cache.shape[1:]
    positions = torch.arange(max_len, device=key_cache.device)
    last = (seq_lens.to(positions.dtype) - 1).clamp_(min=0)
    positions = torch.minimum(positions[None, :], last[:, None])  # [B, max_len]
    if first is not None:
        positions = torch.maximum(positions, torch.minimum(first, last)[:, None])
    blocks = block_tables.long().gather(1, positions // block_size)
    slots = (blocks * block_size + positions % block_size).flatten()
    shape = (seq_lens.shape[0], max_len, num_kv_heads, head_dim)
    k = key_cache.view(-1, num_kv_heads * head_dim).index_select(0, slots).view(shape)
    v = value_cache.view(-1, num_kv_heads * head_dim).index_select(0, slots).view(shape)
    return k.transpose(1, 2).to(dtype), v.transpose(1, 2).to(dtype)


def _paged_attention_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """One query token per sequence: `query` `[B, Hq, D]` -> `[B, Hq, D]`.

    `block_tables` is `[B, max_blocks]` int32/int64, `seq_lens` `[B]` (tokens in
    the cache for each sequence, the new one included). All sequences are served
    by one attention call over their tokens gathered to the longest length, the
    shorter ones masked past their end. `sliding_window` and `soft_cap` as in
    the module's docstring."""
    num_seqs, num_heads, head_dim = query.shape
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    max_len = int(seq_lens.max())
    first = _window_start(seq_lens, 1, sliding_window)
    k, v = _gather_padded(
        key_cache, value_cache, block_tables, seq_lens, max_len, query.dtype, first
    )
    mask = None
    if bool((seq_lens != max_len).any()) or first is not None:
        positions = torch.arange(max_len, device=query.device)
        valid = positions[None, :] < seq_lens[:, None].to(positions.dtype)  # [B, L]
        if first is not None:
            valid &= positions[None, :] >= first[:, None]
        mask = valid[:, None, None, :]
    q = query.view(num_seqs, num_kv_heads, group, head_dim)
    out = _sdpa(q, k, v, mask, scale, soft_cap)
    return out.reshape(num_seqs, num_heads, head_dim)


def _window_start(
    seq_lens: torch.Tensor, q_lens: torch.Tensor | int, sliding_window: int | None
) -> torch.Tensor | None:
    """`[B]` int64: the first position any new token of each sequence sees under
    `sliding_window` (None without one)."""
    if sliding_window is None:
        return None
    return (seq_lens.long() - q_lens - sliding_window + 1).clamp_(min=0)


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    soft_cap: float | None,
) -> torch.Tensor:
    """`softmax(cap * tanh(q k^T * scale / cap) + mask) v`; without a cap, torch's
    scaled_dot_product_attention. `k`/`v` may have fewer heads than `q` only as
    `[B, Hkv, L, D]` against `q` `[B, Hkv, G * rows, D]` (the callers' layout)."""
    if soft_cap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    scores = torch.tanh(scores / soft_cap) * soft_cap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v.float()).to(q.dtype)


def _paged_attention_prefill(
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
    """Variable-length causal attention: `query` `[T, Hq, D]` holds the new tokens
    of every sequence back to back, sequence `i` at rows
    `query_start_loc[i]:query_start_loc[i + 1]`. Returns `[T, Hq, D]`.

    Sequences with one new token go through `paged_attention_decode` together; the
    others are padded to the longest query and served by one call, unless that
    padding would more than double the work."""
    starts = query_start_loc.long()
    q_lens = starts[1:] - starts[:-1]
    single = q_lens == 1
    if bool(single.all()):
        return _paged_attention_decode(
            query, key_cache, value_cache, block_tables, seq_lens, scale, sliding_window, soft_cap
        )
    out = torch.empty_like(query)
    if bool(single.any()):
        rows = starts[:-1][single]
        out[rows] = _paged_attention_decode(
            query.index_select(0, rows),
            key_cache,
            value_cache,
            block_tables[single],
            seq_lens[single],
            scale,
            sliding_window,
            soft_cap,
        )
    multi = (q_lens > 1).nonzero().flatten()
    if len(multi) == 0:
        return out
    lens = q_lens[multi]
    if int(lens.max()) * len(multi) > _MAX_QUERY_PADDING * int(lens.sum()):
        for i in multi.tolist():
            one = slice(int(starts[i]), int(starts[i + 1]))
            out[one] = _prefill_batch(
                query[one], key_cache, value_cache, block_tables[i : i + 1],
                starts[i : i + 2] - starts[i], seq_lens[i : i + 1], scale, sliding_window, soft_cap,
            )  # fmt: skip
        return out
    rows = torch.cat([torch.arange(int(starts[i]), int(starts[i + 1])) for i in multi.tolist()])
    local = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    out[rows.to(query.device)] = _prefill_batch(
        query.index_select(0, rows.to(query.device)),
        key_cache,
        value_cache,
        block_tables[multi],
        local.to(query.device),
        seq_lens[multi],
        scale,
        sliding_window,
        soft_cap,
    )
    return out


def _prefill_batch(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    starts: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """Causal attention for sequences with their query rows back to back in `query`
    (sequence `i` at `starts[i]:starts[i + 1]`), one padded call."""
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    num_seqs = seq_lens.shape[0]
    device = query.device
    q_lens = starts[1:] - starts[:-1]
    max_q, max_len = int(q_lens.max()), int(seq_lens.max())
    # Padded query rows repeat their sequence's last row (and its mask), so no row
    # of the call is fully masked; they are dropped from the result.
    j = torch.arange(max_q, device=device)
    j_clamped = torch.minimum(j[None, :], (q_lens - 1)[:, None])  # [B, max_q]
    q = query.index_select(0, (starts[:-1, None] + j_clamped).flatten())
    q = q.view(num_seqs, max_q, num_kv_heads, group, head_dim).permute(0, 2, 3, 1, 4)
    q = q.reshape(num_seqs, num_kv_heads, group * max_q, head_dim)
    first = _window_start(seq_lens, q_lens, sliding_window)
    k, v = _gather_padded(
        key_cache, value_cache, block_tables, seq_lens, max_len, query.dtype, first
    )
    # Query row j of sequence i sits at position seq_len - q_len + j.
    q_pos = (seq_lens.long() - q_lens)[:, None] + j_clamped  # [B, max_q]
    k_pos = torch.arange(max_len, device=device)
    mask = k_pos[None, None, :] <= q_pos[:, :, None]  # [B, max_q, L]
    if sliding_window is not None:
        mask &= k_pos[None, None, :] > q_pos[:, :, None] - sliding_window
    mask = mask[:, None].repeat(1, 1, group, 1).view(num_seqs, 1, group * max_q, max_len)
    o = _sdpa(q, k, v, mask, scale, soft_cap)
    o = o.view(num_seqs, num_kv_heads, group, max_q, head_dim).permute(0, 3, 1, 2, 4)
    o = o.reshape(num_seqs * max_q, num_heads, head_dim)
    keep = (j[None, :] < q_lens[:, None]).flatten()
    return o[keep]


def _check_paged(
    name: str,
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *index_tensors: torch.Tensor,
) -> None:
    """What both ops need: caches `[N, bs, Hkv, D]` of one shape, `query` `[T, Hq, D]`
    with `Hq` a multiple of `Hkv`, a table row per sequence, all on one device."""
    if (
        query.dim() != 3
        or key_cache.dim() != 4
        or value_cache.shape != key_cache.shape
        or query.shape[2] != key_cache.shape[3]
        or not key_cache.shape[2]
        or query.shape[1] % key_cache.shape[2]
        or seq_lens.dim() != 1
        or block_tables.dim() != 2
        or block_tables.shape[0] != seq_lens.shape[0]
    ):
        raise ValueError(
            f"{name}: query {tuple(query.shape)}, caches {tuple(key_cache.shape)} and "
            f"{tuple(value_cache.shape)}, block_tables {tuple(block_tables.shape)} and "
            f"seq_lens {tuple(seq_lens.shape)} do not fit"
        )
    device = query.device
    if any(t.device != device for t in (key_cache, value_cache, block_tables, *index_tensors)):
        raise ValueError(f"{name}: every tensor must be on the query's device, {device}")


def _check_options(name: str, sliding_window: int | None, soft_cap: float | None) -> None:
    if sliding_window is not None and (not isinstance(sliding_window, int) or sliding_window < 1):
        raise ValueError(f"{name}: sliding_window must be a positive int, got {sliding_window!r}")
    if soft_cap is not None and not soft_cap > 0:
        raise ValueError(f"{name}: soft_cap must be positive, got {soft_cap!r}")


def _check_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> None:
    name = "paged_attention_decode"
    _check_options(name, sliding_window, soft_cap)
    _check_paged(name, query, key_cache, value_cache, block_tables, seq_lens, seq_lens)
    if seq_lens.shape[0] != query.shape[0]:
        raise ValueError(f"{name}: {query.shape[0]} query rows for {seq_lens.shape[0]} sequences")


def _check_prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> None:
    name = "paged_attention_prefill"
    _check_options(name, sliding_window, soft_cap)
    _check_paged(
        name, query, key_cache, value_cache, block_tables, seq_lens, seq_lens, query_start_loc
    )
    if query_start_loc.shape != (seq_lens.shape[0] + 1,):
        raise ValueError(
            f"{name}: query_start_loc {tuple(query_start_loc.shape)} for "
            f"{seq_lens.shape[0]} sequences (it needs one entry more)"
        )


def _on(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    *args: object,
    **kwargs: object,
) -> tuple[torch.Tensor, ...]:
    return query, key_cache, value_cache


paged_attention_decode = Op(
    "paged_attention_decode",
    _paged_attention_decode,
    on=_on,
    validate=_check_decode,
    kernels=[
        Impl(
            cuda.BACKEND,
            cuda_attention.paged_attention_decode,
            cuda_attention.supports,
        ),
        Impl(
            cpu.KV_CACHE_BACKEND,
            cpu_attention.paged_attention_decode,
            cpu_attention.supports,
        ),
    ],
)

paged_attention_prefill = Op(
    "paged_attention_prefill",
    _paged_attention_prefill,
    on=_on,
    validate=_check_prefill,
    kernels=[
        Impl(
            cuda.BACKEND,
            cuda_attention.paged_attention_prefill,
            cuda_attention.supports,
        ),
        Impl(
            cpu.KV_CACHE_BACKEND,
            cpu_attention.paged_attention_prefill,
            cpu_attention.supports,
        ),
    ],
)
