"""`OpenAIService`: the transport-agnostic OpenAI server. `handle(ServiceRequest)`
routes a request and answers it; `create_chat_completion` / `create_completion`
are the typed entry points for in-process callers.

Invariants: `handle` never raises (cancellation aside): every error becomes an
error response in its route's API's shape (OpenAI's; Anthropic's on /v1/messages)
with its status (400 bad input, 404 unknown route or
model, 405 wrong method, 413/415 bad body, 503 dead engine or full queue, 500 with
a generic message for the unexpected, which is logged); every answered request is
counted in the metrics by route and status; after a request whose body was large
(`RELEASE_MEMORY_AFTER_BYTES`), the heap's free pages go back to the system.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from llmcore import anthropic
from llmcore.cpu_malloc import release_free_memory
from llmcore.errors import (
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from llmcore.openai import chat, completions, embeddings, models, score, tokens
from llmcore.openai.context import ServiceContext
from llmcore.openai.errors import error_body, error_headers
from llmcore.openai.generation import MeteredAdmission
from llmcore.openai.interface import ServedModel, ServiceRequest, ServiceResponse, ServiceStream
from llmcore.openai.metrics import LoadTracker, ServiceMetrics
from llmcore.openai.openapi import openapi_document
from llmcore.openai.options import ServiceOptions
from llmcore.openai.params import Limits
from llmcore.openai.protocol import (
    CHAT_DECODER,
    COMPLETION_DECODER,
    DETOKENIZE_DECODER,
    EMBEDDING_DECODER,
    POOLING_DECODER,
    RERANK_DECODER,
    SCORE_DECODER,
    TOKENIZE_DECODER,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    LoadResponse,
    VersionResponse,
)
from llmcore.openai.request_log import RequestLogger
from llmcore.openai.responses import (
    RESPONSES_DECODER,
    Response,
    ResponsesAPI,
    ResponsesRequest,
    ResponseStore,
    ResponseStreamEvent,
    response_sse,
)
from llmcore.openai.routes import (
    MODEL_PREFIX,
    RouteSpec,
    normalize,
    response_id_of,
    route_path,
    routes_by_path,
)
from llmcore.openai.streaming import ClosingStream, sse_stream
from llmcore.openai.vllm_metrics import VLLMMetrics

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("llmcore.http")
Answer = ServiceResponse | ServiceStream
Handler = Callable[[ServiceRequest, str], Awaitable[Answer]]
_ENCODER = msgspec.json.Encoder()
_TEXT = "text/plain; charset=utf-8"
# Decoding and tokenizing a body this large leaves tens of megabytes free in the
# heap, which the tuned malloc (llmcore.cpu_malloc) would otherwise keep.
RELEASE_MEMORY_AFTER_BYTES = 4 << 20


def _json(value: msgspec.Struct, status: int = 200) -> ServiceResponse:
    return ServiceResponse(status, _ENCODER.encode(value))


def _answer(result: msgspec.Struct | ClosingStream[Any]) -> Answer:
    if isinstance(result, ClosingStream):
        return ServiceStream(sse_stream(result))
    return _json(result)


_ROUTES = routes_by_path()


def error_response(exc: Exception, path: str) -> ServiceResponse:
    """`exc` as `handle` answers it on `path`: in the error shape of the path's API
    (its `RouteSpec.api`; OpenAI's for unknown paths). For a transport that refuses
    a request itself (e.g. a body over its size limit)."""
    methods = _ROUTES.get(route_path(normalize(path)))
    api = next(iter(methods.values())).api if methods else "openai"
    if api == "anthropic":
        status, body, headers = anthropic.anthropic_error(exc)
        return ServiceResponse(status, body, headers=headers)
    status, body = error_body(exc)
    return ServiceResponse(status, body, headers=error_headers(exc))


class OpenAIService:
    def __init__(
        self,
        models: Sequence[ServedModel],
        *,
        max_logprobs: int = 20,
        max_n: int = 128,
        max_queued_requests: int | None = None,
        retry_after: int = 1,
        max_body_bytes: int | None = None,
        registry: CollectorRegistry | None = None,
        options: ServiceOptions | None = None,
        engine_info: Mapping[str, str] | None = None,
    ) -> None:
        """`models`: the first is the default when a request names none.
        `max_queued_requests`: generation requests waiting for their first output
        beyond which new ones get a 503 with `Retry-After: retry_after` (None: no limit).
        `max_body_bytes`: a 413 above it (None: the transport's cap only).
        `options`: server-wide switches (vLLM's flags); None: vLLM's defaults.
        `engine_info`: the engine settings `vllm:cache_config_info` shows."""
        options = options or ServiceOptions()
        self.load = LoadTracker(max_queued_requests, retry_after)
        self.metrics = ServiceMetrics(models, self.load, registry)
        self.vllm_metrics = VLLMMetrics(models, self.metrics.registry, engine_info)
        request_log = RequestLogger(options.max_log_len) if options.enable_log_requests else None
        self.ctx = ServiceContext(
            models,
            Limits(max_logprobs, max_n),
            MeteredAdmission(self.load, self.metrics, self.vllm_metrics, request_log),
            options,
        )
        self.max_body_bytes = max_body_bytes
        self.responses = ResponsesAPI(
            self.ctx,
            ResponseStore(
                options.responses_store,
                max_items=options.responses_store_max_items,
                max_age=options.responses_store_max_age,
            ),
        )
        self._routes = _ROUTES
        self._handlers: dict[str, Handler] = {
            "create_chat_completion": self._chat,
            "create_completion": self._completion,
            "create_response": self._create_response,
            "retrieve_response": self._retrieve_response,
            "delete_response": self._delete_response,
            "cancel_response": self._cancel_response,
            "create_message": self._message,
            "count_message_tokens": self._count_message_tokens,
            "create_embedding": self._embedding,
            "pooling": self._pooling,
            "score": self._score,
            "rerank": self._rerank,
            "list_models": self._list_models,
            "retrieve_model": self._retrieve_model,
            "tokenize": self._tokenize,
            "detokenize": self._detokenize,
            "health": self._health,
            "ping": self._health,  # as vLLM: /ping is the health check
            "version": self._version,
            "load": self._load,
            "metrics": self._metrics,
            "openapi": self._openapi,
            "tokenizer_info": self._tokenizer_info,
            "reset_prefix_cache": self._reset_prefix_cache,
        }

    @property
    def models(self) -> list[ServedModel]:
        return self.ctx.models

    # ---- the transport's entry point ----------------------------------------------------

    async def handle(self, request: ServiceRequest) -> ServiceResponse | ServiceStream:
        """Answer one request. Never raises: errors become error responses (`_error`)."""
        route = "unknown"  # the metrics label: a route template, never a raw path
        try:
            path = normalize(request.path)
            if route_path(path) in self._routes:
                route = route_path(path)
            spec = self._route(request.method, path)
            if spec.request is not None:
                self._check_body(request)
            answer = await self._handlers[spec.operation](request, path)
        except Exception as exc:
            answer = error_response(exc, request.path)
        self.metrics.count_request(route, answer.status)
        if len(request.body) >= RELEASE_MEMORY_AFTER_BYTES:
            await asyncio.to_thread(release_free_memory)
        return answer

    def _route(self, method: str, path: str) -> RouteSpec:
        methods = self._routes.get(route_path(path))
        if methods is None:
            raise NotFoundError(f"no route {method} {path}")
        spec = methods.get(method.upper())
        if spec is None:
            allowed = sorted(methods)
            raise MethodNotAllowedError(
                f"method {method} is not allowed on {path}; allowed: {', '.join(allowed)}",
                allowed=allowed,
            )
        return spec

    def _check_body(self, request: ServiceRequest) -> None:
        if self.max_body_bytes is not None and len(request.body) > self.max_body_bytes:
            raise PayloadTooLargeError(
                f"the request body has {len(request.body)} bytes; the limit is "
                f"{self.max_body_bytes}"
            )
        content_type = _header(request.headers, "content-type")
        if content_type is None:
            return  # as OpenAI does: a body without a content type is read as JSON
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaTypeError(
                f"the request body must be application/json, not {media or 'empty'!r}"
            )

    # ---- typed entry points (in-process callers) ----------------------------------------

    async def create_chat_completion(
        self, req: ChatCompletionRequest, request_id: str
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionChunk]:
        """Raises LLMCoreError subclasses on bad input. A stream is already started:
        iterate it to the end or `aclose()` it (which aborts the request)."""
        return await chat.create_chat_completion(self.ctx, req, request_id)

    async def create_completion(
        self, req: CompletionRequest, request_id: str
    ) -> CompletionResponse | AsyncIterator[CompletionChunk]:
        """As `create_chat_completion`, for /v1/completions."""
        return await completions.create_completion(self.ctx, req, request_id)

    async def create_response(
        self, req: ResponsesRequest, request_id: str
    ) -> Response | AsyncIterator[ResponseStreamEvent]:
        """As `create_chat_completion`, for /v1/responses (the stored response's
        operations are on `self.responses`)."""
        return await self.responses.create(req, request_id)

    async def create_embedding(self, req: EmbeddingRequest, request_id: str) -> EmbeddingResponse:
        """As `create_chat_completion`, for /v1/embeddings."""
        return await embeddings.create_embedding(self.ctx, req, request_id)

    # ---- handlers -----------------------------------------------------------------------

    async def _chat(self, request: ServiceRequest, path: str) -> Answer:
        req = CHAT_DECODER.decode(request.body)
        return _answer(await chat.create_chat_completion(self.ctx, req, request.request_id))

    async def _completion(self, request: ServiceRequest, path: str) -> Answer:
        req = COMPLETION_DECODER.decode(request.body)
        return _answer(await completions.create_completion(self.ctx, req, request.request_id))

    async def _create_response(self, request: ServiceRequest, path: str) -> Answer:
        req = RESPONSES_DECODER.decode(request.body)
        result = await self.responses.create(req, request.request_id)
        if isinstance(result, ClosingStream):
            return ServiceStream(response_sse(result))
        return _json(result)

    async def _retrieve_response(self, request: ServiceRequest, path: str) -> Answer:
        return _json(await self.responses.retrieve(response_id_of(path)))

    async def _delete_response(self, request: ServiceRequest, path: str) -> Answer:
        return _json(await self.responses.delete(response_id_of(path)))

    async def _cancel_response(self, request: ServiceRequest, path: str) -> Answer:
        return _json(await self.responses.cancel(response_id_of(path)))

    async def _message(self, request: ServiceRequest, path: str) -> Answer:
        req = anthropic.MESSAGES_DECODER.decode(request.body)
        result = await anthropic.create_message(self.ctx, req, request.request_id)
        if isinstance(result, ClosingStream):
            return ServiceStream(result)
        return _json(result)

    async def _count_message_tokens(self, request: ServiceRequest, path: str) -> Answer:
        req = anthropic.COUNT_TOKENS_DECODER.decode(request.body)
        return _json(await anthropic.count_tokens(self.ctx, req))

    async def _embedding(self, request: ServiceRequest, path: str) -> Answer:
        req = EMBEDDING_DECODER.decode(request.body)
        return _json(await embeddings.create_embedding(self.ctx, req, request.request_id))

    async def _pooling(self, request: ServiceRequest, path: str) -> Answer:
        req = POOLING_DECODER.decode(request.body)
        return _json(await embeddings.create_pooling(self.ctx, req, request.request_id))

    async def _score(self, request: ServiceRequest, path: str) -> Answer:
        req = SCORE_DECODER.decode(request.body)
        return _json(await score.score(self.ctx, req, request.request_id))

    async def _rerank(self, request: ServiceRequest, path: str) -> Answer:
        req = RERANK_DECODER.decode(request.body)
        return _json(await score.rerank(self.ctx, req, request.request_id))

    async def _list_models(self, request: ServiceRequest, path: str) -> Answer:
        return _json(models.list_models(self.ctx))

    async def _retrieve_model(self, request: ServiceRequest, path: str) -> Answer:
        return _json(models.retrieve_model(self.ctx, path[len(MODEL_PREFIX) :]))

    async def _tokenize(self, request: ServiceRequest, path: str) -> Answer:
        return _json(await tokens.tokenize(self.ctx, TOKENIZE_DECODER.decode(request.body)))

    async def _detokenize(self, request: ServiceRequest, path: str) -> Answer:
        return _json(tokens.detokenize(self.ctx, DETOKENIZE_DECODER.decode(request.body)))

    async def _health(self, request: ServiceRequest, path: str) -> Answer:
        for model in self.ctx.models:
            await model.engine.check_health()
        return ServiceResponse(200, b"", _TEXT)

    async def _tokenizer_info(self, request: ServiceRequest, path: str) -> Answer:
        if not self.ctx.options.enable_tokenizer_info_endpoint:
            raise NotFoundError(f"no route {request.method} {path}")
        return ServiceResponse(200, _ENCODER.encode(tokenizer_info(self.ctx.models[0])))

    async def _reset_prefix_cache(self, request: ServiceRequest, path: str) -> Answer:
        """Every engine forgets its prefix cache: {"success": true}, or false (and the
        caches stay) while requests hold KV blocks, as vLLM answers."""
        log.info("Resetting prefix cache...")
        success = True
        for model in self.ctx.models:
            reset = getattr(model.engine, "reset_prefix_cache", None)
            if reset is not None:
                success = await reset() and success
        return ServiceResponse(200, _ENCODER.encode({"success": success}))

    async def _version(self, request: ServiceRequest, path: str) -> Answer:
        return _json(VersionResponse(_version()))

    async def _load(self, request: ServiceRequest, path: str) -> Answer:
        return _json(LoadResponse(self.load.in_flight))

    async def _metrics(self, request: ServiceRequest, path: str) -> Answer:
        body, content_type = self.metrics.render()
        return ServiceResponse(200, body, content_type)

    async def _openapi(self, request: ServiceRequest, path: str) -> Answer:
        return ServiceResponse(200, openapi_document(_version()))


def tokenizer_info(model: ServedModel) -> dict[str, Any]:
    """GET /tokenizer_info as vLLM answers it: the tokenizer's class, its special
    tokens and the chat template (`TokenizerInfoResponse`)."""
    tok = model.tokenizer
    info: dict[str, Any] = {
        "tokenizer_class": type(tok).__name__,
        "model_max_length": model.max_model_len,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
    }
    if model.chat_template is not None:
        info["chat_template"] = model.chat_template.source
    return {key: value for key, value in info.items() if value is not None}


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """The first value of header `name` (reads only the `headers` attribute, so any
    request object of ServiceRequest's shape works)."""
    return next((value for key, value in headers if key.lower() == name), None)


def _version() -> str:
    import llmcore  # at call time: llmcore may import this package while initialising

    return llmcore.__version__
