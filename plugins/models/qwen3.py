"""Qwen3 and Qwen3-MoE: Llama-shaped decoders with a per-head RMSNorm on q and k.

Qwen3 is the llama layer (`plugins.models.llama`) plus `q_norm`/`k_norm`: RMSNorm
over each head's `head_dim` values of q and of k, after the projections and before
rope. `head_dim` is explicit (q is `heads * head_dim` wide, not always the hidden
size); no q/k/v biases; tied embeddings where the config says so. With
`use_sliding_window`, the layers `layer_types` names (else those from
`max_window_layers` on) attend within `sliding_window` tokens (Qwen3-MoE: every
layer), as transformers does.

Qwen3-MoE replaces the MLP of its sparse layers (every `decoder_sparse_step`-th,
except `mlp_only_layers`) with routed experts: a router matmul, softmax in float32,
the top `num_experts_per_tok` experts (their probabilities renormalised to sum to
one when `norm_topk_prob`), and SwiGLU experts of `moe_intermediate_size` run by
`ops.fused_moe`. The other layers keep the dense MLP of `intermediate_size`.

Weights: Hugging Face folders name experts one by one
(`mlp.experts.{e}.gate_proj.weight`, ...); stacked names are taken too
(`mlp.experts.gate_up_proj` `[E, 2I, H]` as transformers holds them,
`mlp.experts.{gate,up,down}_proj` `[E, ., .]` from a GGUF). Experts are kept
stacked, float (bfloat16 under `--dtype bfloat16` on the CPU, where the kernel
multiplies bfloat16 weights; float32 under `--quantization int8`).

GGUF (`qwen3`, `qwen3moe`): llama.cpp does not permute q/k rows for these
(converted as Qwen2). `attn_q_norm`/`attn_k_norm` are the head norms;
`ffn_gate_inp` the router; `ffn_{gate,up,down}_exps` (or `ffn_gate_up_exps`) the
experts as 3-D tensors, which are dequantized at load (the quantized kernels take
2-D matrices; attention and dense-MLP matrices keep their blocks as stored).
llama.cpp's qwen3moe has every layer sparse and renormalises the top-k weights;
`{arch}.expert_weights_norm` overrides the latter where a file says it. Each
translated tensor's shape is checked against the metadata, and a mismatch names it.

Both run the per-op forward path (the one-call decode of `ops.fused_decode` is
the plain llama layer).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import ops
from llmcore.errors import CorruptModelFileError, UnsupportedArchitectureError
from llmcore.model_config import ModelConfig
from ops.fused_decode import DecoderStack
from ops.linear import Linear
from ops.moe import select_experts
from plugins.models.llama import LlamaForCausalLM, Weight, _Fused, _Layer

_Take = Callable[[str], Weight]  # takes a weight by name (llama's `_take_layer`)
_Dense = Callable[[str], torch.Tensor]  # the same, dequantized
_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight$")
# GGUF layer part -> Hugging Face name under model.layers.{i}. (stacked experts
# under names without ".weight", as transformers holds them)
_GGUF_QWEN3_NAMES = {
    "attn_q_norm": "self_attn.q_norm.weight",
    "attn_k_norm": "self_attn.k_norm.weight",
}
_GGUF_MOE_NAMES = {
    "ffn_gate_inp": "mlp.gate.weight",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_gate_up_exps": "mlp.experts.gate_up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
}


@dataclass(slots=True)
class _SparseMoe:
    """A sparse layer's feed-forward: router, then the chosen SwiGLU experts."""

    router: Linear  # [E, H]
    w13: torch.Tensor  # [E, 2I, H]: gate rows, then up rows
    w2: torch.Tensor  # [E, H, I]
    top_k: int
    renormalize: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = select_experts(self.router(x), self.top_k, self.renormalize)
        return ops.fused_moe(x, self.w13, self.w2, weights, ids)


@dataclass(slots=True)
class _Qwen3Layer(_Layer):
    q_norm: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    k_norm: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    moe: _SparseMoe | None = None  # set on Qwen3-MoE's sparse layers (no dense MLP then)


def _shape_error(name: str, shape: tuple[int, ...], want: tuple[int, ...], why: str) -> None:
    if shape != want:
        raise CorruptModelFileError(
            f"GGUF tensor {name!r} has shape {list(shape)} but the metadata ({why}) "
            f"make it {list(want)}"
        )


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3: the llama layer with RMSNorm over each head of q and of k before rope."""

    gguf_permutes_qk = False  # converted by llama.cpp as Qwen2 is

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(config, dtype, device)
        self.layer_windows = self._windows(config)

    @staticmethod
    def _windows(config: ModelConfig) -> list[int | None]:
        """With `use_sliding_window`, the layers `layer_types` names sliding (else
        those from `max_window_layers` on, as transformers derives them) see the
        last `sliding_window` tokens; the others, and every layer without it, all."""
        window, n = config.sliding_window, config.num_hidden_layers
        types = config.raw.get("layer_types")
        if window is None:
            return [None] * n
        if types:
            return [window if t == "sliding_attention" else None for t in types]
        first = int(config.raw.get("max_window_layers", n))
        return [window if i >= first else None for i in range(n)]

    @classmethod
    def gguf_to_hf(cls, name: str, tensor: Weight, config: ModelConfig) -> tuple[str, Weight]:
        match = _GGUF_LAYER.match(name)
        if match is None:
            return super().gguf_to_hf(name, tensor, config)
        index, part = match.groups()
        cls._check_gguf_shape(name, part, tuple(tensor.shape), config)
        hf = _GGUF_QWEN3_NAMES.get(part)
        if hf is None:
            return super().gguf_to_hf(name, tensor, config)
        return f"model.layers.{index}.{hf}", tensor

    @classmethod
    def _check_gguf_shape(
        cls, name: str, part: str, shape: tuple[int, ...], config: ModelConfig
    ) -> None:
        """A layer tensor's shape against the metadata (embedding_length, head
        counts, key_length, feed_forward_length), naming the tensor if it differs."""
        c = config
        q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        why = (
            f"hidden {c.hidden_size}, {c.num_attention_heads} heads and "
            f"{c.num_key_value_heads} kv heads of {c.head_dim}, ffn {c.intermediate_size}"
        )
        want = {
            "attn_q": (q, c.hidden_size),
            "attn_k": (kv, c.hidden_size),
            "attn_v": (kv, c.hidden_size),
            "attn_output": (c.hidden_size, q),
            "attn_q_norm": (c.head_dim,),
            "attn_k_norm": (c.head_dim,),
            "attn_norm": (c.hidden_size,),
            "ffn_norm": (c.hidden_size,),
            "ffn_gate": (c.intermediate_size, c.hidden_size),
            "ffn_up": (c.intermediate_size, c.hidden_size),
            "ffn_down": (c.hidden_size, c.intermediate_size),
        }.get(part)
        if want is not None:
            _shape_error(name, shape, want, why)

    def _take_layer(self, i: int, take: _Take, dense: _Dense, pending: dict[str, Weight]) -> _Layer:
        p = f"model.layers.{i}.self_attn."
        q_norm, k_norm = dense(p + "q_norm.weight"), dense(p + "k_norm.weight")
        for norm in (q_norm, k_norm):
            if norm.shape != (self.head_dim,):
                raise CorruptModelFileError(
                    f"layer {i}: q/k norm of shape {list(norm.shape)}, expected [{self.head_dim}]"
                )
        layer = super()._take_layer(i, take, dense, pending)
        parts = {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer)}
        moe = self._take_moe(i, dense, pending)
        return _Qwen3Layer(**parts, q_norm=q_norm, k_norm=k_norm, moe=moe)

    def _take_moe(self, i: int, dense: _Dense, pending: dict[str, Weight]) -> _SparseMoe | None:
        """Layer `i`'s routed experts, or None (a dense MLP: every Qwen3 layer)."""
        return None

    def _qk_norm(
        self, layer: _Layer, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(layer, _Qwen3Layer)
        eps = self.config.rms_norm_eps
        return ops.rms_norm(q, layer.q_norm, eps), ops.rms_norm(k, layer.k_norm, eps)

    def _decoder(self) -> DecoderStack | None:
        return None  # the one-call decode step has no q/k norms: the per-op path


def _raw_int(raw: dict[str, Any], *names: str) -> int | None:
    for name in names:
        if raw.get(name) is not None:
            return int(raw[name])
    return None


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    """Qwen3-MoE: Qwen3 whose sparse layers route each token to the top-k of
    `num_experts` SwiGLU experts (`ops.fused_moe`)."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(config, dtype, device)
        raw = config.raw
        experts = _raw_int(raw, "num_experts", "num_local_experts") or 0
        top_k = _raw_int(raw, "num_experts_per_tok") or 0
        if experts and not 0 < top_k <= experts:
            raise UnsupportedArchitectureError(
                f"Qwen3-MoE config: num_experts_per_tok={top_k} must be in 1..{experts} "
                f"(num_experts)"
            )
        self.num_experts, self.top_k = experts, top_k
        self.moe_intermediate_size = _raw_int(raw, "moe_intermediate_size") or 0
        self.renormalize = bool(raw.get("norm_topk_prob", False))
        step = _raw_int(raw, "decoder_sparse_step") or 1
        dense_only = {int(i) for i in raw.get("mlp_only_layers") or ()}
        # transformers' Qwen3-MoE applies a sliding window (if any) in every layer
        self.layer_windows = [config.sliding_window] * config.num_hidden_layers
        self.sparse_layers = frozenset(
            i
            for i in range(config.num_hidden_layers)
            if experts and i not in dense_only and (i + 1) % step == 0
        )

    @classmethod
    def adapt_gguf_config(cls, config: ModelConfig) -> ModelConfig:
        """llama.cpp's `{arch}.expert_count`, `.expert_used_count` and
        `.expert_feed_forward_length` as `num_experts`, `num_experts_per_tok` and
        `moe_intermediate_size`; every layer sparse; top-k weights renormalised (as
        llama.cpp's qwen3moe) unless `.expert_weights_norm` says otherwise."""
        raw, arch = config.raw, config.raw.get("general.architecture", "qwen3moe")
        try:
            experts = int(raw[f"{arch}.expert_count"])
            top_k = int(raw[f"{arch}.expert_used_count"])
        except KeyError as exc:
            raise CorruptModelFileError(f"GGUF metadata lacks the key {exc.args[0]!r}") from exc
        scale = raw.get(f"{arch}.expert_weights_scale")
        gating = raw.get(f"{arch}.expert_gating_func")
        if scale not in (None, 0, 1) or gating not in (None, 1):  # 1: softmax
            raise UnsupportedArchitectureError(
                f"{arch}: expert_weights_scale {scale} / expert_gating_func {gating}: "
                "only softmax routing with unscaled weights is supported"
            )
        ffn = raw.get(f"{arch}.expert_feed_forward_length")
        hf = {
            "num_experts": experts,
            "num_experts_per_tok": top_k,
            # llama.cpp's default when the key is absent
            "moe_intermediate_size": int(ffn) if ffn else config.intermediate_size // top_k,
            "norm_topk_prob": bool(raw.get(f"{arch}.expert_weights_norm", True)),
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
        }
        return dataclasses.replace(config, raw={**raw, **hf})

    @classmethod
    def _check_gguf_shape(
        cls, name: str, part: str, shape: tuple[int, ...], config: ModelConfig
    ) -> None:
        super()._check_gguf_shape(name, part, shape, config)
        raw = config.raw
        e, inter, h = raw["num_experts"], raw["moe_intermediate_size"], config.hidden_size
        arch = raw.get("general.architecture", "qwen3moe")
        why = f"{arch}.expert_count {e}, .expert_feed_forward_length {inter}, .embedding_length {h}"
        want = {
            "ffn_gate_inp": (e, h),
            "ffn_gate_exps": (e, inter, h),
            "ffn_up_exps": (e, inter, h),
            "ffn_gate_up_exps": (e, 2 * inter, h),
            "ffn_down_exps": (e, h, inter),
        }.get(part)
        if want is not None:
            _shape_error(name, shape, want, why)

    @classmethod
    def gguf_to_hf(cls, name: str, tensor: Weight, config: ModelConfig) -> tuple[str, Weight]:
        match = _GGUF_LAYER.match(name)
        if match is None or match.group(2) not in _GGUF_MOE_NAMES:
            return super().gguf_to_hf(name, tensor, config)
        index, part = match.groups()
        cls._check_gguf_shape(name, part, tuple(tensor.shape), config)
        return f"model.layers.{index}.{_GGUF_MOE_NAMES[part]}", tensor

    def _take_mlp(self, i: int, weights: Callable[..., list[Weight]]) -> tuple[_Fused, _Fused]:
        if i in self.sparse_layers:
            return _Fused([]), _Fused([])
        return super()._take_mlp(i, weights)

    def _take_moe(self, i: int, dense: _Dense, pending: dict[str, Weight]) -> _SparseMoe | None:
        if i not in self.sparse_layers:
            return None
        p = f"model.layers.{i}.mlp."
        n, h, inter = self.num_experts, self.config.hidden_size, self.moe_intermediate_size
        router = dense(p + "gate.weight")
        if p + "experts.gate_up_proj" in pending:
            w13 = dense(p + "experts.gate_up_proj")
        elif p + "experts.gate_proj" in pending:
            w13 = torch.cat([dense(p + "experts.gate_proj"), dense(p + "experts.up_proj")], 1)
        else:  # one by one, as Hugging Face checkpoints name them
            w13 = torch.stack(
                [
                    torch.cat([dense(f"{p}experts.{e}.{n}_proj.weight") for n in ("gate", "up")])
                    for e in range(n)
                ]
            )
        if p + "experts.down_proj" in pending:
            w2 = dense(p + "experts.down_proj")
        else:
            w2 = torch.stack([dense(f"{p}experts.{e}.down_proj.weight") for e in range(n)])
        for what, got, want in (
            ("router", router.shape, (n, h)),
            ("gate/up experts", w13.shape, (n, 2 * inter, h)),
            ("down experts", w2.shape, (n, h, inter)),
        ):
            if tuple(got) != want:
                raise CorruptModelFileError(
                    f"layer {i}: {what} of shape {list(got)}, expected {list(want)} "
                    f"({n} experts, hidden {h}, moe_intermediate_size {inter})"
                )
        if self.quantization == "bf16":  # the kernel multiplies bfloat16 experts
            w13, w2 = w13.bfloat16(), w2.bfloat16()
        return _SparseMoe(
            Linear(router), w13.contiguous(), w2.contiguous(), self.top_k, self.renormalize
        )

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        assert isinstance(layer, _Qwen3Layer)
        if layer.moe is not None:
            return layer.moe(x)
        return super()._mlp(layer, x)
