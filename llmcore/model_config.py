"""`ModelConfig`: what llmcore needs to know about a model, whatever file it came from.

Built from a Hugging Face `config.json` (+ `generation_config.json`) or from GGUF
metadata; the field names follow Hugging Face's. `raw` keeps the source mapping for
architecture plugins that need more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(slots=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    torch_dtype: str | None = None
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_hf(
        cls, config: dict[str, Any], generation_config: dict[str, Any] | None = None
    ) -> ModelConfig:
        """From the dicts of `config.json` and `generation_config.json`."""
        architectures = config.get("architectures") or [config.get("model_type", "?")]
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        rope = config.get("rope_parameters") or {}
        scaling = config.get("rope_scaling") or (rope if rope.get("rope_type") else None)
        if scaling and (scaling.get("rope_type") or scaling.get("type")) == "default":
            scaling = None
        original = config.get("original_max_position_embeddings")
        if scaling and original:  # transformers prefers the top-level value (Phi-3)
            scaling = {**scaling, "original_max_position_embeddings": int(original)}
        gen = dict(generation_config or {})
        eos = gen.get("eos_token_id", config.get("eos_token_id"))
        return cls(
            architecture=str(architectures[0]),
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rope_scaling=scaling,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            sliding_window=_sliding_window(config),
            bos_token_id=gen.get("bos_token_id", config.get("bos_token_id")),
            eos_token_ids=_int_list(eos),
            torch_dtype=config.get("torch_dtype") or config.get("dtype"),
            generation_defaults=gen,
            raw=config,
        )


def _sliding_window(config: dict[str, Any]) -> int | None:
    if config.get("use_sliding_window") is False:
        return None
    window = config.get("sliding_window")
    return int(window) if window else None


def _int_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(requested: str, device: torch.device, config_dtype: str | None) -> torch.dtype:
    """`--dtype`: "auto" is float32 on the CPU, and on an accelerator the model's own
    16-bit dtype (bfloat16 when the model names none or names float32)."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"unknown dtype {requested!r}; choose auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    if device.type == "cpu":
        return torch.float32
    if config_dtype in ("float16", "bfloat16"):
        return DTYPES[config_dtype]
    return torch.bfloat16
