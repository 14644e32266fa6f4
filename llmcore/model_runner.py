"""`ModelRunner`: owns the KV cache tensors and runs one forward pass per step.

It takes the step's work as `SequenceChunk`s (new tokens of a sequence, how many of
its tokens are already cached, and its block table), lays them out as one flat
batch with a slot mapping, runs the model, and returns float32 logits of each
chunk's last token. It holds no scheduling state: which blocks belong to whom is
decided by the caller (the engine's KV cache manager).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llmcore.decode_graphs import DecodeGraphs, GraphBackend
from llmcore.errors import ContextLengthExceededError
from llmcore.model_api import ForwardBatch, KVCache, kv_cache_groups
from llmcore.model_loader import LoadedModel
from llmcore.ragged import concatenated, scatter_rows

BlockTable = Sequence[int] | np.ndarray  # block ids: a list, or int32 numpy


@dataclass(slots=True)
class SequenceChunk:
    token_ids: list[int]  # the new tokens to run (a whole prompt, a chunk, or one)
    num_cached: int  # tokens of this sequence already in the KV cache
    # Its blocks, enough for num_cached + len(token_ids): a list, or the KV cache
    # manager's int32 numpy view (read within the step)
    block_table: BlockTable
    sample: bool = True  # logits of the last new token are wanted
    all_logits: bool = False  # logits of every new token are wanted (prompt logprobs)
    # Its table in each KV cache group (a model with sliding-window layers); None:
    # `block_table` serves every group.
    group_tables: Sequence[BlockTable] | None = None


@dataclass(slots=True)
class PreviousTokens:
    """Input tokens still on the device (async scheduling): chunk `chunks[i]`'s one
    new token is row `rows[i]` of the previous step's sampled ids `sampled`; its
    `token_ids` hold a placeholder."""

    sampled: torch.Tensor  # [rows] int64, on the model's device
    chunks: list[int]
    rows: list[int]

    def write(self, input_ids: torch.Tensor, positions: np.ndarray | list[int]) -> None:
        """Put the tokens at `positions[i]` (flat token index of `chunks[i]`) of
        `input_ids`, on the device and without waiting for it."""
        device = input_ids.device
        dst = torch.as_tensor(positions, dtype=torch.int64).to(device, non_blocking=True)
        src = torch.as_tensor(self.rows, dtype=torch.int64).to(device, non_blocking=True)
        input_ids.index_copy_(0, dst, self.sampled.index_select(0, src))


@dataclass(slots=True)
class StepLogits:
    last: torch.Tensor  # [chunks with sample=True, vocab] float32, in chunk order
    all: dict[int, torch.Tensor]  # chunk index -> [len(token_ids), vocab] for all_logits chunks


class ModelRunner:
    def __init__(
        self,
        loaded: LoadedModel,
        num_blocks: int | Sequence[int],
        block_size: int = 16,
        kv_cache_dtype: torch.dtype | None = None,
        *,
        scratch_block: bool = False,
    ) -> None:
        """`num_blocks`: the KV cache's blocks, per KV cache group of the model
        (`llmcore.model_api.kv_cache_groups` of its `layer_windows`) or one count
        for all; `kv_cache_dtype`: the cache's dtype (default: the model's);
        `scratch_block`: one more block per group, after the others, that no
        sequence is given (padding rows of decode graphs run in it)."""
        self.loaded = loaded
        self.model = loaded.model
        self.block_size = block_size
        config = loaded.config
        windows = getattr(self.model, "layer_windows", None) or [None] * config.num_hidden_layers
        self.group_windows, self.layer_group = kv_cache_groups(windows)
        groups = len(self.group_windows)
        sizes = [num_blocks] * groups if isinstance(num_blocks, int) else list(num_blocks)
        if len(sizes) != groups:
            raise ValueError(f"{len(sizes)} block counts for {groups} KV cache groups")
        self.group_blocks = sizes
        self.num_blocks = sizes[0]
        self.kv_cache_dtype = kv_cache_dtype or loaded.dtype
        self.graphs: DecodeGraphs | None = None
        self.scratch_blocks = list(sizes) if scratch_block else None  # each group's last
        extra = 1 if scratch_block else 0
        self.kv_caches: list[KVCache] = []
        for group in self.layer_group:
            shape = (sizes[group] + extra, block_size, config.num_key_value_heads, config.head_dim)
            self.kv_caches.append(
                (
                    torch.empty(shape, dtype=self.kv_cache_dtype, device=loaded.device),
                    torch.empty(shape, dtype=self.kv_cache_dtype, device=loaded.device),
                )
            )
        # Touch the CPU cache now: faulted in lazily, each new block of each layer
        # was a page fault inside a decode step (~10 ms a step at batch 64).
        for pair in self.kv_caches:
            for cache in pair:
                if cache.device.type == "cpu":
                    cache.zero_()

    def enable_decode_graphs(
        self, max_batch: int, max_model_len: int, backend: GraphBackend
    ) -> DecodeGraphs:
        """Replay all-decode steps of up to `max_batch` sequences (of up to
        `max_model_len` tokens) through graphs (`llmcore.decode_graphs`); needs the
        scratch block."""
        if self.scratch_blocks is None:
            raise ValueError("decode graphs need a ModelRunner made with scratch_block=True")
        width = -(-max_model_len // self.block_size)
        self.graphs = DecodeGraphs(self, max_batch, width, self.scratch_blocks, backend)
        return self.graphs

    def build_batch(
        self, chunks: Sequence[SequenceChunk], previous: PreviousTokens | None = None
    ) -> ForwardBatch:
        """The step's flat batch, laid out in numpy (a Python list per step costs
        more than the forward pass of a small model on a GPU) and copied over
        without waiting for the device (the arrays are pageable and fresh: a copy
        has read its source when it returns); `previous`' tokens are written in on
        the device."""
        n = len(chunks)
        lens = np.fromiter((len(c.token_ids) for c in chunks), np.int64, n)
        cached = np.fromiter((c.num_cached for c in chunks), np.int64, n)
        starts = np.zeros(n + 1, np.int64)
        np.cumsum(lens, out=starts[1:])
        rows = np.repeat(np.arange(n), lens)
        positions = np.arange(int(starts[-1])) + (cached - starts[:-1])[rows]
        sample = np.fromiter((c.sample for c in chunks), np.bool_, n)
        ends = cached + lens
        tables = [
            self._group_tables(chunks, g, rows, positions, ends)
            for g in range(len(self.group_windows))
        ]
        dev = self.loaded.device

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(dev, non_blocking=True)

        input_ids = tensor(concatenated([c.token_ids for c in chunks]))
        if previous is not None:
            previous.write(input_ids, starts[previous.chunks])
        return ForwardBatch(
            input_ids=input_ids,
            positions=tensor(positions),
            slot_mapping=tensor(tables[0][1]),
            block_tables=tensor(tables[0][0]),
            query_start_loc=tensor(starts.astype(np.int32)),
            seq_lens=tensor(ends.astype(np.int32)),
            logits_indices=tensor(starts[1:][sample] - 1),
            is_decode=bool((lens == 1).all()),
            group_tables=([(tensor(t), tensor(s)) for t, s in tables] if len(tables) > 1 else None),
        )

    def _group_tables(
        self,
        chunks: Sequence[SequenceChunk],
        group: int,
        rows: np.ndarray,
        positions: np.ndarray,
        ends: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Block tables `[B, width]` (padded with block 0) and slot mapping `[T]` of
        one KV cache group; `rows` and `positions` are each new token's chunk and
        position, `ends` each chunk's length after the step."""
        bs = self.block_size
        lists = [c.block_table if c.group_tables is None else c.group_tables[group] for c in chunks]
        table = np.zeros((len(lists), max(map(len, lists))), np.int32)
        lengths = scatter_rows(table, lists)
        assert (lengths * bs >= ends).all(), "block table too short"
        slots = table[rows, positions // bs].astype(np.int64) * bs + positions % bs
        return table, slots

    @torch.inference_mode()
    def execute(self, chunks: Sequence[SequenceChunk]) -> torch.Tensor:
        """Float32 logits `[chunks with sample, vocab]` of each chunk's last new token."""
        return self.execute_detailed(chunks).last

    @torch.inference_mode()
    def execute_detailed(
        self, chunks: Sequence[SequenceChunk], previous: PreviousTokens | None = None
    ) -> StepLogits:
        """One forward pass; logits of the last token of `sample` chunks, and of
        every token of `all_logits` chunks. `previous`: chunks whose token is the
        previous step's, still on the device (async scheduling)."""
        if self.graphs is not None:
            size = self.graphs.bucket(chunks)
            if size is not None:
                logits = self.graphs.run(chunks, size, previous)
                if logits is not None:
                    return StepLogits(logits, {})
        batch = self.build_batch(chunks, previous)
        hidden = self.model.forward(batch, self.kv_caches)
        last = self.model.compute_logits(hidden.index_select(0, batch.logits_indices))
        every: dict[int, torch.Tensor] = {}
        start = 0
        for i, chunk in enumerate(chunks):
            end = start + len(chunk.token_ids)
            if chunk.all_logits:
                every[i] = self.model.compute_logits(hidden[start:end])
            start = end
        return StepLogits(last, every)


def greedy_generate_iter(
    runner: ModelRunner,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    prefill_chunk: int | None = None,
) -> Iterator[int]:
    """One sequence, argmax sampling, blocks `0..n` of the runner's cache; yields
    each token as it is chosen (the caller stops early by not asking for more).

    The single-sequence path of the CLI and benchmarks until the engine's scheduler
    serves requests; `prefill_chunk` splits the prompt into steps."""
    total = len(prompt_ids) + max_new_tokens
    limit = min(runner.num_blocks * runner.block_size, runner.loaded.max_model_len)
    if total > limit:
        raise ContextLengthExceededError(
            f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) = {total} "
            f"exceeds the {limit} tokens this runner can hold"
        )
    table = list(range(-(-total // runner.block_size)))
    step = prefill_chunk or len(prompt_ids)
    logits = torch.empty(0)
    for start in range(0, len(prompt_ids), step):
        logits = runner.execute([SequenceChunk(prompt_ids[start : start + step], start, table)])
    for i in range(max_new_tokens):
        token = int(logits[0].argmax())
        yield token
        if i + 1 < max_new_tokens:
            logits = runner.execute([SequenceChunk([token], len(prompt_ids) + i, table)])


def greedy_generate(
    runner: ModelRunner,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    stop_ids: Sequence[int] = (),
    prefill_chunk: int | None = None,
) -> list[int]:
    """`greedy_generate_iter` collected, ending after the first of `stop_ids`."""
    out: list[int] = []
    for token in greedy_generate_iter(
        runner, prompt_ids, max_new_tokens, prefill_chunk=prefill_chunk
    ):
        out.append(token)
        if token in stop_ids:
            break
    return out
