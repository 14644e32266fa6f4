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
from llmcore.model_loader import LoadedModel
from llmcore.pooling import PoolingConfig


@dataclass(slots=True, frozen=True)
class EngineSizing:
    num_blocks: int
    max_model_len: int  # the longest sequence (prompt + output) the engine accepts
    kv_capacity: int  # tokens the KV blocks hold
    capped_by_kv_cache: bool  # max_model_len is below what the model or config asked
    capped_by_step_budget: bool = False  # ... because chunked prefill is off
    pooling_config: PoolingConfig | None = None  # embed engines only


def size_engine(loaded: LoadedModel, config: EngineConfig, task: Task) -> EngineSizing:
    """The sizing of an engine serving `task`."""
    if task is Task.GENERATE:
        return generate_sizing(loaded, config)
    return embed_sizing(loaded, config)


def generate_sizing(loaded: LoadedModel, config: EngineConfig) -> EngineSizing:
    """The KV cache from `kv_cache_memory`; the context capped at what it holds."""
    dtype_size = torch.tensor([], dtype=loaded.dtype).element_size()
    num_blocks = config.num_blocks(loaded.config, dtype_size)
    capacity = num_blocks * config.block_size
    max_len = min(loaded.max_model_len, config.max_model_len or capacity, capacity)
    capped = max_len < (config.max_model_len or loaded.max_model_len)
    budget = step_token_budget(config)
    if config.enable_chunked_prefill or max_len <= budget:
        return EngineSizing(num_blocks, max_len, capacity, capped)
    return EngineSizing(num_blocks, budget, capacity, capped, capped_by_step_budget=True)


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
