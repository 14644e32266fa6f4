"""Wire types of the pooling endpoints: /v1/embeddings (OpenAI's shape), /pooling,
/score and /rerank (vLLM's shapes; rerank answers Jina and Cohere clients alike).

Invariant: data shapes only; one decoder per request type, built once.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llmcore.openai.protocol.decoding import RequestDecoder
from llmcore.openai.protocol.requests import PromptInput


class _PoolingRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    model: str | None = None
    truncate_prompt_tokens: int | None = None  # keep this many tokens; -1: the model's limit
    add_special_tokens: bool | None = None  # None: True
    user: str | None = None  # accepted, no effect (as in vLLM)
    request_id: str | None = None  # the X-Request-Id header wins, as in vLLM
    priority: int | None = None  # the engine's encode queue: lower runs first
    cache_salt: str | None = None  # accepted, no effect: pooling keeps no KV cache
    # vLLM's, refused unless null (see llmcore.openai.unsupported).
    mm_processor_kwargs: dict[str, Any] | None = None  # only {} (text-only models)
    softmax: bool | None = None  # the activation of classification outputs...
    activation: bool | None = None  # ...under its older names...
    use_activation: bool | None = None  # ...and its current one
    truncation_side: str | None = None
    padding: str | None = None


class EmbeddingRequest(_PoolingRequest, kw_only=True):
    input: PromptInput | None = None  # required unless `messages` (refused)
    encoding_format: str | None = None  # "float" (default) or "base64"
    embed_dtype: str | None = None  # base64's dtype: float32 (default), float16, ...
    endianness: str | None = None  # base64's byte order: native (default), little, big
    dimensions: int | None = None
    normalize: bool | None = None  # None: as the model is configured
    # vLLM's chat variant, refused (the embedding models served have no chat template).
    messages: Any = None
    add_generation_prompt: Any = None
    continue_final_message: Any = None
    chat_template: Any = None
    chat_template_kwargs: Any = None


class PoolingRequest(EmbeddingRequest, kw_only=True):
    """/pooling: the pooled vector as the model's pooling configures it."""

    task: str | None = None  # None or "embed" (what /pooling computes here)
    data: Any = None  # vLLM's IO-processor plugins: refused


class ScoreRequest(_PoolingRequest, kw_only=True):
    text_1: str | list[str]
    text_2: str | list[str]
    encoding_format: str | None = None  # not vLLM's: scores are numbers ("float" only)


class RerankDocumentIn(msgspec.Struct, forbid_unknown_fields=False):
    text: str


class RerankRequest(_PoolingRequest, kw_only=True):
    query: str
    documents: list[str | RerankDocumentIn]
    top_n: int | None = None  # None or 0: all
    return_documents: bool | None = None  # None: True
    encoding_format: str | None = None  # not vLLM's: scores are numbers ("float" only)


class _Response(msgspec.Struct, omit_defaults=True):
    pass


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingData(_Response):
    index: int
    object: str  # "embedding"
    embedding: list[float] | str  # a string: base64 of the values in `embed_dtype`


class EmbeddingResponse(_Response):
    id: str
    object: str  # "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: EmbeddingUsage


class PoolingData(_Response):
    index: int
    object: str  # "pooling"
    data: list[float] | str


class PoolingResponse(_Response):
    id: str
    object: str  # "list"
    created: int
    model: str
    data: list[PoolingData]
    usage: EmbeddingUsage


class ScoreData(_Response):
    index: int
    object: str  # "score"
    score: float


class ScoreResponse(_Response):
    id: str
    object: str  # "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: EmbeddingUsage


class RerankDocument(_Response):
    text: str


class RerankResult(_Response):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(_Response):
    total_tokens: int


class RerankResponse(_Response):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


EMBEDDING_DECODER = RequestDecoder(EmbeddingRequest)
POOLING_DECODER = RequestDecoder(PoolingRequest)
SCORE_DECODER = RequestDecoder(ScoreRequest)
RERANK_DECODER = RequestDecoder(RerankRequest)
