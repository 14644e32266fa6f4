"""The llama family: Llama (1-3.x), Mistral, Qwen2 and SmolLM2.

Pre-norm decoder layers of grouped-query attention with rotary embeddings (neox
layout, `rope_theta`, llama3/linear scaling) and a SwiGLU MLP, RMSNorm throughout;
Qwen2 adds q/k/v biases; tied embeddings where the config says so. At load time
q/k/v are fused into one matrix and gate/up into another, so a layer is four
matmuls. The forward pass runs a flat batch of tokens from many sequences and
reads/writes the paged KV cache only through `ops`.

Weights are float tensors, or `ops.quant.QuantWeight`s (GGUF blocks kept as
stored, or int8 rows made at load by `--quantization int8`) multiplied by the
quantized C kernels. Parts of one fused matmul that are quantized differently
(a Q4_K_M file's Q6_K `attn_v` beside Q4_K q and k) stay separate parts whose
outputs sit side by side. With every matmul quantized, a step of decode tokens
runs the whole stack in one C call (`ops.fused_decode.DecoderStack`); the per-op
path below stays the reference and runs every other step.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

import ops
from llmcore.errors import CorruptModelFileError, UnsupportedArchitectureError
from llmcore.model_api import ForwardBatch, KVCache, kv_cache_groups
from llmcore.model_config import ModelConfig
from ops.fused_decode import DecoderLayerWeights, DecoderStack, StackShape
from ops.linear import Linear
from ops.quant import (
    QuantLinear,
    QuantWeight,
    bf16_rows,
    float32_rows,
    quant_embedding,
    quantize_int8_rows,
)
from ops.rotary import rope_cache

Weight = torch.Tensor | QuantWeight
Matmul = Linear | QuantLinear
# Weight formats made at load: "int8" (--quantization int8: int8 rows, W8A8) and
# "bf16" (--dtype bfloat16 on the CPU: bfloat16 rows, float32 activations).
QUANTIZATIONS = ("int8", "bf16", "f32")  # f32: float32 rows through the same kernels

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


def _unpermute_qk(w: Weight, num_heads: int) -> Weight:
    """Undo llama.cpp's convert-time row permutation of q/k (GPT-J -> neox rope)."""
    rows = w.shape[0]
    order = torch.arange(rows).reshape(num_heads, rows // num_heads // 2, 2)
    order = order.transpose(1, 2).reshape(rows)
    return w.index_rows(order) if isinstance(w, QuantWeight) else w[order]


def _fuse(parts: list[Weight]) -> list[Weight]:
    """Row-stacked weights of one fused matmul: one matrix where they share a
    format, else the parts as they are (their outputs go side by side)."""
    if all(isinstance(p, torch.Tensor) for p in parts):
        return [torch.cat(parts)]  # type: ignore[arg-type]
    if all(isinstance(p, QuantWeight) for p in parts):
        quant = [p for p in parts if isinstance(p, QuantWeight)]
        if len({p.qtype for p in quant}) == 1:
            return [QuantWeight.cat(quant)]
    return parts


def _matmul(weight: Weight, bias: torch.Tensor | None = None) -> Matmul:
    if isinstance(weight, QuantWeight):
        return QuantLinear(weight, bias)
    return Linear(weight, bias)


@dataclass(slots=True)
class _Fused:
    """One matmul of a layer as parts whose outputs sit side by side."""

    parts: list[Matmul]

    @classmethod
    def of(cls, weights: list[Weight], bias: torch.Tensor | None = None) -> _Fused:
        fused = _fuse(weights)
        if len(fused) == 1:
            return cls([_matmul(fused[0], bias)])
        biases: list[torch.Tensor | None] = [None] * len(fused)
        if bias is not None:
            biases = list(bias.split([w.shape[0] for w in fused]))
        return cls([_matmul(w, b) for w, b in zip(fused, biases, strict=True)])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.parts) == 1:
            return self.parts[0](x)
        return torch.cat([part(x) for part in self.parts], dim=-1)

    def quantized(self) -> list[QuantLinear] | None:
        parts = [p for p in self.parts if isinstance(p, QuantLinear)]
        return parts if len(parts) == len(self.parts) else None


@dataclass(slots=True)
class _Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv_mm: _Fused
    o_mm: _Fused
    gate_up_mm: _Fused
    down_mm: _Fused
    qkv_bias: torch.Tensor | None = field(default=None)
    window: int | None = None  # the layer's sliding window (None: full attention)
    group: int = 0  # its KV cache group (`llmcore.model_api.kv_cache_groups`)

    def linears(self) -> list[Linear]:
        """The float matmuls (MKL packing applies to them)."""
        fused = (self.qkv_mm, self.o_mm, self.gate_up_mm, self.down_mm)
        return [p for f in fused for p in f.parts if isinstance(p, Linear)]


class LlamaForCausalLM:
    """Llama, and SmolLM2 (a Llama with tied embeddings)."""

    gguf_permutes_qk = True  # llama.cpp permutes q/k rows for llama-arch conversions
    # The checkpoint modules each fused matmul of a layer is made of, in row order
    # (a hook: Phi-3's checkpoint stores q/k/v and gate/up already fused).
    fused_modules: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "o": ("self_attn.o_proj",),
        "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
        "down": ("mlp.down_proj",),
    }

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
            self.cos_sin_cache = self._rope_cache()
        except ValueError as exc:
            raise UnsupportedArchitectureError(str(exc)) from exc
        self.layers: list[_Layer] = []
        self.embed_tokens: Weight = torch.empty(0)
        self.norm = torch.empty(0)
        self.lm_head: Weight = torch.empty(0)
        self.lm_head_mm: Matmul = Linear(torch.empty(0))
        self.quantization: str | None = None  # "int8": float matmul weights to int8 rows
        self.decoder: DecoderStack | None = None  # the one-call decode step, if it runs
        self.layer_windows: list[int | None] = [None] * config.num_hidden_layers

    def set_quantization(self, method: str | None) -> None:
        """The format float matmul weights take at load: "int8" (per-row scales;
        activations quantized per token: W8A8) or "bf16" (bfloat16 rows multiplied
        in BF16 with float32 sums; activations float32)."""
        if method is not None and method not in QUANTIZATIONS:
            raise UnsupportedArchitectureError(
                f"quantization {method!r} is not supported (choose: {', '.join(QUANTIZATIONS)})"
            )
        self.quantization = method

    # ---- weights ----------------------------------------------------------------------

    @classmethod
    def gguf_to_hf(cls, name: str, tensor: Weight, config: ModelConfig) -> tuple[str, Weight]:
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

    def load_weights(self, weights: Iterable[tuple[str, Weight]]) -> None:
        w: dict[str, Weight] = {}
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            if isinstance(tensor, QuantWeight):
                w[name] = tensor
            else:
                w[name] = tensor.to(device=self.device, dtype=self.dtype)

        def take(name: str) -> Weight:
            if name not in w:
                raise CorruptModelFileError(f"weight {name!r} is missing from the model files")
            return w.pop(name)

        def dense(name: str) -> torch.Tensor:
            t = take(name)
            return t.dequantize(self.dtype) if isinstance(t, QuantWeight) else t

        self.embed_tokens = take("model.embed_tokens.weight")
        if self.quantization == "bf16":  # the table too: half the memory, rows read as float
            self.embed_tokens = self._quantized(self.embed_tokens)
        self.norm = dense("model.norm.weight")
        if self.config.tie_word_embeddings and "lm_head.weight" not in w:
            self.lm_head = self.embed_tokens
        else:
            self.lm_head = take("lm_head.weight")
        rope = [name for name in w if name.startswith("model.rotary_emb.")]
        if rope:  # a GGUF's rope tensors
            tensors = {n.removeprefix("model.rotary_emb."): dense(n).float().cpu() for n in rope}
            self.cos_sin_cache = self._rope_cache(tensors)
        self.layers = [
            self._take_layer(i, take, dense, w) for i in range(self.config.num_hidden_layers)
        ]
        _, groups = kv_cache_groups(self.layer_windows)
        for layer, window, group in zip(self.layers, self.layer_windows, groups, strict=True):
            layer.window, layer.group = window, group
        if w:
            raise CorruptModelFileError(f"unexpected weights: {', '.join(sorted(w)[:5])}")
        self.lm_head_mm = _matmul(self._quantized(self.lm_head))
        self._enable_packing()
        self.decoder = self._decoder()

    def _rope_cache(self, tensors: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The cos/sin table on the model's device (`ops.rotary.rope_cache`: every
        scaling type of the config). `tensors`: a GGUF's rope tensors, by their name
        after `model.rotary_emb.` (Llama 3's `freq_factors`)."""
        tensors = dict(tensors or {})
        factors = tensors.pop("freq_factors", None)
        if tensors:
            raise CorruptModelFileError(f"unexpected rope tensors: {', '.join(sorted(tensors))}")
        c = self.config
        table = rope_cache(
            self.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings,
            freq_factors=factors,
        )  # fmt: skip
        return table.to(self.device)

    def _quantized(self, weight: Weight) -> Weight:
        """A matmul weight as `--quantization` wants it."""
        if isinstance(weight, torch.Tensor):
            if self.quantization == "int8":
                return quantize_int8_rows(weight.float())
            if self.quantization == "bf16":
                return bf16_rows(weight)
            if self.quantization == "f32":
                return float32_rows(weight)
        return weight

    def _enable_packing(self) -> None:
        """MKL-prepacked matmuls (ops.linear) when a second copy of the matmul
        weights fits in an eighth of the machine's memory."""
        linears = [mm for layer in self.layers for mm in layer.linears()]
        if isinstance(self.lm_head_mm, Linear):
            linears.append(self.lm_head_mm)
        extra = sum(mm.weight.numel() * mm.weight.element_size() for mm in linears)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if extra <= memory // 8:
            for mm in linears:
                mm.enable_packing()

    def _take_layer(
        self,
        i: int,
        take: Callable[[str], Weight],
        dense: Callable[[str], torch.Tensor],
        pending: dict[str, Weight],
    ) -> _Layer:
        p = f"model.layers.{i}."
        q = self._quantized

        def weights(*names: str) -> list[Weight]:
            return [q(take(p + name + ".weight")) for name in names]

        bias = None
        if f"{p}self_attn.q_proj.bias" in pending:
            bias = torch.cat([dense(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        m = self.fused_modules
        gate_up, down = self._take_mlp(i, weights)
        return _Layer(
            input_norm=dense(p + "input_layernorm.weight"),
            post_norm=dense(p + "post_attention_layernorm.weight"),
            qkv_mm=_Fused.of(weights(*m["qkv"]), bias),
            o_mm=_Fused.of(weights(*m["o"])),
            gate_up_mm=gate_up,
            down_mm=down,
            qkv_bias=bias,
            window=self.layer_windows[i],
        )

    def _take_mlp(self, i: int, weights: Callable[..., list[Weight]]) -> tuple[_Fused, _Fused]:
        """Layer `i`'s SwiGLU MLP as its gate_up and down matmuls (`weights` takes
        the layer's matmul weights by name). A subclass whose layer `i` has another
        feed-forward returns empty ones (`_Fused([])`) and overrides `_mlp`."""
        m = self.fused_modules
        return _Fused.of(weights(*m["gate_up"])), _Fused.of(weights(*m["down"]))

    def _decoder(self) -> DecoderStack | None:
        """The one-call decode step when every matmul is quantized for the kernels
        and the model runs float32 on the CPU; else None (the per-op path)."""
        if self.device.type != "cpu" or self.dtype != torch.float32:
            return None
        if len(set(self.layer_windows)) > 1:  # one block table per step (one KV group)
            return None
        if os.environ.get("LLMCORE_FUSED_DECODE", "1") == "0":
            return None
        layers = []
        for layer in self.layers:
            fused = (layer.qkv_mm, layer.o_mm, layer.gate_up_mm, layer.down_mm)
            qkv, o, gate_up, down = (mm.quantized() for mm in fused)
            if qkv is None or o is None or gate_up is None or down is None:
                return None
            layers.append(
                DecoderLayerWeights(
                    layer.input_norm,
                    layer.post_norm,
                    qkv,
                    o,
                    gate_up,
                    down,
                    layer.qkv_bias,
                    sliding_window=layer.window,
                )
            )
        c = self.config
        shape = StackShape(
            hidden=c.hidden_size,
            intermediate=c.intermediate_size,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            eps=c.rms_norm_eps,
            scale=self.scale,
        )
        return DecoderStack.build(shape, layers, self.norm, self.cos_sin_cache)

    # ---- forward ----------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if isinstance(self.embed_tokens, QuantWeight):
            return quant_embedding(input_ids, self.embed_tokens)
        return F.embedding(input_ids, self.embed_tokens)

    def forward(self, batch: ForwardBatch, kv_caches: list[KVCache]) -> torch.Tensor:
        decoder = self.decoder
        if batch.is_decode and decoder is not None:
            limit = decoder.max_tokens
            if limit is None or batch.input_ids.shape[0] <= limit:
                return self._fused_decode(batch, kv_caches)
        eps = self.config.rms_norm_eps
        hidden = self.embed(batch.input_ids)
        residual: torch.Tensor | None = None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            if residual is None:
                residual, x = hidden, ops.rms_norm(hidden, layer.input_norm, eps)
            else:
                x, residual = ops.fused_add_rms_norm(hidden, residual, layer.input_norm, eps)
            hidden = self._attention(layer, x, batch, kv_cache)
            x, residual = ops.fused_add_rms_norm(hidden, residual, layer.post_norm, eps)
            hidden = self._mlp(layer, x)
        assert residual is not None
        hidden, _ = ops.fused_add_rms_norm(hidden, residual, self.norm, eps)
        return hidden

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        """The layer's feed-forward on its normed input (a subclass may route it)."""
        return layer.down_mm(ops.silu_and_mul(layer.gate_up_mm(x)))

    def _qk_norm(
        self, layer: _Layer, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q `[T, heads, head_dim]` and k `[T, kv_heads, head_dim]` before rope: as
        they are here; a subclass may normalize them (Qwen3's per-head RMSNorm)."""
        return q, k

    def _fused_decode(self, batch: ForwardBatch, kv_caches: list[KVCache]) -> torch.Tensor:
        decoder = self.decoder
        assert decoder is not None
        if decoder.bound_to is not kv_caches[0][0]:
            decoder.bind(kv_caches)
        hidden = self.embed(batch.input_ids).contiguous()
        return decoder(
            hidden, batch.positions, batch.slot_mapping, batch.block_tables, batch.seq_lens
        )

    def _attention(
        self, layer: _Layer, x: torch.Tensor, batch: ForwardBatch, kv_cache: KVCache
    ) -> torch.Tensor:
        num_tokens, d = x.shape[0], self.head_dim
        q, k, v = self._qkv(layer, x)
        q = q.view(num_tokens, self.num_heads, d)
        k = k.view(num_tokens, self.num_kv_heads, d)
        v = v.view(num_tokens, self.num_kv_heads, d)
        q, k = self._qk_norm(layer, q, k)
        key_cache, value_cache = kv_cache
        tables, slots = batch.kv_tables(layer.group)
        ops.rotary_embedding_and_cache(
            batch.positions, q, k, v, self.cos_sin_cache, key_cache, value_cache, slots,
            is_neox=True,
        )  # fmt: skip
        if batch.is_decode:
            out = ops.paged_attention_decode(
                q, key_cache, value_cache, tables, batch.seq_lens, self.scale,
                sliding_window=layer.window,
            )  # fmt: skip
        else:
            out = ops.paged_attention_prefill(
                q, key_cache, value_cache, tables, batch.query_start_loc, batch.seq_lens,
                self.scale, sliding_window=layer.window,
            )  # fmt: skip
        return layer.o_mm(out.view(num_tokens, self.num_heads * d))

    def _qkv(self, layer: _Layer, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The layer's query, key and value, `[T, heads * head_dim]` each (a hook:
        OLMo 2 normalizes q and k here)."""
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return layer.qkv_mm(x).split([q_size, kv_size, kv_size], dim=-1)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head_mm(hidden).float()


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral: a Llama whose config may name a sliding window (v0.1: 4096), which
    every layer applies; the KV cache keeps only the blocks the window sees."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(config, dtype, device)
        self.layer_windows = [config.sliding_window] * config.num_hidden_layers


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2: q/k/v biases; llama.cpp does not permute its q/k rows."""

    gguf_permutes_qk = False
