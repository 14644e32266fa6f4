"""The Response object: the request's echoed parameters, the output items of a chat
answer, the usage, and the final status.

Invariants: the output items of one answer come in the order reasoning, message,
function calls (a stream lists them in the order they appear, which for every
parser is the same); `status` is `completed` unless the answer ran into
`max_output_tokens` (`incomplete`, with that reason), was cancelled (`cancelled`)
or failed (`failed`, with an `error`); usage counts are the chat answer's, so
`total_tokens = input_tokens + output_tokens`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from llmcore.openai.protocol import ChatMessageOut, UsageInfo
from llmcore.openai.responses.wire import (
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    MessageItem,
    OutputItem,
    OutputText,
    OutputTokensDetails,
    Reasoning,
    ReasoningItem,
    ReasoningText,
    Response,
    ResponseError,
    ResponsesRequest,
    ResponseUsage,
    TextConfig,
)


def new_id(prefix: str) -> str:
    """A fresh item or response id: "resp_", "msg_", "fc_" or "rs_" and 32 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex}"


def _text_config(text: TextConfig | None) -> dict[str, object]:
    fmt = text.format if text is not None and text.format is not None else {"type": "text"}
    return {"format": fmt}


def echo_tool_choice(choice: str | dict[str, object] | None) -> str | dict[str, object]:
    return "auto" if choice is None else choice


def new_response(req: ResponsesRequest, response_id: str, model: str) -> Response:
    """The response to `req`, in progress: no output yet, the parameters echoed."""
    reasoning = req.reasoning
    return Response(
        id=response_id,
        created_at=int(time.time()),
        status="in_progress",
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        model=model,
        parallel_tool_calls=req.parallel_tool_calls is not False,
        previous_response_id=req.previous_response_id,
        reasoning=Reasoning(
            reasoning.effort if reasoning else None, reasoning.summary if reasoning else None
        ),
        store=req.store is not False,
        temperature=1.0 if req.temperature is None else req.temperature,
        text=_text_config(req.text),
        tool_choice=echo_tool_choice(req.tool_choice),
        tools=req.tools or [],
        top_p=1.0 if req.top_p is None else req.top_p,
        truncation=req.truncation or "disabled",
        user=req.user,
        metadata=req.metadata or {},
    )


def message_item(text: str, status: str, item_id: str | None = None) -> MessageItem:
    return MessageItem(item_id or new_id("msg"), status, [OutputText(text)])


def reasoning_item(text: str, status: str, item_id: str | None = None) -> ReasoningItem:
    return ReasoningItem(item_id or new_id("rs"), [], [ReasoningText(text)], status)


def output_items(message: ChatMessageOut, status: str) -> list[OutputItem]:
    """The items of one chat answer: its reasoning, its text, its calls."""
    items: list[OutputItem] = []
    if message.reasoning_content:
        items.append(reasoning_item(message.reasoning_content, status))
    if message.content or not (message.tool_calls or items):  # an empty answer: one message
        items.append(message_item(message.content or "", status))
    for call in message.tool_calls or []:
        items.append(
            FunctionCallItem(
                new_id("fc"), call.id, call.function.name, call.function.arguments, status
            )
        )
    return items


def response_usage(usage: UsageInfo | None, reasoning_tokens: int) -> ResponseUsage | None:
    if usage is None:
        return None
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached),
        output_tokens=usage.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens),
        total_tokens=usage.total_tokens,
    )


def reasoning_tokens(items: list[OutputItem], count: Callable[[str], int]) -> int:
    """The tokens of the reasoning items' text (`count` tokenizes)."""
    return sum(
        count(part.text)
        for item in items
        if isinstance(item, ReasoningItem)
        for part in item.content
    )


def item_status(finish_reason: str | None, cancelled: bool) -> str:
    """The status of the output items of an answer that finished so."""
    return "incomplete" if cancelled or finish_reason in (None, "length", "abort") else "completed"


def finish(response: Response, finish_reason: str | None, cancelled: bool) -> None:
    """Set the final status of `response` from its answer's finish reason."""
    if cancelled:
        response.status = "cancelled"
    elif finish_reason == "length":
        response.status = "incomplete"
        response.incomplete_details = IncompleteDetails("max_output_tokens")
    else:
        response.status = "completed"
        response.completed_at = int(time.time())


def fail(response: Response, message: str) -> None:
    response.status = "failed"
    response.error = ResponseError("server_error", message)
