"""The contract between llmcore and a model architecture plugin.

A plugin class turns a `ModelConfig` into a model, takes its weights under Hugging
Face names, and runs one forward pass over a flat batch of new tokens from many
sequences (no padding) that reads and writes the paged KV cache described by a
`ForwardBatch`. llmcore never looks inside the model; the model never schedules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from llmcore.model_config import ModelConfig

KVCache = tuple[torch.Tensor, torch.Tensor]
"""One layer's cache: keys and values, each `[num_blocks, block_size, num_kv_heads, head_dim]`."""


def kv_cache_groups(layer_windows: Sequence[int | None]) -> tuple[list[int | None], list[int]]:
    """The KV cache groups of a model's layers, by attention window: the groups'
    windows (full attention first, then windows ascending) and each layer's group.
    Layers of a group share block tables; a sliding group's tables hold only the
    blocks its window still sees."""
    windows = sorted(set(layer_windows), key=lambda w: -1 if w is None else w)
    return windows, [windows.index(w) for w in layer_windows]


@dataclass(slots=True)
class ForwardBatch:
    """The new tokens of one step and where their sequences live in the KV cache.

    Sequence `i` contributes rows `query_start_loc[i]:query_start_loc[i+1]` of
    `input_ids`; after the step it has `seq_lens[i]` tokens cached, in the blocks
    `block_tables[i]`. `logits_indices` picks the rows whose logits are wanted."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64
    block_tables: torch.Tensor  # [B, max_blocks] int32
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32
    logits_indices: torch.Tensor  # [B] int64
    is_decode: bool  # every sequence has exactly one new token
    # Per KV cache group (`kv_cache_groups`), its block tables and slot mapping;
    # None: one group, the fields above. Group 0's are the fields above.
    group_tables: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def kv_tables(self, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(block_tables, slot_mapping)` of KV cache group `group`."""
        if self.group_tables is None:
            return self.block_tables, self.slot_mapping
        return self.group_tables[group]


class CausalLM(Protocol):
    """What a causal language model plugin provides."""

    config: ModelConfig
    dtype: torch.dtype
    device: torch.device
    # Per layer, the sliding window in tokens (a query at position p sees keys
    # from p - window + 1), or None for full attention. The KV cache manager keeps
    # only the blocks some layer can still read.
    layer_windows: list[int | None]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Take every weight under its Hugging Face name; raise on a missing one."""
        ...

    def forward(self, batch: ForwardBatch, kv_caches: list[KVCache]) -> torch.Tensor:
        """Hidden states `[T, hidden_size]` of the batch's tokens."""
        ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits `[N, vocab_size]` for hidden states `[N, hidden_size]`."""
        ...


class CausalLMClass(Protocol):
    """The class side of a plugin: construction and GGUF name translation."""

    def __call__(
        self, config: ModelConfig, dtype: torch.dtype, device: torch.device
    ) -> CausalLM: ...

    def gguf_to_hf(
        self, name: str, tensor: torch.Tensor, config: ModelConfig
    ) -> tuple[str, torch.Tensor]:
        """Translate one GGUF tensor to its Hugging Face name and layout."""
        ...

    # Optional: `adapt_gguf_config(config) -> ModelConfig`, a classmethod that reads
    # the family's own GGUF metadata (`config.raw` holds it) into the config under
    # Hugging Face names (e.g. Gemma 2's `attn_logit_softcapping`), so the plugin
    # reads one set of names whichever file the model came from.
    # Optional: `adapt_hf_config(config_json) -> dict`, a classmethod that turns a
    # config.json the plugin serves into the keys `ModelConfig` reads (Gemma 3's
    # multimodal checkpoints nest the language model's config in `text_config`).


@dataclass(slots=True)
class EncoderBatch:
    """Whole sequences for a bidirectional encoder (no KV cache), laid out flat as
    in `ForwardBatch`: sequence `i` is rows `query_start_loc[i]:query_start_loc[i+1]`.
    Attention pads the batch to `[B, max_len]`: `pad_index[t]` is token `t`'s row in
    the padded `[B * max_len]` layout, `attention_mask` (`[B, 1, 1, max_len]`, True =
    a real token) hides the padding; every other op runs on the flat tokens only."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    token_type_ids: torch.Tensor  # [T] int64
    query_start_loc: torch.Tensor  # [B + 1] int64
    pad_index: torch.Tensor  # [T] int64
    attention_mask: torch.Tensor  # [B, 1, 1, max_len] bool
    max_len: int


class EncoderModel(Protocol):
    """What a bidirectional encoder plugin (BERT family) provides: `is_encoder = True`."""

    config: ModelConfig
    dtype: torch.dtype
    device: torch.device
    is_encoder: bool

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def encode(self, batch: EncoderBatch) -> torch.Tensor:
        """Last hidden states `[T, hidden_size]` of the batch's tokens."""
        ...
