"""POST /v1/embeddings (OpenAI's shape) and POST /pooling (vLLM's): inputs tokenized,
truncated when asked, pooled by the engine (all inputs of a request at once, so the
scheduler batches them), and encoded as float lists or base64 (little-endian
float32, as OpenAI sends it).

Invariant: every input either fits the model's input length, is truncated to
`truncate_prompt_tokens` (text: the end is cut, the special tokens kept; token ids:
the last n kept, as vLLM does), or the request is a 400 before anything runs; the
data come back in input order with their index.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence

import numpy as np

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
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.tokenization.tokenizer import Tokenizer

ENCODING_FORMATS = ("float", "base64")


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
    model: ServedModel, prompts: Sequence[list[int]], params: PoolingParams, request_id: str
) -> list[PoolingOutput]:
    """Pool every prompt concurrently (one engine request each); all or nothing."""
    if len(prompts) == 1:
        return [await model.engine.encode(prompts[0], params, request_id)]
    tasks = [
        asyncio.ensure_future(model.engine.encode(p, params, f"{request_id}-{i}"))
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
) -> tuple[ServedModel, list[PoolingOutput], int]:
    model = ctx.model_for(req.model, "embed", what)
    fmt = req.encoding_format or "float"
    if fmt not in ENCODING_FORMATS:
        raise InvalidRequestError(
            f"encoding_format: {fmt!r} is not supported; choose float or base64",
            param="encoding_format",
        )
    prompts = await tokenize_inputs(
        model,
        _items(req.input),
        req.truncate_prompt_tokens,
        req.add_special_tokens is not False,
        "input",
    )
    params = PoolingParams(dimensions=req.dimensions, normalize=req.normalize)
    outputs = await encode_all(model, prompts, params, request_id)
    return model, outputs, sum(len(p) for p in prompts)


def encode_vector(output: PoolingOutput, fmt: str | None) -> list[float] | str:
    if fmt == "base64":
        raw = output.data.numpy().astype("<f4", copy=False).tobytes()
        return base64.b64encode(raw).decode("ascii")
    return output.data.tolist()  # type: ignore[no-any-return]


async def create_embedding(
    ctx: ServiceContext, req: EmbeddingRequest, request_id: str
) -> EmbeddingResponse:
    model, outputs, tokens = await _pool(ctx, req, request_id, "embeddings")
    vectors = [encode_vector(o, req.encoding_format) for o in outputs]
    data = [EmbeddingData(i, "embedding", v) for i, v in enumerate(vectors)]
    return EmbeddingResponse(
        f"embd-{request_id}", "list", int(time.time()), model.name, data, _usage(tokens)
    )


async def create_pooling(
    ctx: ServiceContext, req: PoolingRequest, request_id: str
) -> PoolingResponse:
    model, outputs, tokens = await _pool(ctx, req, request_id, "pooling")
    vectors = [encode_vector(o, req.encoding_format) for o in outputs]
    data = [PoolingData(i, "pooling", v) for i, v in enumerate(vectors)]
    return PoolingResponse(
        f"pool-{request_id}", "list", int(time.time()), model.name, data, _usage(tokens)
    )


def _usage(tokens: int) -> EmbeddingUsage:
    return EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)


def decode_base64(text: str) -> np.ndarray:
    """The inverse of the base64 encoding (for clients and tests)."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4")
