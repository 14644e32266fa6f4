"""GET /v1/models and /v1/models/{model}: the served models, in OpenAI's shape
(with vLLM's `root` and `max_model_len`).

Invariant: the list is in serving order (the first is the default model) and a card
never differs from what `/v1/models/{model}` returns for the same model.
"""

from __future__ import annotations

from llmcore.openai.context import ServiceContext
from llmcore.openai.interface import ServedModel
from llmcore.openai.protocol import ModelCard, ModelList


def model_card(model: ServedModel) -> ModelCard:
    return ModelCard(
        id=model.name,
        object="model",
        created=model.created,
        owned_by="llmcore",
        root=model.name,
        max_model_len=model.max_model_len,
    )


def list_models(ctx: ServiceContext) -> ModelList:
    return ModelList(object="list", data=[model_card(m) for m in ctx.models])


def retrieve_model(ctx: ServiceContext, name: str) -> ModelCard:
    return model_card(ctx.model(name))
