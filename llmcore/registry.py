"""Finds model architecture plugins by name.

Built-ins are an explicit table of `architecture -> "module:attr"`, imported only
when asked for; third parties add more through the `llmcore.models` entry-point
group (name = the Hugging Face architecture, e.g. `MyModelForCausalLM`). GGUF files
name their architecture differently (`general.architecture`), hence a second table.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from llmcore.errors import UnsupportedArchitectureError

_BUILTIN_MODELS: dict[str, str] = {
    "BertModel": "plugins.models.bert:BertModel",
    "Gemma2ForCausalLM": "plugins.models.gemma:Gemma2ForCausalLM",
    "Gemma3ForCausalLM": "plugins.models.gemma:Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration": "plugins.models.gemma:Gemma3ForConditionalGeneration",
    "LlamaForCausalLM": "plugins.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "plugins.models.llama:MistralForCausalLM",
    "Olmo2ForCausalLM": "plugins.models.olmo2:Olmo2ForCausalLM",
    "Phi3ForCausalLM": "plugins.models.phi3:Phi3ForCausalLM",
    "Qwen2ForCausalLM": "plugins.models.llama:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "plugins.models.qwen3:Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM": "plugins.models.qwen3:Qwen3MoeForCausalLM",
}

_GGUF_ARCHITECTURES: dict[str, str] = {
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3moe": "Qwen3MoeForCausalLM",
}

ENTRY_POINT_GROUP = "llmcore.models"


def _third_party() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def supported_architectures() -> list[str]:
    """Every architecture name a model can declare, built-in and installed."""
    return sorted({*_BUILTIN_MODELS, *_third_party()})


def architecture_from_gguf(gguf_arch: str) -> str:
    """The Hugging Face architecture for a GGUF `general.architecture` value."""
    if gguf_arch in _GGUF_ARCHITECTURES:
        return _GGUF_ARCHITECTURES[gguf_arch]
    raise UnsupportedArchitectureError(
        f"GGUF architecture {gguf_arch!r} is not supported; supported GGUF architectures: "
        f"{', '.join(sorted(_GGUF_ARCHITECTURES))}"
    )


def resolve_model_class(architecture: str) -> Any:
    """The plugin class for `architecture`; a clear error lists the supported ones."""
    third_party = _third_party()
    if architecture in third_party:
        return third_party[architecture].load()
    target = _BUILTIN_MODELS.get(architecture)
    if target is None:
        raise UnsupportedArchitectureError(
            f"model architecture {architecture!r} is not supported; supported: "
            f"{', '.join(supported_architectures())}"
        )
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)
