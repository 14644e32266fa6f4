"""POST /v1/embeddings (OpenAI's shape) and POST /pooling (vLLM's): inputs tokenized,
truncated when asked, pooled by the engine (all inputs of a request at once, so the
scheduler batches them, at the request's `priority`), and encoded as float lists or
base64 (`llmcore.openai.vectors`: float32 by default, as OpenAI sends it, or any of
vLLM's `embed_dtype`s and byte orders).

Invariant: every input either fits the model's input length, is truncated to
`truncate_prompt_tokens` (text: the end is cut, the special tokens kept; token ids:
the last n kept, as vLLM does), or the request is a 400 before anything runs; the
data come back in input order with their index.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from llmcore.errors import InvalidRequestError
from llmcore.openai.context import ServiceContext
from llmcore.openai.interface import ServedModel
from llmcore.openai.prompts import (
    check_prompt_length,
    check_token_ids,
    encode_text,
    fitting_text,
    prompt_items,
    tokenizing,
)
from llmcore.openai.protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    PoolingData,
    PoolingRequest,
    PoolingResponse,
    PromptInput,
)
from llmcore.openai.request_ids import resolve_request_id
from llmcore.openai.unsupported import check_embedding, check_pooling_request
from llmcore.openai.vectors import decode_base64, encode_vector, vector_encoding
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.tokenization.tokenizer import Tokenizer

__all__ = ["create_embedding", "create_pooling", "decode_base64", "encode_all", "tokenize_inputs"]


def truncated(tokenizer: Tokenizer, text: str, limit: int, add_special_tokens: bool) -> list[int]:
    """`text`'s ids cut to `limit` tokens at the end, keeping the special tokens the
    tokenizer adds around it (what transformers' `truncation=True` does). Tokenizes
    through `encode_batch`, which releases the GIL on a worker thread."""
    ids = tokenizer.encode_batch([text], add_special_tokens)[0]
    if len(ids) <= limit:
        return ids
    plain = tokenizer.encode_batch([text], False)[0]
    extra = len(ids) - len(plain)
    head = next((i for i in range(extra + 1) if ids[i : i + len(plain)] == plain), 0)
    keep = max(limit - extra, 0)
    return ids[:head] + plain[:keep] + ids[head + len(plain) :]


async def tokenize_inputs(
    model: ServedModel,
    items: Sequence[str | list[int]],
    truncate: int | None,
    add_special_tokens: bool,
    param: str,
) -> list[list[int]]:
    """Token ids of each input, truncated as asked and checked against the vocabulary."""
    limit = _truncation_limit(model, truncate)
    out = []
    for item in items:
        if isinstance(item, str):
            if limit is None:
                ids = await encode_text(
                    model, item, add_special_tokens=add_special_tokens, param=param
                )
            else:
                text = fitting_text(model, item, param, cut=True)
                ids = await tokenizing(
                    len(text), truncated, model.tokenizer, text, limit, add_special_tokens
                )
        elif limit is None:
            check_prompt_length(model, len(item), param)
            ids = list(item)
        else:
            ids = list(item)[-limit:]
        check_token_ids(ids, model.tokenizer.vocab_size, param)
        out.append(ids)
    return out


def _truncation_limit(model: ServedModel, truncate: int | None) -> int | None:
    if truncate is None:
        return None
    if truncate == -1:
        return model.max_model_len
    if not 1 <= truncate <= model.max_model_len:
        raise InvalidRequestError(
            f"truncate_prompt_tokens: {truncate} must be -1 or in [1, {model.max_model_len}] "
            "(the model's maximum input length)",
            param="truncate_prompt_tokens",
        )
    return truncate


async def encode_all(
    model: ServedModel,
    prompts: Sequence[list[int]],
    params: PoolingParams,
    request_id: str,
    priority: int = 0,
) -> list[PoolingOutput]:
    """Pool every prompt concurrently (one engine request each); all or nothing."""
    engine = model.engine
    if len(prompts) == 1:
        return [await engine.encode(prompts[0], params, request_id, priority=priority)]
    tasks = [
        asyncio.ensure_future(engine.encode(p, params, f"{request_id}-{i}", priority=priority))
        for i, p in enumerate(prompts)
    ]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def _items(input_: PromptInput) -> list[str | list[int]]:
    items = prompt_items(input_, "input")
    if any(isinstance(i, str) and not i for i in items):
        raise InvalidRequestError("input: an input string is empty", param="input")
    return items


async def _pool(
    ctx: ServiceContext, req: EmbeddingRequest, request_id: str, what: str
) -> tuple[ServedModel, list[list[float] | str], int]:
    """The request's vectors, encoded as asked, and its prompt tokens."""
    model = ctx.model_for(req.model, "embed", what)
    encoding = vector_encoding(req.encoding_format, req.embed_dtype, req.endianness)
    assert req.input is not None  # check_embedding refused its absence
    prompts = await tokenize_inputs(
        model,
        _items(req.input),
        req.truncate_prompt_tokens,
        req.add_special_tokens is not False,
        "input",
    )
    params = PoolingParams(dimensions=req.dimensions, normalize=req.normalize)
    outputs = await encode_all(model, prompts, params, request_id, req.priority or 0)
    vectors = [encode_vector(o.data, encoding) for o in outputs]
    return model, vectors, sum(len(p) for p in prompts)


async def create_embedding(
    ctx: ServiceContext, req: EmbeddingRequest, request_id: str
) -> EmbeddingResponse:
    check_embedding(req)
    request_id = resolve_request_id(request_id, req.request_id)
    model, vectors, tokens = await _pool(ctx, req, request_id, "embeddings")
    data = [EmbeddingData(i, "embedding", v) for i, v in enumerate(vectors)]
    return EmbeddingResponse(
        f"embd-{request_id}", "list", int(time.time()), model.name, data, _usage(tokens)
    )


async def create_pooling(
    ctx: ServiceContext, req: PoolingRequest, request_id: str
) -> PoolingResponse:
    check_pooling_request(req)
    request_id = resolve_request_id(request_id, req.request_id)
    model, vectors, tokens = await _pool(ctx, req, request_id, "pooling")
    data = [PoolingData(i, "pooling", v) for i, v in enumerate(vectors)]
    return PoolingResponse(
        f"pool-{request_id}", "list", int(time.time()), model.name, data, _usage(tokens)
    )


def _usage(tokens: int) -> EmbeddingUsage:
    return EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
