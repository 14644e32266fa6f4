"""GET /v1/models and /v1/models/{model}: the served models, in OpenAI's shape
(with vLLM's `root` and `max_model_len`, and llmcore's `task` and `capabilities`:
the endpoints each model answers).

Invariant: the list is in serving order (the first is the default model) and a card
never differs from what `/v1/models/{model}` returns for the same model.
"""

from __future__ import annotations

from llmcore.openai.context import ServiceContext
from llmcore.openai.interface import ServedModel
from llmcore.openai.protocol import ModelCard, ModelList


def capabilities(model: ServedModel) -> list[str]:
    if model.task == "embed":
        return ["embeddings", "pooling", "score", "rerank", "tokenize"]
    return ["completions", *(["chat", "messages"] if model.chat_template else []), "tokenize"]


def model_card(model: ServedModel) -> ModelCard:
    return ModelCard(
        id=model.name,
        object="model",
        created=model.created,
        owned_by="llmcore",
        root=model.name,
        max_model_len=model.max_model_len,
        task=model.task,
        capabilities=capabilities(model),
    )


def list_models(ctx: ServiceContext) -> ModelList:
    return ModelList(object="list", data=[model_card(m) for m in ctx.models])


def retrieve_model(ctx: ServiceContext, name: str) -> ModelCard:
    return model_card(ctx.model(name))
