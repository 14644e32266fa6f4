"""The OpenAPI 3.1 document of the service, generated from the route table and the
msgspec Structs (`msgspec.json.schema_components`).

Invariant: every route of `ROUTES` appears with its request body schema, its
response schema (and its SSE chunk schema where it streams) and the error schema;
the request schemas state the constraints the service enforces beyond the Structs'
types (`_CONSTRAINTS`: no empty inputs, token ids from 0, exactly one of `prompt` and
`messages` on /tokenize), so a client that follows the document is never refused
for the shape of its body; the document is built once per process.
"""

from __future__ import annotations

import re
import typing
from functools import cache
from typing import Any

import msgspec

from llmcore.anthropic import ErrorEvent
from llmcore.openai.protocol import ErrorResponse
from llmcore.openai.routes import ROUTES, RouteSpec

_REF = "#/components/schemas/{name}"


_TOKEN_ID = {"type": "integer", "minimum": 0,
             "description": "a token id, below the model's vocabulary size"}  # fmt: skip


def _prompt(text: dict[str, Any]) -> dict[str, Any]:
    """A text, or a non-empty list of texts, of token ids, or of token-id lists (not
    mixed)."""
    ids = {"type": "array", "minItems": 1, "items": _TOKEN_ID}
    return {
        "oneOf": [
            text,
            {"type": "array", "minItems": 1, "items": text},
            ids,
            {"type": "array", "minItems": 1, "items": ids},
        ]
    }


_TEXT = {"type": "string", "minLength": 1}
_TEXTS = {"anyOf": [_TEXT, {"type": "array", "minItems": 1, "items": _TEXT}]}
# Per schema, per property: what replaces the Struct's type, or None to only
# constrain (`minItems`) what is there.
_CONSTRAINTS: dict[str, dict[str, dict[str, Any]]] = {
    # A completion's prompt text may be empty when the model's tokenizer adds a BOS.
    "CompletionRequest": {
        "prompt": _prompt(
            {"type": "string", "description": "empty only if the model's tokenizer adds BOS"}
        )
    },
    "ChatCompletionRequest": {"messages": {"minItems": 1}},
    "EmbeddingRequest": {"input": _prompt(_TEXT)},
    "PoolingRequest": {"input": _prompt(_TEXT)},
    "ScoreRequest": {"text_1": _TEXTS, "text_2": _TEXTS},
    "RerankRequest": {"query": _TEXT, "documents": {"minItems": 1}},
    "DetokenizeRequest": {"tokens": {"type": "array", "items": _TOKEN_ID}},
    "TokenizeRequest": {"messages": {"minItems": 1}},
}


def _constrain(schemas: dict[str, Any]) -> None:
    for name, properties in _CONSTRAINTS.items():
        fields = schemas[name]["properties"]
        for field, constraint in properties.items():
            if "type" in constraint or "oneOf" in constraint or "anyOf" in constraint:
                fields[field] = {**constraint, **_kept(fields[field])}
            else:
                _array_of(fields[field]).update(constraint)
    # Exactly one of `prompt` and `messages` (null counts as absent).
    schemas["TokenizeRequest"]["oneOf"] = [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
    ]


def _kept(schema: dict[str, Any]) -> dict[str, Any]:
    return {key: schema[key] for key in ("default", "description") if key in schema}


def _array_of(schema: dict[str, Any]) -> dict[str, Any]:
    """The array schema inside `schema` (itself, or its array branch when nullable)."""
    if schema.get("type") == "array":
        return schema
    return next(branch for branch in schema["anyOf"] if branch.get("type") == "array")


_ERRORS = {"openai": ErrorResponse, "anthropic": ErrorEvent}  # by RouteSpec.api


def _types() -> list[Any]:
    types: list[Any] = list(_ERRORS.values())
    for spec in ROUTES:
        types.extend(t for t in (spec.request, spec.response, spec.stream) if t is not None)
    return list(dict.fromkeys(types))


def _ref(t: Any) -> dict[str, Any]:
    """A reference to `t`'s schema; a union (Anthropic's stream events): one of them."""
    members = typing.get_args(t)
    if members:
        return {"oneOf": [_ref(m) for m in members]}
    return {"$ref": _REF.format(name=t.__name__)}


def _success(spec: RouteSpec) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if spec.response is not None:
        content["application/json"] = {"schema": _ref(spec.response)}
    elif spec.content_type != "application/json":
        content[spec.content_type] = {"schema": {"type": "string"}}
    else:
        content["application/json"] = {"schema": {"type": "object"}}
    if spec.stream is not None:
        content["text/event-stream"] = {
            "schema": {"type": "string"},
            "x-sse-data": _ref(spec.stream),  # each `data:` line holds one such chunk
        }
    return {"description": "OK", "content": content}


def _operation_id(spec: RouteSpec) -> str:
    """The operation name, made unique where several routes share it (/ping's two
    methods; /score and /v1/score, ...)."""
    if spec.path == "/ping":
        return f"{spec.operation}_{spec.method.lower()}"
    first = next(r for r in ROUTES if r.operation == spec.operation)
    if first is spec:
        return spec.operation
    return f"{spec.operation}_{spec.path.strip('/').replace('/', '_')}"


def _operation(spec: RouteSpec) -> dict[str, Any]:
    error = {
        "description": "Error",
        "content": {"application/json": {"schema": _ref(_ERRORS[spec.api])}},
    }
    operation: dict[str, Any] = {
        "operationId": _operation_id(spec),
        "summary": spec.summary,
        "responses": {"200": _success(spec), "default": error},
    }
    if spec.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(spec.request)}},
        }
    names = re.findall(r"\{(\w+)\}", spec.path)  # {model}, {response_id}
    if names:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in names
        ]
    return operation


@cache
def openapi_document(version: str) -> bytes:
    """The document, as JSON bytes."""
    _, components = msgspec.json.schema_components(_types(), ref_template=_REF)
    _constrain(components)
    paths: dict[str, dict[str, Any]] = {}
    for spec in ROUTES:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec)
    document = {
        "openapi": "3.1.0",
        "info": {"title": "llmcore OpenAI-compatible API", "version": version},
        "paths": paths,
        "components": {"schemas": components},
    }
    return msgspec.json.encode(document)
