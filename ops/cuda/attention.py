"""CUDA launches of paged attention (see kernels/attention.cu).

A decode block serves up to `GQA_TILE` query heads of one kv head (K/V rows
loaded once for all of them) over one partition of each sequence's context. The
number of partitions is chosen so the grid covers the GPU: enough blocks for
`BLOCKS_PER_SM` per streaming multiprocessor, each partition at least
`MIN_PARTITION` tokens of the longest possible context. The kernel cuts each
sequence's own span (its window, or its length) into that many equal chunks, so a
long sequence keeps every partition busy whatever its neighbours' lengths. The
bound is the block table's capacity (`max_blocks * block_size`), not
`seq_lens.max()`: planning never waits for the device, and the launch depends only
on shapes, so a CUDA graph captured for a batch size replays at any lengths. A
sliding window bounds the span too. With more than one partition a reduce kernel
merges them. `sliding_window` and `soft_cap` reach the kernels as 0 for none.
Head sizes other than `HEAD_SIZES` run the torch reference (`supports`).

Prefill runs on tensor cores (kernels/attention_prefill.cu: tiles of
`PREFILL_TILE` query tokens of one sequence and one head, WMMA products) for
float16/bfloat16 on sm_80+ with 16-byte aligned rows (`use_tensor_cores`); else
on the scalar kernel (a block per query token and head). The tile grid is sized
from shapes alone (`num_seqs + num_tokens // PREFILL_TILE` tiles, each sequence
at least the ceil(q_len / PREFILL_TILE) it needs), so no launch waits for the
device.
"""

from __future__ import annotations

import functools

import torch

from ops.cuda._kernels import (
    HEAD_SIZES,
    PAGED_ATTENTION_DECODE,
    PAGED_ATTENTION_PREFILL,
    PAGED_ATTENTION_PREFILL_TC,
    PAGED_ATTENTION_REDUCE,
)
from ops.cuda._launch import Launch
from ops.cuda._module import compiles as kernel_compiles
from ops.cuda._module import run
from ops.layout import with_contiguous_heads

THREADS = 128  # ATTN_THREADS in attention.cu
GQA_TILE = 4  # query heads a decode block serves (GQA_TILE in attention.cu)
MIN_PARTITION = 64  # tokens: below this a partition's fixed costs dominate
BLOCKS_PER_SM = 4  # resident decode blocks that keep an SM's loads in flight
MAX_PARTITIONS = 128
DEFAULT_SMS = 132  # an H100/H200, where the device cannot be asked (CPU emulation)
PREFILL_TILE = 32  # PF_TILE_Q in attention_prefill.cu: query tokens a block serves
PREFILL_THREADS = 64  # PF_THREADS (2 warps of 16 query rows each)


def supports(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> bool:
    """The dispatch test of both attention ops: a head size the kernels are
    instantiated for, and query rows and caches the kernels can read 16 bytes at a
    time (always so for tensors torch allocated; a view at an odd offset is not)."""
    return query.shape[-1] in HEAD_SIZES and _rows_aligned(query, key_cache, value_cache)


def _rows_aligned(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> bool:
    """Whether every query row and cache row starts on 16 bytes (head offsets do:
    head sizes are multiples of 16)."""
    return (query.data_ptr() | key_cache.data_ptr() | value_cache.data_ptr()) % 16 == 0 and (
        query.stride(0) * query.element_size() % 16 == 0
    )


def _int32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.int32).contiguous()


@functools.cache
def _device(device: torch.device) -> tuple[int, tuple[int, int]]:
    """(SM count, compute capability) of a device, asked once; for CPU tensors (plans,
    the emulator) an H100's."""
    if device.type != "cuda":
        return DEFAULT_SMS, (9, 0)
    props = torch.cuda.get_device_properties(device)
    return int(props.multi_processor_count), (props.major, props.minor)


def num_partitions(num_seqs: int, num_heads: int, num_kv_heads: int, max_seq_len: int,
                   num_sms: int) -> int:  # fmt: skip
    """Partitions per sequence: the fewest that put `BLOCKS_PER_SM` blocks on every
    SM, no more than a `MIN_PARTITION` of the longest context each."""
    tiles = num_kv_heads * -(-(num_heads // num_kv_heads) // GQA_TILE)
    wanted = -(-(BLOCKS_PER_SM * num_sms) // max(num_seqs * tiles, 1))
    useful = -(-max_seq_len // MIN_PARTITION)
    return max(1, min(wanted, useful, MAX_PARTITIONS))


def plan_paged_attention_decode(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seq_len: int,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> tuple[torch.Tensor, list[Launch]]:
    """The output `[B, Hq, D]` and the launches that fill it (one, or split-K + reduce).
    `max_seq_len` bounds every sequence's length (the tables' capacity)."""
    if sliding_window is not None:
        max_seq_len = min(max_seq_len, sliding_window)  # keys any query reads
    query = with_contiguous_heads(query)
    num_seqs, num_heads, head_size = query.shape
    num_kv_heads = key_cache.shape[2]
    out = torch.empty((num_seqs, num_heads, head_size), dtype=query.dtype, device=query.device)
    tables = _int32(block_tables)
    partitions = num_partitions(
        num_seqs, num_heads, num_kv_heads, max_seq_len, _device(query.device)[0]
    )
    split = partitions > 1
    # Split-K scratch in float32 (empty, never read, for a single pass).
    width = partitions if split else 0
    stats = torch.empty((num_seqs, num_heads, width), dtype=torch.float32, device=query.device)
    exp_sums = torch.empty_like(stats)
    tmp_out = stats.new_empty((num_seqs, num_heads, width, head_size))
    decode = Launch(
        PAGED_ATTENTION_DECODE,
        query.dtype,
        grid=(num_kv_heads * -(-(num_heads // num_kv_heads) // GQA_TILE), num_seqs, partitions),
        block=(THREADS, 1, 1),
        head_size=head_size,
        values={
            "out": out,
            "max_logits": stats,
            "exp_sums": exp_sums,
            "tmp_out": tmp_out,
            "query": query,
            "key_cache": key_cache.contiguous(),
            "value_cache": value_cache.contiguous(),
            "block_tables": tables,
            "seq_lens": _int32(seq_lens),
            "scale": float(scale),
            "sliding_window": sliding_window or 0,
            "soft_cap": float(soft_cap or 0.0),
            "num_heads": num_heads,
            "num_kv_heads": num_kv_heads,
            "block_size": key_cache.shape[1],
            "max_blocks_per_seq": tables.shape[1],
            "query_stride": query.stride(0),
            "min_partition": MIN_PARTITION,
        },
    )
    if not split:
        return out, [decode]
    reduce = Launch(
        PAGED_ATTENTION_REDUCE,
        query.dtype,
        grid=(num_heads, num_seqs, 1),
        block=(THREADS, 1, 1),
        values={
            "out": out,
            "max_logits": stats,
            "exp_sums": exp_sums,
            "tmp_out": tmp_out,
            "num_partitions": partitions,
            "head_size": head_size,
        },
    )
    return out, [decode, reduce]


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
    if not query.shape[0]:
        return torch.empty_like(query)
    max_seq_len = block_tables.shape[1] * key_cache.shape[1]  # no device sync
    out, launches = plan_paged_attention_decode(
        query, key_cache, value_cache, block_tables, seq_lens, scale, max_seq_len,
        sliding_window, soft_cap,
    )  # fmt: skip
    for launch in launches:
        run(launch)
    return out


def use_tensor_cores(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor
) -> bool:
    """Whether prefill can take the WMMA kernel: a 16-bit float dtype, a head size
    it is built for (up to 128), an sm_80+ device (CPU tensors: plans and the
    emulator), and rows it may load 16 bytes at a time."""
    tc = PAGED_ATTENTION_PREFILL_TC
    if query.dtype not in tc.dtypes or query.shape[-1] not in tc.head_sizes:
        return False
    return _device(query.device)[1] >= (8, 0) and _rows_aligned(query, key_cache, value_cache)


def plan_paged_attention_prefill(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    *,
    tensor_cores: bool = True,
) -> tuple[torch.Tensor, Launch]:
    """The output `[T, Hq, D]` and its launch: the tensor-core kernel where
    `use_tensor_cores` allows it (and `tensor_cores`), else the scalar one."""
    query = with_contiguous_heads(query)
    num_tokens, num_heads, head_size = query.shape
    out = torch.empty((num_tokens, num_heads, head_size), dtype=query.dtype, device=query.device)
    tables = _int32(block_tables)
    key_cache, value_cache = key_cache.contiguous(), value_cache.contiguous()
    num_seqs = seq_lens.shape[0]
    if tensor_cores and use_tensor_cores(query, key_cache, value_cache):
        kernel, threads = PAGED_ATTENTION_PREFILL_TC, PREFILL_THREADS
        grid = (num_seqs + num_tokens // PREFILL_TILE, num_heads, 1)
    else:
        kernel, threads, grid = PAGED_ATTENTION_PREFILL, THREADS, (num_tokens, num_heads, 1)
    launch = Launch(
        kernel,
        query.dtype,
        grid=grid,
        block=(threads, 1, 1),
        head_size=head_size,
        values={
            "out": out,
            "query": query,
            "key_cache": key_cache,
            "value_cache": value_cache,
            "block_tables": tables,
            "query_start_loc": _int32(query_start_loc),
            "seq_lens": _int32(seq_lens),
            "scale": float(scale),
            "sliding_window": sliding_window or 0,
            "soft_cap": float(soft_cap or 0.0),
            "num_seqs": num_seqs,
            "num_kv_heads": key_cache.shape[2],
            "block_size": key_cache.shape[1],
            "max_blocks_per_seq": tables.shape[1],
            "query_stride": query.stride(0),
        },
    )
    return out, launch


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
    args = (query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, scale,
            sliding_window, soft_cap)  # fmt: skip
    out, launch = plan_paged_attention_prefill(*args)
    if launch.kernel is PAGED_ATTENTION_PREFILL_TC and not kernel_compiles(launch):
        out, launch = plan_paged_attention_prefill(*args, tensor_cores=False)
    if out.numel():
        run(launch)
    return out
