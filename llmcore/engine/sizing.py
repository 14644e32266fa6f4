"""How many KV blocks an engine gets and how long its context may be.

A generate engine turns `EngineConfig.kv_cache_memory` into blocks and caps
`max_model_len` at what they hold, and, without chunked prefill, at the step's
token budget (a prompt, or a preempted sequence being recomputed, must fit one
step whole, or it would wait at the head of the queue forever). An embed engine
keeps nothing between steps: an encoder needs no KV cache (one dummy block), a
decoder gets scratch blocks for one step's tokens; its context is capped at
sentence-transformers' `max_seq_length`. Invariant: these are pure functions of
the model and the config (no logging, nothing set on the side): the same inputs,
the same sizing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmcore.engine.config import EngineConfig
from llmcore.engine.task import Task, is_encoder
from llmcore.model_api import kv_cache_groups
from llmcore.model_config import DTYPES
from llmcore.model_loader import LoadedModel
from llmcore.pooling import PoolingConfig


@dataclass(slots=True, frozen=True)
class EngineSizing:
    num_blocks: int  # of the first KV cache group
    max_model_len: int  # the longest sequence (prompt + output) the engine accepts
    kv_capacity: int  # tokens the KV blocks hold
    capped_by_kv_cache: bool  # max_model_len is below what the model or config asked
    capped_by_step_budget: bool = False  # ... because chunked prefill is off
    pooling_config: PoolingConfig | None = None  # embed engines only
    # Per KV cache group (`llmcore.model_api.kv_cache_groups`): its window and blocks.
    group_windows: tuple[int | None, ...] = (None,)
    group_blocks: tuple[int, ...] = ()

    @property
    def blocks(self) -> tuple[int, ...]:
        """Every group's block count."""
        return self.group_blocks or (self.num_blocks,)


def size_engine(loaded: LoadedModel, config: EngineConfig, task: Task) -> EngineSizing:
    """The sizing of an engine serving `task`."""
    if task is Task.GENERATE:
        return generate_sizing(loaded, config)
    return embed_sizing(loaded, config)


def generate_sizing(loaded: LoadedModel, config: EngineConfig) -> EngineSizing:
    """The KV cache from `kv_cache_memory`; the context capped at what it holds.

    With sliding-window layers (`layer_windows`), each sliding group gets the
    blocks its windows can hold for `max_num_seqs` sequences plus one step's
    tokens (no more than an equal share), and the full-attention layers the rest;
    a model with no full-attention layer is not capped by the KV cache at all."""
    dtype_size = torch.tensor([], dtype=kv_cache_dtype(loaded, config)).element_size()
    windows = getattr(loaded.model, "layer_windows", None)
    group_windows, layer_group = kv_cache_groups(
        windows or [None] * loaded.config.num_hidden_layers
    )
    equal = config.num_blocks(loaded.config, dtype_size)  # every layer the same blocks
    budget = step_token_budget(config)
    bs = config.block_size
    blocks = [
        equal
        if w is None
        else min(equal, config.max_num_seqs * (-(-(w - 1) // bs) + 1) + -(-budget // bs) + 1)
        for w in group_windows
    ]
    if group_windows[0] is None and len(group_windows) > 1:
        layers = [layer_group.count(g) for g in range(len(group_windows))]
        spare = sum((equal - n) * layers[g] for g, n in enumerate(blocks) if g)
        blocks[0] = equal + spare // layers[0]
    capacity = blocks[0] * bs if group_windows[0] is None else loaded.max_model_len
    max_len = min(loaded.max_model_len, config.max_model_len or capacity, capacity)
    capped = max_len < (config.max_model_len or loaded.max_model_len)
    by_step = not config.enable_chunked_prefill and max_len > budget
    return EngineSizing(
        blocks[0],
        budget if by_step else max_len,
        capacity,
        capped,
        capped_by_step_budget=by_step,
        group_windows=tuple(group_windows),
        group_blocks=tuple(blocks),
    )


# `--kv-cache-dtype auto` for weights held in a reduced format under float32
# activations on the CPU: 16 bits, as llama.cpp keeps its cache (f16) beside a
# quantized file, and bfloat16 beside bfloat16 weights, as vLLM's auto would. Half
# the KV bytes: at the same memory twice the tokens, and decode attention streams
# half as much (docs/benchmarks.md, issue 19).
AUTO_KV_DTYPE_BY_WEIGHTS = {"gguf": torch.float16, "int8": torch.float16, "bf16": torch.bfloat16}


def kv_cache_dtype(loaded: LoadedModel, config: EngineConfig) -> torch.dtype:
    """`--kv-cache-dtype`: "auto" is the model's dtype, or 16 bits where the
    weights are held quantized (or bfloat16) on the CPU."""
    if config.kv_cache_dtype == "auto":
        if loaded.device.type == "cpu" and loaded.weight_format is not None:
            return AUTO_KV_DTYPE_BY_WEIGHTS.get(loaded.weight_format, loaded.dtype)
        return loaded.dtype
    if config.kv_cache_dtype not in DTYPES:
        raise ValueError(
            f"kv_cache_dtype {config.kv_cache_dtype!r} is not supported "
            f"(choose auto, {', '.join(DTYPES)})"
        )
    return DTYPES[config.kv_cache_dtype]


def step_token_budget(config: EngineConfig) -> int:
    """New tokens one step may compute (at least a block)."""
    return max(config.max_num_batched_tokens, config.block_size)


def embed_sizing(loaded: LoadedModel, config: EngineConfig) -> EngineSizing:
    """Scratch space for one step (decoders), nothing (encoders); the context capped
    at sentence-transformers' `max_seq_length`."""
    encoder = is_encoder(loaded)
    pooling = PoolingConfig.from_folder(loaded.path, is_encoder=encoder)
    max_len = min(loaded.max_model_len, config.max_model_len or loaded.max_model_len)
    max_len = min(max_len, pooling.max_seq_length or max_len)
    if encoder:
        num_blocks = 1
    else:
        num_blocks = scratch_blocks(
            config.max_num_batched_tokens, config.max_num_seqs, max_len, config.block_size
        )
    return EngineSizing(num_blocks, max_len, max_len, False, pooling_config=pooling)


def scratch_blocks(
    num_batched_tokens: int, max_num_seqs: int, max_len: int, block_size: int
) -> int:
    """KV blocks a decoder embed engine needs for its largest step."""
    per_step = -(-num_batched_tokens // block_size) + max_num_seqs
    return max(per_step, -(-max_len // block_size))
