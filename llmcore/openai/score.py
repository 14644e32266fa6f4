"""POST /score (/v1/score) and /rerank (/v1/rerank, /v2/rerank), vLLM's shapes, for
embedding models: the score of two texts is the cosine similarity of their
embeddings (a bi-encoder; cross-encoder models are not served yet).

Invariants: score pairs are one-to-one, one-to-many (a single `text_1`) or zipped
many-to-many (equal lengths), else a 400; rerank results are sorted by relevance,
highest first, each with its document's original `index`, cut to `top_n`.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from llmcore.errors import InvalidRequestError
from llmcore.openai.context import ServiceContext
from llmcore.openai.embeddings import encode_all, tokenize_inputs
from llmcore.openai.interface import ServedModel
from llmcore.openai.protocol import (
    EmbeddingUsage,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
)
from llmcore.openai.request_ids import resolve_request_id
from llmcore.openai.unsupported import check_pooling, check_score_format
from llmcore.pooling import PoolingParams


async def _embed(
    model: ServedModel,
    texts: list[str],
    req: ScoreRequest | RerankRequest,
    request_id: str,
    param: str,
) -> tuple[torch.Tensor, int]:
    """Embeddings `[len(texts), D]` of `texts` (each distinct text once) and their tokens."""
    unique = list(dict.fromkeys(texts))
    if any(not t for t in unique):
        raise InvalidRequestError(f"{param}: a text is empty", param=param)
    add_special_tokens = req.add_special_tokens is not False
    prompts = await tokenize_inputs(
        model, unique, req.truncate_prompt_tokens, add_special_tokens, param
    )
    outputs = await encode_all(model, prompts, PoolingParams(), request_id, req.priority or 0)
    by_text = dict(zip(unique, (o.data for o in outputs), strict=True))
    tokens = dict(zip(unique, (len(p) for p in prompts), strict=True))
    return torch.stack([by_text[t] for t in texts]), sum(tokens[t] for t in texts)


def cosine(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return F.cosine_similarity(a.double(), b.double(), dim=-1).tolist()  # type: ignore[no-any-return]


def _pairs(text_1: str | list[str], text_2: str | list[str]) -> tuple[list[str], list[str]]:
    left = [text_1] if isinstance(text_1, str) else list(text_1)
    right = [text_2] if isinstance(text_2, str) else list(text_2)
    if not left or not right:
        raise InvalidRequestError("text_1 and text_2 must not be empty", param="text_1")
    if len(left) == 1:
        left = left * len(right)
    if len(left) != len(right):
        raise InvalidRequestError(
            f"text_1 has {len(left)} texts and text_2 {len(right)}: give one text_1, or as "
            "many as text_2",
            param="text_2",
        )
    return left, right


def _checked(req: ScoreRequest | RerankRequest, request_id: str) -> str:
    """The checks shared by /score and /rerank; the id the request runs under."""
    check_pooling(req)
    check_score_format(req.encoding_format)
    return resolve_request_id(request_id, req.request_id)


async def score(ctx: ServiceContext, req: ScoreRequest, request_id: str) -> ScoreResponse:
    model = ctx.model_for(req.model, "embed", "score")
    request_id = _checked(req, request_id)
    left, right = _pairs(req.text_1, req.text_2)
    both, tokens = await _embed(model, left + right, req, request_id, "text_1")
    scores = cosine(both[: len(left)], both[len(left) :])
    data = [ScoreData(i, "score", s) for i, s in enumerate(scores)]
    usage = EmbeddingUsage(tokens, tokens)
    return ScoreResponse(f"score-{request_id}", "list", int(time.time()), model.name, data, usage)


async def rerank(ctx: ServiceContext, req: RerankRequest, request_id: str) -> RerankResponse:
    model = ctx.model_for(req.model, "embed", "rerank")
    request_id = _checked(req, request_id)
    if not req.documents:
        raise InvalidRequestError("documents: give at least one document", param="documents")
    if req.top_n is not None and req.top_n < 0:
        raise InvalidRequestError("top_n: must be 0 (all) or more", param="top_n")
    docs = [d if isinstance(d, str) else d.text for d in req.documents]
    both, tokens = await _embed(model, [req.query, *docs], req, request_id, "documents")
    scores = cosine(both[:1], both[1:])
    order = sorted(range(len(docs)), key=lambda i: -scores[i])
    if req.top_n:
        order = order[: req.top_n]
    keep = req.return_documents is not False
    results = [RerankResult(i, scores[i], RerankDocument(docs[i]) if keep else None) for i in order]
    return RerankResponse(f"rerank-{request_id}", model.name, RerankUsage(tokens), results)
