"""The Responses API (`/v1/responses`): a thin translation onto the chat completions
pipeline, with stored responses for `previous_response_id`, GET, DELETE and cancel.

Modules: `wire` (request, Response object, stream event), `inputs` (input items
-> chat messages), `translate` (request -> chat request), `output` (chat answer
-> Response), `events` (chat chunks -> typed SSE events), `store` (SQLite),
`api` (the operations).
"""

from __future__ import annotations

from llmcore.openai.responses.api import ResponsesAPI
from llmcore.openai.responses.events import response_sse
from llmcore.openai.responses.store import ResponseStore
from llmcore.openai.responses.wire import (
    RESPONSES_DECODER,
    DeletedResponse,
    Response,
    ResponsesRequest,
    ResponseStreamEvent,
)

__all__ = [
    "RESPONSES_DECODER",
    "DeletedResponse",
    "Response",
    "ResponseStore",
    "ResponseStreamEvent",
    "ResponsesAPI",
    "ResponsesRequest",
    "response_sse",
]
