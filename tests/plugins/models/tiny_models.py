"""Tiny llama-family models built with transformers (random weights, saved as
safetensors) for tests that need a Hugging Face folder and a reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

VOCAB = 320


def _common() -> dict[str, Any]:
    return {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.15,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }


KINDS: dict[str, dict[str, Any]] = {
    # GQA 4:2, separate lm_head, sharded safetensors
    "llama": {"cls": "Llama", "config": {"rope_theta": 10000.0}, "shard": "60KB"},
    # tied embeddings, llama3 rope scaling, head_dim 32 with 2 heads (MHA)
    "llama3-tied": {
        "cls": "Llama",
        "config": {
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
            "rope_scaling": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
    },
    # q/k/v biases, GQA 4:1
    "qwen2": {
        "cls": "Qwen2",
        "config": {"num_key_value_heads": 1, "rope_theta": 1000000.0, "use_sliding_window": False},
    },
    "mistral": {"cls": "Mistral", "config": {"sliding_window": None}},
    # every layer a sliding window of 24 tokens (prompts of 90-150 go well past it)
    "mistral-window": {"cls": "Mistral", "config": {"sliding_window": 24}},
}


def build(kind: str, folder: Path) -> Any:
    """Build, seed and save the tiny model `kind` into `folder`; return the HF model."""
    return build_spec(kind, KINDS[kind], folder)


def build_spec(kind: str, spec: dict[str, Any], folder: Path) -> Any:
    """Build, seed and save a tiny model into `folder`; return the HF model. `spec`:
    "cls" (the transformers prefix: `{cls}Config`, `{cls}ForCausalLM`), or
    "config_cls" and "model_cls" by name; "config" (overrides of the common small
    shape); "shard" (a safetensors shard size)."""
    import transformers

    config_cls = getattr(transformers, spec.get("config_cls") or f"{spec['cls']}Config")
    model_cls = getattr(transformers, spec.get("model_cls") or f"{spec['cls']}ForCausalLM")
    config = config_cls(**{**_common(), **spec["config"]})
    torch.manual_seed(1234)
    model = model_cls(config).eval()
    if kind == "qwen2":  # make the (zero-initialised) biases matter
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    proj.bias.normal_(0, 0.3)
    model.generation_config.temperature = 0.7
    model.generation_config.top_p = 0.9
    model.generation_config.do_sample = True
    kwargs = {"max_shard_size": spec["shard"]} if "shard" in spec else {}
    model.save_pretrained(folder, **kwargs)
    return model
