"""`Task`: what an engine serves (generation or embeddings), resolved once from the
model and `EngineConfig.task`.

Invariant: an encoder is never resolved to `Task.GENERATE` (it has no LM head and
no causal attention); "auto" picks embed for encoders and generate for decoders.
"""

from __future__ import annotations

import enum

from llmcore.model_loader import LoadedModel


class Task(enum.Enum):
    GENERATE = "generate"
    EMBED = "embed"


def is_encoder(loaded: LoadedModel) -> bool:
    """Whether the model is a bidirectional encoder (BERT): it only pools."""
    return bool(getattr(loaded.model, "is_encoder", False))


def resolve_task(loaded: LoadedModel, requested: str) -> Task:
    """`auto`: embed for encoders, generate for decoders. Encoders cannot generate."""
    if requested == "auto":
        return Task.EMBED if is_encoder(loaded) else Task.GENERATE
    try:
        task = Task(requested)
    except ValueError:
        raise ValueError(f"unknown task {requested!r}; choose auto, generate or embed") from None
    if task is Task.GENERATE and is_encoder(loaded):
        raise ValueError(f"{loaded.config.architecture} is an encoder: it can only embed")
    return task
