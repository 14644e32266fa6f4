"""The OpenAPI 3.1 document of the service, generated from the route table and the
msgspec Structs (`msgspec.json.schema_components`).

Invariant: every route of `ROUTES` appears with its request body schema, its
response schema (and its SSE chunk schema where it streams) and the error schema;
the document is built once per process.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from llmcore.openai.protocol import ErrorResponse
from llmcore.openai.routes import ROUTES, RouteSpec

_REF = "#/components/schemas/{name}"


def _types() -> list[Any]:
    types: list[Any] = [ErrorResponse]
    for spec in ROUTES:
        types.extend(t for t in (spec.request, spec.response, spec.stream) if t is not None)
    return list(dict.fromkeys(types))


def _ref(t: type) -> dict[str, str]:
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
            "x-sse-data": _ref(spec.stream),  # each `data:` event holds one such chunk
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
        "content": {"application/json": {"schema": _ref(ErrorResponse)}},
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
    if "{model}" in spec.path:
        operation["parameters"] = [
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
        ]
    return operation


@cache
def openapi_document(version: str) -> bytes:
    """The document, as JSON bytes."""
    _, components = msgspec.json.schema_components(_types(), ref_template=_REF)
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
