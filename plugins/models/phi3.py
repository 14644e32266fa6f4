"""Phi-3, Phi-3.5 and Phi-4-mini (`Phi3ForCausalLM`; GGUF `phi3`).

A Llama whose checkpoint stores q/k/v as one `qkv_proj` and gate/up as one
`gate_up_proj` (taken as the fused matmuls Llama builds at load, so the layer is
Llama's four matmuls and the one-call decode step still applies), that may rotate
only the first `partial_rotary_factor` of each head (Phi-4-mini: 0.75), and that
names LongRoPE scaling (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) and a sliding
window (Phi-3-mini-4k: 2047; transformers applies it, `q - k < window`).

LongRoPE picks one factor set for the whole served context (`ops.rotary.rope_inv_freq`):
the long factors when the model serves more than `original_max_position_embeddings`
tokens, as vLLM and llama.cpp do, where transformers switches per forward pass.

GGUF (llama.cpp's converter): `blk.N.attn_qkv` and `blk.N.ffn_up` (gate rows then
up rows) hold the fused matrices unpermuted; `rope_factors_long` /
`rope_factors_short` hold the LongRoPE factors; `phi3.rope.dimension_count`,
`phi3.rope.scaling.original_context_length`, `phi3.rope.scaling.attn_factor` and
`phi3.attention.sliding_window` (0: none) the rest. Every tensor's shape is checked
against the metadata as it is read.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any, ClassVar

import torch

from llmcore.errors import CorruptModelFileError
from llmcore.model_config import ModelConfig
from ops.fused_decode import DecoderStack
from ops.rotary import rope_cache, rope_type
from plugins.models.llama import LlamaForCausalLM, Weight

_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight$")
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_up": "mlp.gate_up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "rope_factors_long.weight": "model.rotary_emb.long_factor",
    "rope_factors_short.weight": "model.rotary_emb.short_factor",
}


def check_gguf_shape(name: str, tensor: Weight, want: tuple[int, ...]) -> None:
    """Raise CorruptModelFileError naming the GGUF tensor whose shape is not the one
    the file's metadata implies."""
    if tuple(tensor.shape) != want:
        raise CorruptModelFileError(
            f"GGUF tensor {name!r} has shape {list(tensor.shape)}, but the file's "
            f"metadata implies {list(want)}"
        )


def rotary_dim(config: ModelConfig) -> int:
    """The rotated features of each head: `int(head_dim * partial_rotary_factor)`,
    the factor read as transformers reads it (`rope_parameters` first)."""
    rope = config.raw.get("rope_parameters") or config.raw.get("rope_scaling") or {}
    factor = rope.get("partial_rotary_factor", config.raw.get("partial_rotary_factor"))
    return int(config.head_dim * float(1.0 if factor is None else factor))


def served_window(config: ModelConfig) -> int | None:
    """The sliding window, or None where it cannot restrict any served sequence."""
    window = config.sliding_window
    return window if window and window < config.max_position_embeddings else None


class Phi3ForCausalLM(LlamaForCausalLM):
    """Phi-3 / Phi-3.5 / Phi-4-mini: fused checkpoint matmuls, partial rotary,
    LongRoPE, an optional sliding window."""

    gguf_permutes_qk = False
    # already Llama's fused layout: q, k, v rows in order; gate rows then up rows
    fused_modules: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv": ("self_attn.qkv_proj",),
        "o": ("self_attn.o_proj",),
        "gate_up": ("mlp.gate_up_proj",),
        "down": ("mlp.down_proj",),
    }

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(config, dtype, device)
        self.rotary_dim = rotary_dim(config)
        self.layer_windows = [served_window(config)] * config.num_hidden_layers

    @classmethod
    def adapt_gguf_config(cls, config: ModelConfig) -> ModelConfig:
        """llama.cpp's phi3 metadata under Hugging Face names: the rotary dimension
        as `partial_rotary_factor`, `original_max_position_embeddings`, the LongRoPE
        attention factor (its factors arrive as tensors), a zero window as none."""
        md, raw = config.raw, dict(config.raw)
        a = str(md.get("general.architecture", "phi3"))
        rope: dict[str, Any] = {}
        dims = md.get(f"{a}.rope.dimension_count")
        if dims is not None and int(dims) != config.head_dim:
            factor = int(dims) / config.head_dim
            if int(config.head_dim * factor) != int(dims):  # so that int() gives it back
                factor = math.nextafter(factor, math.inf)
            rope["partial_rotary_factor"] = raw["partial_rotary_factor"] = factor
        original = md.get(f"{a}.rope.scaling.original_context_length")
        if original:
            rope["original_max_position_embeddings"] = int(original)
            raw["original_max_position_embeddings"] = int(original)
        attn_factor = md.get(f"{a}.rope.scaling.attn_factor")
        if attn_factor is not None:
            rope["attention_factor"] = float(attn_factor)
        raw["rope_parameters"] = {"rope_theta": config.rope_theta, **rope}
        return replace(config, sliding_window=config.sliding_window or None, raw=raw)

    @classmethod
    def gguf_to_hf(cls, name: str, tensor: Weight, config: ModelConfig) -> tuple[str, Weight]:
        c = config
        q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        if name in _GGUF_GLOBAL_NAMES:
            shapes = {
                "token_embd.weight": (c.vocab_size, c.hidden_size),
                "output.weight": (c.vocab_size, c.hidden_size),
                "output_norm.weight": (c.hidden_size,),
            }
            check_gguf_shape(name, tensor, shapes.get(name, (rotary_dim(c) // 2,)))
            return _GGUF_GLOBAL_NAMES[name], tensor
        match = _GGUF_LAYER.match(name)
        if match is None or match.group(2) not in _GGUF_LAYER_NAMES:
            raise CorruptModelFileError(f"unexpected tensor {name!r} for a phi3 GGUF")
        index, part = match.groups()
        layer_shapes = {
            "attn_norm": (c.hidden_size,),
            "ffn_norm": (c.hidden_size,),
            "attn_qkv": (q + 2 * kv, c.hidden_size),
            "attn_output": (c.hidden_size, q),
            "ffn_up": (2 * c.intermediate_size, c.hidden_size),
            "ffn_down": (c.hidden_size, c.intermediate_size),
        }
        check_gguf_shape(name, tensor, layer_shapes[part])
        return f"model.layers.{index}.{_GGUF_LAYER_NAMES[part]}.weight", tensor

    def _rope_cache(self, tensors: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Partial rotary; LongRoPE from the config, or from a GGUF's factor tensors
        (`long_factor` / `short_factor`) and its adapted `rope_parameters`."""
        c = self.config
        tensors = dict(tensors or {})
        scaling = c.rope_scaling
        if "long_factor" in tensors or "short_factor" in tensors:
            if "long_factor" not in tensors or "short_factor" not in tensors:
                raise CorruptModelFileError(
                    "the GGUF has one of rope_factors_long and rope_factors_short, not both"
                )
            scaling = {
                **(scaling or c.raw.get("rope_parameters") or {}),
                "rope_type": "longrope",
                "long_factor": tensors.pop("long_factor").tolist(),
                "short_factor": tensors.pop("short_factor").tolist(),
            }
        if tensors:
            raise CorruptModelFileError(f"unexpected rope tensors: {', '.join(sorted(tensors))}")
        if rope_type(scaling) == "yarn":  # transformers' Phi3Config reads it as LongRoPE
            scaling = {**(scaling or {}), "rope_type": "longrope"}
        table = rope_cache(rotary_dim(c), c.rope_theta, scaling, c.max_position_embeddings)
        return table.to(self.device)

    def _decoder(self) -> DecoderStack | None:
        """The one-call decode step takes the cos/sin table as it is (partial rotary
        and the LongRoPE attention factor included) but has no sliding window."""
        if any(w is not None for w in self.layer_windows):
            return None
        return super()._decoder()
