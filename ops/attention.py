"""Attention over the paged KV cache (torch reference).

Layout: the cache of one layer is `[num_blocks, block_size, num_kv_heads, head_dim]`;
sequence `i` owns the blocks `block_tables[i, :ceil(seq_lens[i] / block_size)]`, in
order. Grouped-query attention: query head `h` reads kv head `h // (Hq // Hkv)`.

`paged_attention_prefill` handles any number of query tokens per sequence (a whole
prompt, a chunk of one after earlier chunks, or a single decode token): the query
tokens of sequence `i` are the last `q_len` of its `seq_lens[i]` tokens, and each
attends causally to every token at or before its own position.
`paged_attention_decode` is the one-token-per-sequence case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ops import cuda as _cuda


def _gather_kv(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """`[Hkv, seq_len, D]` view-ordered copy of one sequence's cached keys or values."""
    block_size = cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    blocks = cache.index_select(0, block_table[:num_blocks])
    return blocks.flatten(0, 1)[:seq_len].transpose(0, 1)


def paged_attention_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence: `query` `[B, Hq, D]` -> `[B, Hq, D]`.

    `block_tables` is `[B, max_blocks]` int32/int64, `seq_lens` `[B]` (tokens in
    the cache for each sequence, the new one included). All sequences are served
    by one attention call over their blocks gathered to the longest length, the
    shorter ones masked past their end."""
    if query.is_cuda and _cuda.available(query, key_cache, value_cache, head_size=query.shape[-1]):
        return _cuda.paged_attention_decode(
            query, key_cache, value_cache, block_tables, seq_lens, scale
        )
    num_seqs, num_heads, head_dim = query.shape
    num_kv_heads, block_size = key_cache.shape[2], key_cache.shape[1]
    group = num_heads // num_kv_heads
    max_len = int(seq_lens.max())
    num_blocks = -(-max_len // block_size)
    tables = block_tables[:, :num_blocks].long()
    k = key_cache[tables].flatten(1, 2)[:, :max_len]  # [B, L, Hkv, D]
    v = value_cache[tables].flatten(1, 2)[:, :max_len]
    mask = None
    if bool((seq_lens != max_len).any()):
        positions = torch.arange(max_len, device=query.device)
        valid = positions[None, :] < seq_lens[:, None].to(positions.dtype)  # [B, L]
        # Slots past a sequence's end were never written for it: they may hold
        # anything (even NaN, which a -inf score times a zero weight would not hide).
        k = k.masked_fill(~valid[:, :, None, None], 0.0)
        v = v.masked_fill(~valid[:, :, None, None], 0.0)
        mask = valid[:, None, None, :]
    q = query.view(num_seqs, num_kv_heads, group, head_dim)
    k, v = k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.reshape(num_seqs, num_heads, head_dim)


def paged_attention_prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Variable-length causal attention: `query` `[T, Hq, D]` holds the new tokens
    of every sequence back to back, sequence `i` at rows
    `query_start_loc[i]:query_start_loc[i + 1]`. Returns `[T, Hq, D]`."""
    if query.is_cuda and _cuda.available(query, key_cache, value_cache, head_size=query.shape[-1]):
        return _cuda.paged_attention_prefill(
            query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, scale
        )
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    starts = query_start_loc.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        q_start, q_end = starts[i], starts[i + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        k = _gather_kv(key_cache, block_tables[i], seq_len)
        v = _gather_kv(value_cache, block_tables[i], seq_len)
        # [q_len, Hq, D] -> [Hkv, group * q_len, D]: each kv head serves its group.
        q = query[q_start:q_end].view(q_len, num_kv_heads, group, head_dim)
        q = q.permute(1, 2, 0, 3).reshape(num_kv_heads, group * q_len, head_dim)
        mask = None
        if q_len > 1:
            causal = torch.ones(q_len, seq_len, dtype=torch.bool, device=query.device)
            mask = causal.tril(diagonal=seq_len - q_len).repeat(group, 1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        o = o.view(num_kv_heads, group, q_len, head_dim).permute(2, 0, 1, 3)
        out[q_start:q_end] = o.reshape(q_len, num_heads, head_dim)
    return out
