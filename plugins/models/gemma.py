"""The Gemma family: Gemma 2 and Gemma 3 (text), from Hugging Face folders and GGUF.

A llama-shaped decoder (grouped-query attention, neox rotary embeddings, a gated
MLP, the matmuls fused and quantized as in `plugins.models.llama`) with Gemma's
differences, each as transformers computes it:

- embeddings times `sqrt(hidden_size)`, the factor rounded to the activation dtype;
- a GELU-tanh gated MLP (`ops.gelu_tanh_and_mul`);
- four RMSNorms per layer (before and after attention, before and after the MLP),
  each `x * rsqrt(mean(x^2) + eps) * (1 + w)` in float32 and cast back. `1 + w` is
  formed once at load, in float32 as transformers forms it at every call (the same
  float32 product follows), so the fold changes no bit; llama.cpp's converter stores
  every `*norm.weight` with the 1 already added, so a GGUF's norms are taken as
  they are;
- Gemma 3: an RMSNorm of each query and key head before the rotary embedding;
- the attention scale `query_pre_attn_scalar ** -0.5`;
- sliding-window and global layers interleaved (`layer_types`, or the older
  `sliding_window_pattern`), each sliding layer seeing its last `sliding_window`
  tokens; Gemma 3 rotates each kind by its own table (`rope_local_base_freq`
  for sliding layers, `rope_theta` and its scaling for global ones);
- Gemma 2: attention scores soft-capped (`attn_logit_softcapping`: `c * tanh(s / c)`)
  and the final logits too (`final_logit_softcapping`; Gemma 3 honours that one
  where a config sets it, and, like transformers, never caps its attention).

`Gemma3ForConditionalGeneration` (Gemma 3 4B and up) serves text only: its
`text_config` is the model, the language model's weights are taken under their
`Gemma3ForCausalLM` names, and the vision tower and projector are skipped (logged).

The one-call decode step (`ops.fused_decode`) is llama-shaped; these layers always
run the per-op path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, cast

import torch

import ops
from llmcore.errors import CorruptModelFileError, UnsupportedArchitectureError
from llmcore.model_api import ForwardBatch, KVCache
from llmcore.model_config import ModelConfig
from ops.fused_decode import DecoderStack
from ops.rotary import build_rope_cache, rope_inv_freq
from plugins.models.llama import LlamaForCausalLM, Weight, _Layer

log = logging.getLogger("llmcore.models")

SLIDING, FULL = "sliding_attention", "full_attention"
ACTIVATION = "gelu_pytorch_tanh"
# Rope types whose table is `build_rope_cache(rope_inv_freq(...))` alone (no cos/sin
# scaling) and that Gemma checkpoints use.
ROPE_TYPES = ("default", "linear")
# Set by `adapt_gguf_config` in `config.raw`: the norm weights hold `1 + w`.
NORMS_INCLUDE_ONE = "llmcore.norms_include_one"

_GGUF_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight$")
_GGUF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight$")
# Gemma3ForConditionalGeneration's language model under the names of the released
# files (which transformers 5.25's save_pretrained writes too) and of transformers'
# module layout; the rest of such a checkpoint is the vision side.
_MULTIMODAL_TEXT_PREFIXES = (
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.language_model.", "model."),
)
_VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)


@dataclass(frozen=True, slots=True)
class GemmaSettings:
    """What a Gemma config says beyond `ModelConfig`, read once from `config.raw`."""

    layer_types: tuple[str, ...]  # per layer: SLIDING or FULL
    sliding_window: int | None
    query_pre_attn_scalar: float
    attn_soft_cap: float | None
    final_soft_cap: float | None
    rope: dict[str, tuple[float, dict[str, Any] | None]]  # per layer kind: base, scaling
    norms_include_one: bool


@dataclass(slots=True, kw_only=True)
class _GemmaLayer(_Layer):
    pre_ff_norm: torch.Tensor
    post_ff_norm: torch.Tensor
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    rope: torch.Tensor  # the cos/sin table of this layer's kind


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _rope_entry(params: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(base, scaling or None) of one rope parameter dict (`rope_type` or `type`)."""
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"rope type {kind!r} is not supported for Gemma (supported: {', '.join(ROPE_TYPES)})"
        )
    return float(params["rope_theta"]), None if kind == "default" else dict(params)


class Gemma2ForCausalLM(LlamaForCausalLM):
    """Gemma 2: soft-capped attention and logits, every second layer global."""

    gguf_permutes_qk = False  # llama.cpp converts Gemma's q/k rows as they are
    default_pattern: ClassVar[int] = 2  # layer i slides unless (i + 1) % pattern == 0
    pattern_key: ClassVar[bool] = False  # whether the config may name the pattern
    qk_norm: ClassVar[bool] = False
    caps_attention: ClassVar[bool] = True
    gguf_27b_layers: ClassVar[int] = 46  # llama.cpp's test for the 27B's attention scale
    gguf_window: ClassVar[int | None] = 4096  # llama.cpp's window when the file names none

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        s = self.settings(config)
        global_base, global_scaling = s.rope[FULL]
        # Llama's table is the global layers' one: its config is this one with their rope.
        llama = replace(config, rope_theta=global_base, rope_scaling=global_scaling)
        super().__init__(llama, dtype, device)
        self.config = config
        self.gemma = s
        self.scale = s.query_pre_attn_scalar**-0.5
        tables = {FULL: self.cos_sin_cache}
        if s.rope[SLIDING] == s.rope[FULL]:
            tables[SLIDING] = self.cos_sin_cache
        else:
            base, scaling = s.rope[SLIDING]
            inv_freq = rope_inv_freq(self.head_dim, base, scaling)
            tables[SLIDING] = build_rope_cache(inv_freq, config.max_position_embeddings).to(device)
        self.rope_tables = tables
        self.layer_windows = [s.sliding_window if t == SLIDING else None for t in s.layer_types]
        # transformers: torch.tensor(sqrt(hidden)) (float32), then cast to the weights' dtype
        self.normalizer = torch.tensor(config.hidden_size**0.5).to(device=device, dtype=dtype)

    # ---- config -----------------------------------------------------------------------

    @classmethod
    def settings(cls, config: ModelConfig) -> GemmaSettings:
        raw = config.raw
        if raw.get("use_bidirectional_attention"):
            raise UnsupportedArchitectureError(
                "use_bidirectional_attention (an embedding model) is not supported"
            )
        activation = raw.get("hidden_activation") or ACTIVATION
        if activation != ACTIVATION:
            raise UnsupportedArchitectureError(
                f"hidden_activation {activation!r} is not supported for Gemma (only {ACTIVATION})"
            )
        window = raw.get("sliding_window")
        attn_cap = _optional_float(raw.get("attn_logit_softcapping"))
        if attn_cap is not None and not cls.caps_attention:
            log.warning(
                "%s: attn_logit_softcapping=%s is ignored, as transformers ignores it",
                cls.__name__,
                attn_cap,
            )
            attn_cap = None
        return GemmaSettings(
            layer_types=cls._layer_types(raw, config.num_hidden_layers),
            sliding_window=None if window is None else int(window),
            query_pre_attn_scalar=float(raw.get("query_pre_attn_scalar", 256)),
            attn_soft_cap=attn_cap,
            final_soft_cap=_optional_float(raw.get("final_logit_softcapping")),
            rope=cls._rope(config),
            norms_include_one=bool(raw.get(NORMS_INCLUDE_ONE, False)),
        )

    @classmethod
    def _layer_types(cls, raw: dict[str, Any], num_layers: int) -> tuple[str, ...]:
        types = raw.get("layer_types")
        if types is None:
            pattern = cls.default_pattern
            if cls.pattern_key:
                pattern = int(raw.get("sliding_window_pattern") or pattern)
            types = [SLIDING if (i + 1) % pattern else FULL for i in range(num_layers)]
        if len(types) != num_layers or not set(types) <= {SLIDING, FULL}:
            raise UnsupportedArchitectureError(
                f"layer_types must name {num_layers} layers, each {SLIDING!r} or {FULL!r}; "
                f"got {types!r}"
            )
        return tuple(types)

    @classmethod
    def _rope(cls, config: ModelConfig) -> dict[str, tuple[float, dict[str, Any] | None]]:
        """Per layer kind, the rope base and scaling. Gemma 2 has one rope for all
        (`ModelConfig`'s)."""
        params = {"rope_theta": config.rope_theta, **(config.rope_scaling or {})}
        entry = _rope_entry(params)
        return {SLIDING: entry, FULL: entry}

    @classmethod
    def adapt_gguf_config(cls, config: ModelConfig) -> ModelConfig:
        """llama.cpp's GGUF metadata of this family into `config.raw` under the
        config.json names (what llama.cpp reads, with its defaults)."""
        md, arch = config.raw, str(config.raw.get("general.architecture"))
        raw = dict(md)
        window = md.get(f"{arch}.attention.sliding_window", cls.gguf_window)
        if window is None:
            raise CorruptModelFileError(
                f"GGUF metadata lacks the key {arch + '.attention.sliding_window'!r}"
            )
        # llama.cpp fixes the pattern per architecture; a file may name it
        pattern = int(md.get(f"{arch}.attention.sliding_window_pattern", cls.default_pattern))
        layers = config.num_hidden_layers
        # llama.cpp: the 27B models scale queries by hidden / heads, the others by head_dim
        scalar = config.head_dim
        if layers == cls.gguf_27b_layers:
            scalar = config.hidden_size // config.num_attention_heads
        raw.update(
            {
                "hidden_activation": ACTIVATION,
                "sliding_window": int(window),
                "layer_types": [SLIDING if (i + 1) % pattern else FULL for i in range(layers)],
                "query_pre_attn_scalar": scalar,
                NORMS_INCLUDE_ONE: True,
            }
        )
        raw.update(cls._gguf_extra(config))
        return replace(config, raw=raw, sliding_window=int(window))

    @classmethod
    def _gguf_extra(cls, config: ModelConfig) -> dict[str, Any]:
        md, arch = config.raw, str(config.raw.get("general.architecture"))
        return {
            # llama.cpp's defaults when a file names none (also transformers')
            "attn_logit_softcapping": md.get(f"{arch}.attn_logit_softcapping", 50.0),
            "final_logit_softcapping": md.get(f"{arch}.final_logit_softcapping", 30.0),
        }

    # ---- weights ----------------------------------------------------------------------

    @classmethod
    def gguf_to_hf(cls, name: str, tensor: Weight, config: ModelConfig) -> tuple[str, Weight]:
        hf_name = _GGUF_GLOBAL_NAMES.get(name)
        if hf_name is None:
            match = _GGUF_LAYER.match(name)
            if match is None or match.group(2) not in _GGUF_LAYER_NAMES:
                raise CorruptModelFileError(f"unexpected tensor {name!r} for a Gemma GGUF")
            index, part = match.groups()
            hf_name = f"model.layers.{index}.{_GGUF_LAYER_NAMES[part]}.weight"
        _check_shape(hf_name, name, tensor, config)
        return hf_name, tensor

    def load_weights(self, weights: Iterable[tuple[str, Weight]]) -> None:
        super().load_weights(self._checked(weights))
        self.norm = self._norm_weight(self.norm)

    def _checked(self, weights: Iterable[tuple[str, Weight]]) -> Iterator[tuple[str, Weight]]:
        """The language model's weights under Gemma*ForCausalLM names, each of the
        shape the config implies; a multimodal checkpoint's vision side skipped."""
        skipped = 0
        for name, tensor in weights:
            if name.startswith(_VISION_PREFIXES):
                skipped += 1
                continue
            hf_name = name
            for prefix, to in _MULTIMODAL_TEXT_PREFIXES:
                if name.startswith(prefix):
                    hf_name = to + name[len(prefix) :]
                    break
            _check_shape(hf_name, name, tensor, self.config)
            yield hf_name, tensor
        if skipped:
            log.info("%s: text only; %d vision weights skipped", type(self).__name__, skipped)

    def _norm_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """A Gemma norm weight as the float32 factor `1 + w` the norms multiply by."""
        w = weight.float()
        return w if self.gemma.norms_include_one else w + 1.0

    def _take_layer(
        self,
        i: int,
        take: Callable[[str], Weight],
        dense: Callable[[str], torch.Tensor],
        pending: dict[str, Weight],
    ) -> _Layer:
        base = super()._take_layer(i, take, dense, pending)
        p = f"model.layers.{i}."
        parts = {f.name: getattr(base, f.name) for f in fields(base)}
        parts["input_norm"] = self._norm_weight(base.input_norm)
        parts["post_norm"] = self._norm_weight(base.post_norm)

        def norm(name: str) -> torch.Tensor:
            return self._norm_weight(dense(p + name + ".weight"))

        kind = self.gemma.layer_types[i]
        return _GemmaLayer(
            **parts,
            pre_ff_norm=norm("pre_feedforward_layernorm"),
            post_ff_norm=norm("post_feedforward_layernorm"),
            q_norm=norm("self_attn.q_norm") if self.qk_norm else None,
            k_norm=norm("self_attn.k_norm") if self.qk_norm else None,
            rope=self.rope_tables[kind],
        )

    def _decoder(self) -> DecoderStack | None:
        return None  # the one-call decode step is llama-shaped

    # ---- forward ----------------------------------------------------------------------

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Gemma's RMSNorm: float32 throughout, cast back to `x`'s dtype."""
        eps = self.config.rms_norm_eps
        if x.dtype == torch.float32:
            return ops.rms_norm(x, weight, eps)
        return ops.rms_norm(x.float(), weight, eps).to(x.dtype)

    def _add_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(norm(x + residual), x + residual)`, the sum in the activation dtype."""
        if x.dtype == torch.float32:
            return ops.fused_add_rms_norm(x, residual, weight, self.config.rms_norm_eps)
        summed = x + residual
        return self._norm(summed, weight), summed

    def forward(self, batch: ForwardBatch, kv_caches: list[KVCache]) -> torch.Tensor:
        hidden = self.embed(batch.input_ids) * self.normalizer
        residual: torch.Tensor | None = None
        layers = cast(list[_GemmaLayer], self.layers)
        for layer, kv_cache in zip(layers, kv_caches, strict=True):
            if residual is None:
                residual, x = hidden, self._norm(hidden, layer.input_norm)
            else:
                x, residual = self._add_norm(hidden, residual, layer.input_norm)
            hidden = self._norm(self._gemma_attention(layer, x, batch, kv_cache), layer.post_norm)
            x, residual = self._add_norm(hidden, residual, layer.pre_ff_norm)
            hidden = layer.down_mm(ops.gelu_tanh_and_mul(layer.gate_up_mm(x)))
            hidden = self._norm(hidden, layer.post_ff_norm)
        assert residual is not None
        hidden, _ = self._add_norm(hidden, residual, self.norm)
        return hidden

    def _gemma_attention(
        self, layer: _GemmaLayer, x: torch.Tensor, batch: ForwardBatch, kv_cache: KVCache
    ) -> torch.Tensor:
        num_tokens, d = x.shape[0], self.head_dim
        q_size, kv_size = self.num_heads * d, self.num_kv_heads * d
        q, k, v = layer.qkv_mm(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, d)
        k = k.view(num_tokens, self.num_kv_heads, d)
        v = v.view(num_tokens, self.num_kv_heads, d)
        if layer.q_norm is not None and layer.k_norm is not None:
            q, k = self._norm(q, layer.q_norm), self._norm(k, layer.k_norm)
        key_cache, value_cache = kv_cache
        tables, slots = batch.kv_tables(layer.group)
        ops.rotary_embedding_and_cache(
            batch.positions, q, k, v, layer.rope, key_cache, value_cache, slots, is_neox=True
        )
        window, cap = layer.window, self.gemma.attn_soft_cap
        if batch.is_decode:
            out = ops.paged_attention_decode(
                q, key_cache, value_cache, tables, batch.seq_lens, self.scale,
                sliding_window=window, soft_cap=cap,
            )  # fmt: skip
        else:
            out = ops.paged_attention_prefill(
                q, key_cache, value_cache, tables, batch.query_start_loc, batch.seq_lens,
                self.scale, sliding_window=window, soft_cap=cap,
            )  # fmt: skip
        return layer.o_mm(out.view(num_tokens, q_size))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().compute_logits(hidden)
        cap = self.gemma.final_soft_cap
        if cap is None:
            return logits
        return torch.tanh(logits / cap) * cap


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    """Gemma 3 (text): q/k norms, five sliding layers to a global one, a rope per kind."""

    default_pattern: ClassVar[int] = 6
    pattern_key: ClassVar[bool] = True
    qk_norm: ClassVar[bool] = True
    caps_attention: ClassVar[bool] = False  # transformers' Gemma 3 never caps attention
    gguf_27b_layers: ClassVar[int] = 62
    gguf_window: ClassVar[int | None] = None  # llama.cpp requires the key

    @classmethod
    def _rope(cls, config: ModelConfig) -> dict[str, tuple[float, dict[str, Any] | None]]:
        """transformers' Gemma 3 rope: `rope_parameters` per layer kind (as transformers
        5 saves it), else `rope_theta` with `rope_scaling` for global layers and
        `rope_local_base_freq` for sliding ones (as the released config.json files)."""
        raw = config.raw
        given = raw.get("rope_parameters")
        full: dict[str, Any] = {}
        sliding: dict[str, Any] = {}
        if isinstance(given, dict) and (FULL in given or SLIDING in given):
            full, sliding = dict(given.get(FULL) or {}), dict(given.get(SLIDING) or {})
        else:
            full = dict(raw.get("rope_scaling") or {})
        full.setdefault("rope_theta", raw.get("rope_theta", 1_000_000.0))
        sliding.setdefault("rope_theta", raw.get("rope_local_base_freq", 10_000.0))
        return {FULL: _rope_entry(full), SLIDING: _rope_entry(sliding)}

    @classmethod
    def _gguf_extra(cls, config: ModelConfig) -> dict[str, Any]:
        md, arch = config.raw, str(config.raw.get("general.architecture"))
        return {
            "final_logit_softcapping": md.get(f"{arch}.final_logit_softcapping"),
            "rope_theta": config.rope_theta,
            "rope_scaling": config.rope_scaling,
            # llama.cpp rotates sliding layers at base 10000, unscaled
            "rope_local_base_freq": md.get(f"{arch}.rope.freq_base_swa", 10_000.0),
        }


def _expected_shape(name: str, config: ModelConfig) -> tuple[int, ...] | None:
    """The shape `config` implies for the weight `name` (HF names), None if unknown."""
    c = config
    hidden, inter, d = c.hidden_size, c.intermediate_size, c.head_dim
    q, kv = c.num_attention_heads * d, c.num_key_value_heads * d
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return (c.vocab_size, hidden)
    if name == "model.norm.weight":
        return (hidden,)
    match = _HF_LAYER.match(name)
    if match is None or int(match.group(1)) >= c.num_hidden_layers:
        return None
    return {
        "self_attn.q_proj": (q, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, q),
        "self_attn.q_norm": (d,),
        "self_attn.k_norm": (d,),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
        "input_layernorm": (hidden,),
        "post_attention_layernorm": (hidden,),
        "pre_feedforward_layernorm": (hidden,),
        "post_feedforward_layernorm": (hidden,),
    }.get(match.group(2))


def _check_shape(hf_name: str, shown: str, tensor: Weight, config: ModelConfig) -> None:
    """Raise naming the tensor `shown` if its shape is not what the config implies."""
    want = _expected_shape(hf_name, config)
    got = tuple(int(n) for n in tensor.shape)
    if want is not None and got != want:
        raise CorruptModelFileError(
            f"tensor {shown!r} has shape {list(got)}, but the model's config implies {list(want)}"
        )


# transformers' Gemma3TextConfig defaults: a Gemma3ForConditionalGeneration config.json
# names in `text_config` only what differs from them (the 4B names six keys).
GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": ACTIVATION,
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "sliding_window_pattern": 6,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
}


class Gemma3ForConditionalGeneration(Gemma3ForCausalLM):
    """Gemma 3 4B and up (text and images), served as text: the language model of
    `text_config`; the vision tower and projector are skipped at load."""

    @classmethod
    def adapt_hf_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The config.json as a Gemma3ForCausalLM's: `text_config` over transformers'
        defaults, with the outer file's architecture and token ids where it names none."""
        text = config.get("text_config")
        if not isinstance(text, dict):
            raise CorruptModelFileError(
                "a Gemma3ForConditionalGeneration config has no text_config"
            )
        flat = {**GEMMA3_TEXT_DEFAULTS, **text}
        for key in ("eos_token_id", "bos_token_id", "pad_token_id", "torch_dtype", "dtype"):
            if key in config and key not in text:
                flat[key] = config[key]
        flat["architectures"] = config.get("architectures") or [cls.__name__]
        return flat
