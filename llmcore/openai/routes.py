"""The service's routes as data: path, method, operation name and wire types.

Invariant: this table is the one list of what the service serves; the router
dispatches on it and the OpenAPI document is generated from it, so they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmcore.anthropic import (
    CountTokensRequest,
    CountTokensResponse,
    Message,
    MessagesRequest,
    StreamEvent,
)
from llmcore.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    LoadResponse,
    ModelCard,
    ModelList,
    PoolingRequest,
    PoolingResponse,
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
    TokenizeRequest,
    TokenizeResponse,
    VersionResponse,
)
from llmcore.openai.responses.wire import (
    DeletedResponse,
    Response,
    ResponsesRequest,
    ResponseStreamEvent,
)

MODEL_PREFIX = "/v1/models/"  # /v1/models/{model}: the rest of the path is the model's name
RESPONSE_PREFIX = "/v1/responses/"  # /v1/responses/{response_id}[/cancel]
CANCEL_SUFFIX = "/cancel"


@dataclass(frozen=True, slots=True)
class RouteSpec:
    path: str  # "/v1/models/{model}" for the one parametrised route
    method: str
    operation: str  # the handler's name, and the OpenAPI operationId
    summary: str
    request: type | None = None  # JSON body type (POST routes)
    response: type | None = None  # JSON response type; None: not JSON (see content_type)
    stream: Any = None  # SSE chunk type (or a union of event types), when the route can stream
    content_type: str = "application/json"
    api: str = "openai"  # whose error shape the route answers in: "openai" or "anthropic"


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec(
        "/v1/chat/completions",
        "POST",
        "create_chat_completion",
        "Create a chat completion",
        ChatCompletionRequest,
        ChatCompletionResponse,
        ChatCompletionChunk,
    ),
    RouteSpec(
        "/v1/completions",
        "POST",
        "create_completion",
        "Create a completion",
        CompletionRequest,
        CompletionResponse,
        CompletionChunk,
    ),
    RouteSpec(
        "/v1/responses",
        "POST",
        "create_response",
        "Create a response (the Responses API)",
        ResponsesRequest,
        Response,
        ResponseStreamEvent,
    ),
    RouteSpec(
        "/v1/responses/{response_id}",
        "GET",
        "retrieve_response",
        "A stored (or running) response",
        None,
        Response,
    ),
    RouteSpec(
        "/v1/responses/{response_id}",
        "DELETE",
        "delete_response",
        "Delete a stored response",
        None,
        DeletedResponse,
    ),
    RouteSpec(
        "/v1/responses/{response_id}/cancel",
        "POST",
        "cancel_response",
        "Cancel a running response (400 once it has finished)",
        None,
        Response,
    ),
    RouteSpec(
        "/v1/messages",
        "POST",
        "create_message",
        "Create a message (Anthropic's Messages API)",
        MessagesRequest,
        Message,
        StreamEvent,
        api="anthropic",
    ),
    RouteSpec(
        "/v1/messages/count_tokens",
        "POST",
        "count_message_tokens",
        "Count a message's input tokens (Anthropic's Messages API)",
        CountTokensRequest,
        CountTokensResponse,
        api="anthropic",
    ),
    RouteSpec(
        "/v1/embeddings",
        "POST",
        "create_embedding",
        "Create embeddings",
        EmbeddingRequest,
        EmbeddingResponse,
    ),
    RouteSpec(
        "/pooling", "POST", "pooling", "Pooled model output", PoolingRequest, PoolingResponse
    ),
    *(
        RouteSpec(path, "POST", "score", "Score text pairs", ScoreRequest, ScoreResponse)
        for path in ("/score", "/v1/score")
    ),
    *(
        RouteSpec(path, "POST", "rerank", "Rerank documents", RerankRequest, RerankResponse)
        for path in ("/rerank", "/v1/rerank", "/v2/rerank")
    ),
    RouteSpec("/v1/models", "GET", "list_models", "List the served models", None, ModelList),
    RouteSpec(
        "/v1/models/{model}", "GET", "retrieve_model", "Describe a served model", None, ModelCard
    ),
    RouteSpec(
        "/tokenize",
        "POST",
        "tokenize",
        "Tokenize a prompt or a conversation",
        TokenizeRequest,
        TokenizeResponse,
    ),
    RouteSpec(
        "/detokenize",
        "POST",
        "detokenize",
        "Turn token ids into text",
        DetokenizeRequest,
        DetokenizeResponse,
    ),
    RouteSpec(
        "/health",
        "GET",
        "health",
        "200 if every engine can serve, else 503",
        content_type="text/plain",
    ),
    *(
        RouteSpec("/ping", method, "ping", "As /health (200, else 503)", content_type="text/plain")
        for method in ("GET", "POST")
    ),
    RouteSpec("/version", "GET", "version", "The llmcore version", None, VersionResponse),
    RouteSpec("/load", "GET", "load", "Generation requests in flight", None, LoadResponse),
    RouteSpec(
        "/metrics", "GET", "metrics", "Prometheus metrics (text format)", content_type="text/plain"
    ),
    RouteSpec("/openapi.json", "GET", "openapi", "This document"),
    RouteSpec(
        "/tokenizer_info",
        "GET",
        "tokenizer_info",
        "The tokenizer's class, special tokens and chat template "
        "(--enable-tokenizer-info-endpoint; else 404)",
    ),
    RouteSpec(
        "/reset_prefix_cache",
        "POST",
        "reset_prefix_cache",
        'Forget the prefix cache: {"success": false} while requests hold KV blocks',
    ),
)


def normalize(path: str) -> str:
    """`path` without a single trailing slash ("/v1/models/" is "/v1/models")."""
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def route_path(path: str) -> str:
    """The route a normalized request path belongs to ("/v1/models/x" is
    "/v1/models/{model}")."""
    if path.startswith(MODEL_PREFIX):
        return "/v1/models/{model}"
    if path.startswith(RESPONSE_PREFIX):
        return _response_route(path[len(RESPONSE_PREFIX) :]) or path
    return path


def _response_route(rest: str) -> str | None:
    """The route of "/v1/responses/" + `rest`: an id, or an id and "/cancel"."""
    response_id = rest.removesuffix(CANCEL_SUFFIX)
    if not response_id or "/" in response_id:
        return None
    suffix = CANCEL_SUFFIX if response_id != rest else ""
    return "/v1/responses/{response_id}" + suffix


def response_id_of(path: str) -> str:
    """The {response_id} of a normalized /v1/responses/{response_id}[/cancel] path."""
    return path[len(RESPONSE_PREFIX) :].removesuffix(CANCEL_SUFFIX)


def routes_by_path() -> dict[str, dict[str, RouteSpec]]:
    table: dict[str, dict[str, RouteSpec]] = {}
    for spec in ROUTES:
        table.setdefault(spec.path, {})[spec.method] = spec
    return table
