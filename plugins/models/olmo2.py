"""OLMo 2 (`Olmo2ForCausalLM`; GGUF `olmo2`).

A Llama-shaped stack with the norms moved: no pre-norms; each block's output is
normalized before it joins the residual stream (`h = x + post_attention_norm(attn(x))`,
`h = h + post_feedforward_norm(mlp(h))`), and q and k are RMS-normalized over the
whole projection (`num_heads * head_dim`, `num_kv_heads * head_dim`) before the
rotary embedding. The layer differs from the one-call decode step's, so every step
runs the per-op path.

GGUF (llama.cpp's converter): q/k rows are not permuted; `attn_q_norm`,
`attn_k_norm`, `post_attention_norm` and `post_ffw_norm` hold the norms. Every
tensor's shape is checked against the metadata as it is read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import ops
from llmcore.errors import CorruptModelFileError, UnsupportedArchitectureError
from llmcore.model_api import ForwardBatch, KVCache
from llmcore.model_config import ModelConfig
from ops.fused_decode import DecoderStack
from plugins.models.llama import LlamaForCausalLM, Weight, _Fused, _Layer
from plugins.models.phi3 import check_gguf_shape

_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight$")
_GGUF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
Take = Callable[[str], Weight]
Dense = Callable[[str], torch.Tensor]
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _empty() -> torch.Tensor:
    return torch.empty(0)


@dataclass(slots=True)
class _Olmo2Layer(_Layer):
    """`post_norm` is the post-attention norm; `input_norm` is unused."""

    q_norm: torch.Tensor = field(default_factory=_empty)
    k_norm: torch.Tensor = field(default_factory=_empty)
    ffw_norm: torch.Tensor = field(default_factory=_empty)


class Olmo2ForCausalLM(LlamaForCausalLM):
    """OLMo 2: post-norms and whole-projection q/k RMSNorm."""

    gguf_permutes_qk = False

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        if config.attention_bias:
            raise UnsupportedArchitectureError("OLMo 2 with attention biases is not supported")
        super().__init__(config, dtype, device)

    @classmethod
    def gguf_to_hf(cls, name: str, tensor: Weight, config: ModelConfig) -> tuple[str, Weight]:
        c = config
        hidden, inter = c.hidden_size, c.intermediate_size
        q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        if name in _GGUF_GLOBAL_NAMES:
            norm = name == "output_norm.weight"
            check_gguf_shape(name, tensor, (hidden,) if norm else (c.vocab_size, hidden))
            return _GGUF_GLOBAL_NAMES[name], tensor
        match = _GGUF_LAYER.match(name)
        if match is None or match.group(2) not in _GGUF_LAYER_NAMES:
            raise CorruptModelFileError(f"unexpected tensor {name!r} for an olmo2 GGUF")
        index, part = match.groups()
        shapes = {
            "attn_q": (q, hidden),
            "attn_k": (kv, hidden),
            "attn_v": (kv, hidden),
            "attn_output": (hidden, q),
            "attn_q_norm": (q,),
            "attn_k_norm": (kv,),
            "post_attention_norm": (hidden,),
            "post_ffw_norm": (hidden,),
            "ffn_gate": (inter, hidden),
            "ffn_up": (inter, hidden),
            "ffn_down": (hidden, inter),
        }
        check_gguf_shape(name, tensor, shapes[part])
        return f"model.layers.{index}.{_GGUF_LAYER_NAMES[part]}.weight", tensor

    def _take_layer(self, i: int, take: Take, dense: Dense, pending: dict[str, Weight]) -> _Layer:
        """No pre-norm; the q/k norms and the post-feedforward norm besides."""
        p = f"model.layers.{i}."

        def matmul(*names: str) -> _Fused:
            return _Fused.of([self._quantized(take(f"{p}{n}.weight")) for n in names])

        return _Olmo2Layer(
            input_norm=_empty(),
            post_norm=dense(p + "post_attention_layernorm.weight"),
            qkv_mm=matmul("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            o_mm=matmul("self_attn.o_proj"),
            gate_up_mm=matmul("mlp.gate_proj", "mlp.up_proj"),
            down_mm=matmul("mlp.down_proj"),
            q_norm=dense(p + "self_attn.q_norm.weight"),
            k_norm=dense(p + "self_attn.k_norm.weight"),
            ffw_norm=dense(p + "post_feedforward_layernorm.weight"),
        )

    def _decoder(self) -> DecoderStack | None:
        return None  # the one-call decode step is Llama's layer, not this one

    def forward(self, batch: ForwardBatch, kv_caches: list[KVCache]) -> torch.Tensor:
        eps = self.config.rms_norm_eps
        hidden = self.embed(batch.input_ids)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            assert isinstance(layer, _Olmo2Layer)
            attn = self._attention(layer, hidden, batch, kv_cache)
            hidden = hidden + ops.rms_norm(attn, layer.post_norm, eps)
            mlp = layer.down_mm(ops.silu_and_mul(layer.gate_up_mm(hidden)))
            hidden = hidden + ops.rms_norm(mlp, layer.ffw_norm, eps)
        return ops.rms_norm(hidden, self.norm, eps)

    def _qkv(self, layer: _Layer, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q and k RMS-normalized over all their heads at once."""
        assert isinstance(layer, _Olmo2Layer)
        q, k, v = super()._qkv(layer, x)
        eps = self.config.rms_norm_eps
        return ops.rms_norm(q, layer.q_norm, eps), ops.rms_norm(k, layer.k_norm, eps), v
