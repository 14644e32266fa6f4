"""The llama family: Llama (1-3.x), Mistral, Qwen2 and SmolLM2.

Pre-norm decoder layers of grouped-query attention with rotary embeddings (neox
layout, `rope_theta`, llama3/linear scaling) and a SwiGLU MLP, RMSNorm throughout;
Qwen2 adds q/k/v biases; tied embeddings where the config says so. At load time
q/k/v are fused into one matrix and gate/up into another, so a layer is four
matmuls. The forward pass runs a flat batch of tokens from many sequences and
reads/writes the paged KV cache only through `ops`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import ops
from llmcore.errors import CorruptModelFileError, UnsupportedArchitectureError
from llmcore.model_api import ForwardBatch, KVCache
from llmcore.model_config import ModelConfig
from ops.linear import Linear
from ops.rotary import build_rope_cache, rope_inv_freq

_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GGUF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "rope_freqs.weight": "model.rotary_emb.freq_factors",
}


def _unpermute_qk(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's convert-time row permutation of q/k (GPT-J -> neox rope)."""
    rows = w.shape[0]
    split = w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])
    return split.transpose(1, 2).reshape(w.shape)


@dataclass(slots=True)
class _Layer:
    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o_proj: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    # The four matmuls over those weights (MKL-prepacked where that pays, ops.linear).
    qkv_mm: Linear = field(init=False)
    o_mm: Linear = field(init=False)
    gate_up_mm: Linear = field(init=False)
    down_mm: Linear = field(init=False)

    def __post_init__(self) -> None:
        self.qkv_mm = Linear(self.qkv, self.qkv_bias)
        self.o_mm = Linear(self.o_proj)
        self.gate_up_mm = Linear(self.gate_up)
        self.down_mm = Linear(self.down)

    def linears(self) -> tuple[Linear, ...]:
        return self.qkv_mm, self.o_mm, self.gate_up_mm, self.down_mm


class LlamaForCausalLM:
    """Llama, and SmolLM2 (a Llama with tied embeddings)."""

    gguf_permutes_qk = True  # llama.cpp permutes q/k rows for llama-arch conversions

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        if config.num_attention_heads % config.num_key_value_heads:
            raise UnsupportedArchitectureError(
                f"{config.num_attention_heads} attention heads are not a multiple of "
                f"{config.num_key_value_heads} kv heads"
            )
        self.config, self.dtype, self.device = config, dtype, device
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        try:
            self._inv_freq = rope_inv_freq(self.head_dim, config.rope_theta, config.rope_scaling)
        except ValueError as exc:
            raise UnsupportedArchitectureError(str(exc)) from exc
        self.cos_sin_cache = build_rope_cache(self._inv_freq, config.max_position_embeddings).to(
            device
        )
        self.layers: list[_Layer] = []
        self.embed_tokens = torch.empty(0)
        self.norm = torch.empty(0)
        self.lm_head = torch.empty(0)
        self.lm_head_mm = Linear(self.lm_head)

    # ---- weights ----------------------------------------------------------------------

    @classmethod
    def gguf_to_hf(
        cls, name: str, tensor: torch.Tensor, config: ModelConfig
    ) -> tuple[str, torch.Tensor]:
        if name in _GGUF_GLOBAL_NAMES:
            return _GGUF_GLOBAL_NAMES[name], tensor
        match = _GGUF_LAYER.match(name)
        if match is None or match.group(2) not in _GGUF_LAYER_NAMES:
            raise CorruptModelFileError(f"unexpected tensor {name!r} for a llama-family GGUF")
        index, part, kind = match.groups()
        if cls.gguf_permutes_qk and part in ("attn_q", "attn_k"):
            heads = config.num_attention_heads if part == "attn_q" else config.num_key_value_heads
            tensor = _unpermute_qk(tensor, heads)
        return f"model.layers.{index}.{_GGUF_LAYER_NAMES[part]}.{kind}", tensor

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        w: dict[str, torch.Tensor] = {}
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            w[name] = tensor.to(device=self.device, dtype=self.dtype)

        def take(name: str) -> torch.Tensor:
            if name not in w:
                raise CorruptModelFileError(f"weight {name!r} is missing from the model files")
            return w.pop(name)

        self.embed_tokens = take("model.embed_tokens.weight")
        self.norm = take("model.norm.weight")
        if self.config.tie_word_embeddings and "lm_head.weight" not in w:
            self.lm_head = self.embed_tokens
        else:
            self.lm_head = take("lm_head.weight")
        if "model.rotary_emb.freq_factors" in w:
            factors = w.pop("model.rotary_emb.freq_factors").float().cpu()
            self.cos_sin_cache = build_rope_cache(
                self._inv_freq / factors, self.config.max_position_embeddings
            ).to(self.device)
        self.layers = [self._take_layer(i, take, w) for i in range(self.config.num_hidden_layers)]
        if w:
            raise CorruptModelFileError(f"unexpected weights: {', '.join(sorted(w)[:5])}")
        self.lm_head_mm = Linear(self.lm_head)
        self._enable_packing()

    def _enable_packing(self) -> None:
        """MKL-prepacked matmuls (ops.linear) when a second copy of the matmul
        weights fits in an eighth of the machine's memory."""
        linears = [self.lm_head_mm, *(mm for layer in self.layers for mm in layer.linears())]
        extra = sum(mm.weight.numel() * mm.weight.element_size() for mm in linears)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if extra <= memory // 8:
            for mm in linears:
                mm.enable_packing()

    def _take_layer(
        self, i: int, take: Callable[[str], torch.Tensor], w: dict[str, torch.Tensor]
    ) -> _Layer:
        p = f"model.layers.{i}."
        qkv = torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        bias = None
        if f"{p}self_attn.q_proj.bias" in w:
            bias = torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        return _Layer(
            input_norm=take(p + "input_layernorm.weight"),
            qkv=qkv,
            qkv_bias=bias,
            o_proj=take(p + "self_attn.o_proj.weight"),
            post_norm=take(p + "post_attention_layernorm.weight"),
            gate_up=torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]),
            down=take(p + "mlp.down_proj.weight"),
        )

    # ---- forward ----------------------------------------------------------------------

    def forward(self, batch: ForwardBatch, kv_caches: list[KVCache]) -> torch.Tensor:
        eps = self.config.rms_norm_eps
        hidden = F.embedding(batch.input_ids, self.embed_tokens)
        residual: torch.Tensor | None = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            if residual is None:
                residual, x = hidden, ops.rms_norm(hidden, layer.input_norm, eps)
            else:
                x, residual = ops.fused_add_rms_norm(hidden, residual, layer.input_norm, eps)
            hidden = self._attention(layer, x, batch, kv_cache)
            x, residual = ops.fused_add_rms_norm(hidden, residual, layer.post_norm, eps)
            hidden = layer.down_mm(ops.silu_and_mul(layer.gate_up_mm(x)))
        assert residual is not None
        hidden, _ = ops.fused_add_rms_norm(hidden, residual, self.norm, eps)
        return hidden

    def _attention(
        self, layer: _Layer, x: torch.Tensor, batch: ForwardBatch, kv_cache: KVCache
    ) -> torch.Tensor:
        num_tokens, d = x.shape[0], self.head_dim
        qkv = layer.qkv_mm(x)
        q_size, kv_size = self.num_heads * d, self.num_kv_heads * d
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, d)
        k = k.view(num_tokens, self.num_kv_heads, d)
        v = v.view(num_tokens, self.num_kv_heads, d)
        ops.rotary_embedding(batch.positions, q, k, self.cos_sin_cache, is_neox=True)
        key_cache, value_cache = kv_cache
        ops.reshape_and_cache(k, v, key_cache, value_cache, batch.slot_mapping)
        if batch.is_decode:
            out = ops.paged_attention_decode(
                q, key_cache, value_cache, batch.block_tables, batch.seq_lens, self.scale
            )
        else:
            out = ops.paged_attention_prefill(
                q,
                key_cache,
                value_cache,
                batch.block_tables,
                batch.query_start_loc,
                batch.seq_lens,
                self.scale,
            )
        return layer.o_mm(out.view(num_tokens, q_size))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head_mm(hidden).float()


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral: a Llama whose config may name a sliding window (see design notes)."""


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: q/k/v biases; llama.cpp does not permute its q/k rows."""

    gguf_permutes_qk = False
