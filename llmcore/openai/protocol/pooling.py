"""Wire types of the pooling endpoints: /v1/embeddings (OpenAI's shape), /pooling,
/score and /rerank (vLLM's shapes; rerank answers Jina and Cohere clients alike).

Invariant: data shapes only; one decoder per request type, built once.
"""

from __future__ import annotations

import msgspec

from llmcore.openai.protocol.decoding import RequestDecoder
from llmcore.openai.protocol.requests import PromptInput


class _PoolingRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    model: str | None = None
    truncate_prompt_tokens: int | None = None  # keep this many tokens; -1: the model's limit
    add_special_tokens: bool | None = None  # None: True
    user: str | None = None


class EmbeddingRequest(_PoolingRequest, kw_only=True):
    input: PromptInput
    encoding_format: str | None = None  # "float" (default) or "base64"
    dimensions: int | None = None
    normalize: bool | None = None  # None: as the model is configured


class PoolingRequest(EmbeddingRequest, kw_only=True):
    """/pooling: the pooled vector as the model's pooling configures it."""


class ScoreRequest(_PoolingRequest, kw_only=True):
    text_1: str | list[str]
    text_2: str | list[str]


class RerankDocumentIn(msgspec.Struct, forbid_unknown_fields=False):
    text: str


class RerankRequest(_PoolingRequest, kw_only=True):
    query: str
    documents: list[str | RerankDocumentIn]
    top_n: int | None = None  # None or 0: all
    return_documents: bool | None = None  # None: True


class _Response(msgspec.Struct, omit_defaults=True):
    pass


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingData(_Response):
    index: int
    object: str  # "embedding"
    embedding: list[float] | str  # a string: base64 of little-endian float32


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
