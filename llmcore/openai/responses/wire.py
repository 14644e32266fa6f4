"""The Responses API on the wire (`POST /v1/responses`): the request body, the
Response object and its output items, and the streaming event, in OpenAI's shapes.

Invariants: the request decodes leniently as the other request types do (unknown
fields ignored, `null` is the default); `input` items stay plain JSON objects here
(their shapes vary, and a tagless message is allowed) and are checked item by item
in `llmcore.openai.responses.inputs`, where a bad item is a 400 naming its index.
The Response object always carries every field OpenAI's does, `null` included
(no `omit_defaults`), so the `openai` client's `Response` model parses it; a stream
event carries only the fields of its `type` (`omit_defaults`).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec

from llmcore.openai.protocol.decoding import RequestDecoder
from llmcore.openai.protocol.requests import Seed

Item: TypeAlias = dict[str, Any]  # one input or output item, as JSON


class TextConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    format: dict[str, Any] | None = None  # {"type": "text" | "json_object" | "json_schema", ...}
    verbosity: str | None = None  # refused unless null (as chat's verbosity)


class ReasoningConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    model: str | None = None
    input: str | list[Item] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = None
    store: bool | None = None  # None: true, as OpenAI
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    background: bool | None = None  # true refused
    truncation: str | None = None  # "disabled" only
    include: list[str] | None = None
    top_logprobs: int | None = None  # 0 only
    # OpenAI's, with no effect here (hosted tools are refused; no tiers; no cache keys)...
    max_tool_calls: int | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    stream_options: dict[str, Any] | None = None
    # ...OpenAI's that would change the answer: refused unless null.
    prompt: dict[str, Any] | None = None
    conversation: str | dict[str, Any] | None = None
    # vLLM's extensions, as on chat completions.
    request_id: str | None = None
    priority: int | None = None
    cache_salt: str | None = None
    seed: Seed | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None


RESPONSES_DECODER = RequestDecoder(ResponsesRequest)


# ---- the Response object ------------------------------------------------------------------


class OutputText(msgspec.Struct, tag="output_text", tag_field="type"):
    text: str
    annotations: list[dict[str, Any]] = msgspec.field(default_factory=list)
    logprobs: list[dict[str, Any]] = msgspec.field(default_factory=list)


class ReasoningText(msgspec.Struct, tag="reasoning_text", tag_field="type"):
    text: str


class MessageItem(msgspec.Struct, tag="message", tag_field="type"):
    id: str
    status: str  # in_progress | completed | incomplete
    content: list[OutputText]
    role: str = "assistant"


class FunctionCallItem(msgspec.Struct, tag="function_call", tag_field="type"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


class ReasoningItem(msgspec.Struct, tag="reasoning", tag_field="type"):
    id: str
    summary: list[dict[str, Any]]  # always []: the parser splits reasoning, it does not summarise
    content: list[ReasoningText]
    status: str


OutputItem: TypeAlias = MessageItem | FunctionCallItem | ReasoningItem


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int


class ResponseUsage(msgspec.Struct):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(msgspec.Struct):
    reason: str  # "max_output_tokens"


class ResponseError(msgspec.Struct):
    code: str  # "server_error"
    message: str


class Reasoning(msgspec.Struct):
    effort: str | None = None
    summary: str | None = None


class Response(msgspec.Struct, kw_only=True):
    id: str
    object: str = "response"
    created_at: int
    status: str  # in_progress | completed | incomplete | cancelled | failed
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = msgspec.field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: Reasoning = msgspec.field(default_factory=Reasoning)
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = msgspec.field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    top_p: float | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    background: bool = False


class DeletedResponse(msgspec.Struct):
    id: str
    object: str = "response"
    deleted: bool = True


class ResponseStreamEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One server-sent event of a streamed response (`event: <type>`): the fields
    of OpenAI's event of that type, the others left out."""

    type: str
    sequence_number: int
    response: Response | None = None
    output_index: int | None = None
    item: OutputItem | None = None
    item_id: str | None = None
    content_index: int | None = None
    part: OutputText | ReasoningText | None = None
    delta: str | None = None
    text: str | None = None
    arguments: str | None = None
    logprobs: list[dict[str, Any]] | None = None  # [] on output_text events
    code: str | None = None  # "error" events
    message: str | None = None
    param: str | None = None


RESPONSE_DECODER = msgspec.json.Decoder(Response)
