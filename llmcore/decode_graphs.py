"""`DecodeGraphs`: CUDA graphs of the all-decode forward pass, one per batch-size
bucket, replayed instead of launching the model's kernels one by one.

A step qualifies when every sequence runs one new token and wants only its last
logits, and the batch fits the largest bucket. Its inputs are copied into
persistent buffers (token ids, positions, slot mappings, block tables at their full
width, sequence lengths) padded up to the bucket: a padding row runs token 0 at
position 0 of the runner's scratch block (a block the KV cache manager never hands
out), so it writes and reads nothing of a real sequence. The graph of that bucket
(captured at its first use, after one eager warm-up) is replayed, and the logits of
the real rows are returned.

Each bucket's first replay is checked against the eager forward pass of the same
step: if they differ (a kernel that is not capture-safe), or capture fails, the
graphs are switched off for good with a warning and the step runs eagerly; the
engine never fails a request for a graph. `--enforce-eager` turns them off.

How a graph is made and captured is injected (`cuda_backend`: torch's CUDA graphs
on a GPU), so the bookkeeping is tested on the CPU with a stand-in whose replay
calls the captured function again into the same output tensor.

Invariants: the persistent buffers' addresses never change after the first
capture (graphs read them); a padding row only touches the scratch block; a
bucket's logits buffer is the graph's output and is copied out before the next
replay can overwrite it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from llmcore.model_api import ForwardBatch
from llmcore.ragged import scatter_rows

if TYPE_CHECKING:
    from llmcore.model_runner import ModelRunner, PreviousTokens, SequenceChunk

log = logging.getLogger("llmcore.engine")

CHECK_ATOL = 1e-3  # logits of a replay against the eager pass, relative to their scale


def capture_sizes(max_batch: int) -> list[int]:
    """vLLM's capture sizes: 1, 2, 4, then every multiple of 8, up to `max_batch`
    (and `max_batch` itself)."""
    sizes = [s for s in (1, 2, 4) if s <= max_batch]
    sizes += list(range(8, max_batch + 1, 8))
    if not sizes or sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sorted(set(sizes))


class Graph(Protocol):
    def replay(self) -> None: ...


@dataclass(slots=True)
class GraphBackend:
    """How graphs are made and captured: `new()` a graph; `capture(graph, fn)`
    records `fn` (the forward pass) into it and returns `fn`'s output tensor, which
    every replay refills."""

    new: Callable[[], Graph]
    capture: Callable[[Graph, Callable[[], torch.Tensor]], torch.Tensor]


def cuda_backend() -> GraphBackend:
    """torch's CUDA graphs, every bucket in one memory pool."""
    pool = torch.cuda.graph_pool_handle()

    def capture(graph: Graph, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        with torch.cuda.graph(graph, pool=pool):  # type: ignore[arg-type]
            return fn()

    return GraphBackend(new=torch.cuda.CUDAGraph, capture=capture)


@dataclass(slots=True)
class _Buffers:
    """The persistent inputs, at the largest bucket's size."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor  # arange: one token a row
    logits_indices: torch.Tensor  # arange
    tables: list[tuple[torch.Tensor, torch.Tensor]]  # per KV group: [B, W] int32, [B] int64

    def batch(self, size: int) -> ForwardBatch:
        tables = [(t[:size], s[:size]) for t, s in self.tables]
        return ForwardBatch(
            input_ids=self.input_ids[:size],
            positions=self.positions[:size],
            slot_mapping=tables[0][1],
            block_tables=tables[0][0],
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            logits_indices=self.logits_indices[:size],
            is_decode=True,
            group_tables=tables if len(tables) > 1 else None,
        )


@dataclass(slots=True)
class _HostBuffers:
    """Host copies of `_Buffers`' inputs, filled in place each step (pageable
    memory: a copy from it has read it by the time `copy_` returns)."""

    ids: np.ndarray
    positions: np.ndarray
    lens: np.ndarray
    tables: list[tuple[np.ndarray, np.ndarray]]

    def pairs(self, device: _Buffers) -> list[tuple[np.ndarray, torch.Tensor]]:
        """(host, device) of every buffer a step writes."""
        pairs = [(self.ids, device.input_ids), (self.positions, device.positions),
                 (self.lens, device.seq_lens)]  # fmt: skip
        for (tables, slots), (d_tables, d_slots) in zip(self.tables, device.tables, strict=True):
            pairs += [(tables, d_tables), (slots, d_slots)]
        return pairs


@dataclass(slots=True)
class DecodeGraphStatistics:
    replays: int = 0
    eager_steps: int = 0  # all-decode steps run eagerly (too big, or graphs off)
    captured: list[int] = field(default_factory=list)  # buckets
    disabled: str | None = None  # why graphs were switched off


class DecodeGraphs:
    def __init__(
        self,
        runner: ModelRunner,
        max_batch: int,
        max_blocks_per_seq: int,
        scratch_blocks: Sequence[int],
        backend: GraphBackend,
    ) -> None:
        """`scratch_blocks`: per KV cache group, a block id no sequence is given."""
        self.runner = runner
        self.sizes = capture_sizes(max_batch)
        self.width = max_blocks_per_seq
        self.scratch = list(scratch_blocks)
        self.backend = backend
        self.stats = DecodeGraphStatistics()
        self._graphs: dict[int, tuple[Graph, torch.Tensor]] = {}
        dev = runner.loaded.device
        n = self.sizes[-1]

        def zeros(*shape: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=dev)

        self._host = _HostBuffers(
            ids=np.zeros(n, np.int64),
            positions=np.zeros(n, np.int64),
            lens=np.zeros(n, np.int32),
            tables=[(np.zeros((n, self.width), np.int32), np.zeros(n, np.int64))
                    for _ in self.scratch],
        )  # fmt: skip
        self._buffers = _Buffers(
            input_ids=zeros(n, dtype=torch.int64),
            positions=zeros(n, dtype=torch.int64),
            seq_lens=zeros(n, dtype=torch.int32),
            query_start_loc=torch.arange(n + 1, dtype=torch.int32, device=dev),
            logits_indices=torch.arange(n, dtype=torch.int64, device=dev),
            tables=[
                (zeros(n, self.width, dtype=torch.int32), zeros(n, dtype=torch.int64))
                for _ in self.scratch
            ],
        )

    def bucket(self, chunks: Sequence[SequenceChunk]) -> int | None:
        """The bucket this step replays in, or None (not all-decode, too big,
        a table wider than the buffers, or graphs off)."""
        if self.stats.disabled is not None or not chunks or len(chunks) > self.sizes[-1]:
            return None
        for c in chunks:
            if len(c.token_ids) != 1 or not c.sample or c.all_logits:
                return None
            tables = [c.block_table] if c.group_tables is None else c.group_tables
            if any(len(t) > self.width for t in tables):
                return None
        return next(s for s in self.sizes if s >= len(chunks))

    def run(
        self, chunks: Sequence[SequenceChunk], size: int, previous: PreviousTokens | None = None
    ) -> torch.Tensor | None:
        """The step's last-token logits `[len(chunks), vocab]` through the bucket
        `size`'s graph; None if graphs were switched off (run it eagerly).
        `previous`: rows whose token is the previous step's, on the device."""
        self._fill(chunks, size, previous)
        entry = self._graphs.get(size)
        if entry is None:
            try:
                entry = self._capture(size)
            except Exception as exc:  # a kernel that cannot be captured
                self._disable(f"capturing the batch-{size} graph failed: {exc!r}")
                return None
            self._fill(chunks, size, previous)  # the warm-up and capture ran on these
            entry[0].replay()
            logits = entry[1][: len(chunks)].clone()
            if not self._agrees(chunks, logits, size, previous):
                return None
            self.stats.replays += 1
            return logits
        entry[0].replay()
        self.stats.replays += 1
        return entry[1][: len(chunks)].clone()

    # ---- inside -------------------------------------------------------------------------

    def _fill(
        self, chunks: Sequence[SequenceChunk], size: int, previous: PreviousTokens | None = None
    ) -> None:
        """Copy the step into the buffers' first `size` rows, padding after it;
        then `previous`' tokens into their rows, on the device.

        Built in numpy from the real table entries only (a row's padding to the full
        width is one fill), so the cost grows with the blocks the batch holds, not
        with `size x width`; then one host-to-device copy per buffer."""
        n, bs = len(chunks), self.runner.block_size
        h, b = self._host, self._buffers
        cached = np.fromiter((c.num_cached for c in chunks), np.int64, n)
        h.ids[:n] = [c.token_ids[0] for c in chunks]
        h.ids[n:size] = 0
        h.positions[:n] = cached
        h.positions[n:size] = 0
        h.lens[:n] = cached + 1
        h.lens[n:size] = 1
        rows = np.arange(n)
        for group, (tables, slots) in enumerate(h.tables):
            scratch = self.scratch[group]
            lists = [c.block_table if c.group_tables is None else c.group_tables[group]
                     for c in chunks]  # fmt: skip
            block = tables[:size]
            block.fill(scratch)
            scatter_rows(block, lists)
            slots[:n] = block[rows, cached // bs].astype(np.int64) * bs + cached % bs
            slots[n:size] = scratch * bs
        for host, device in h.pairs(b):
            device[:size].copy_(torch.from_numpy(host[:size]), non_blocking=True)
        if previous is not None:
            previous.write(b.input_ids, previous.chunks)

    def _forward(self, size: int) -> torch.Tensor:
        model = self.runner.model
        batch = self._buffers.batch(size)
        hidden = model.forward(batch, self.runner.kv_caches)
        return model.compute_logits(hidden.index_select(0, batch.logits_indices))

    def _capture(self, size: int) -> tuple[Graph, torch.Tensor]:
        self._forward(size)  # warm-up: lazy allocations and kernel builds happen eagerly
        graph = self.backend.new()
        out = self.backend.capture(graph, lambda: self._forward(size))
        self._graphs[size] = (graph, out)
        self.stats.captured.append(size)
        log.info("CUDA graph captured for decode batches of %d", size)
        return graph, out

    def _agrees(
        self,
        chunks: Sequence[SequenceChunk],
        logits: torch.Tensor,
        size: int,
        previous: PreviousTokens | None,
    ) -> bool:
        """The first replay of a bucket against the eager pass of the same step."""
        self._fill(chunks, size, previous)
        eager = self._forward(size)[: len(chunks)].float()
        diff = (logits.float() - eager).abs().max().item()
        scale = max(eager.abs().max().item(), 1.0)
        if not diff <= CHECK_ATOL * scale:  # NaN fails too
            self._disable(f"the batch-{size} graph's logits differ from the eager pass by {diff}")
            return False
        return True

    def _disable(self, why: str) -> None:
        self.stats.disabled = why
        self._graphs.clear()
        log.warning("CUDA graphs off, decode steps run eagerly: %s", why)
