"""The one place a conversation becomes prompt text: OpenAI chat messages (the wire
Structs of `llmcore.openai.protocol`) are turned into what chat templates read (plain
dicts, tool-call arguments parsed into objects), checked, and rendered by the
model's template with its BOS/EOS tokens and the request's `chat_template_kwargs`.

Invariant: a request the renderer cannot honour is an `InvalidRequestError` naming
the field (a non-text content part, `continue_final_message` with
`add_generation_prompt`, a `chat_template_kwargs` key the request sets itself); a
model without a template is `NoChatTemplateError`; the template's own failures
leave as `ChatTemplateError`. Messages are read by their msgspec tags (`role`, a
part's `type`), so this package never imports `llmcore.openai`, which imports it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from llmcore.chat_template.template import ChatTemplate, require_template
from llmcore.errors import InvalidRequestError
from llmcore.json_depth import MAX_JSON_DEPTH, json_depth

if TYPE_CHECKING:
    from llmcore.openai.protocol import ChatMessage, Content

# Keys of chat_template_kwargs that would collide with the renderer's own arguments.
_RESERVED_KWARGS = frozenset(
    {"self", "messages", "add_generation_prompt", "continue_final_message", "tools", "documents"}
)


class SpecialTokens(Protocol):
    """What the renderer reads of a tokenizer: the texts templates call `bos_token`
    and `eos_token` (a `Tokenizer` is one)."""

    @property
    def bos_token(self) -> str | None: ...

    @property
    def eos_token(self) -> str | None: ...


def render_conversation(
    template: ChatTemplate | None,
    messages: Sequence[ChatMessage],
    special_tokens: SpecialTokens,
    *,
    add_generation_prompt: bool,
    continue_final_message: bool = False,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The conversation rendered by `template` (the model's; None: it has none)."""
    template = require_template(template)
    if continue_final_message and add_generation_prompt:
        raise InvalidRequestError(
            "continue_final_message: cannot be set together with add_generation_prompt "
            "(set add_generation_prompt to false)",
            param="continue_final_message",
        )
    kwargs = dict(chat_template_kwargs or {})
    reserved = sorted(_RESERVED_KWARGS & kwargs.keys())
    if reserved:
        raise InvalidRequestError(
            f"chat_template_kwargs: {reserved[0]!r} is set by the request itself, not here",
            param="chat_template_kwargs",
        )
    return template.render(
        message_dicts(messages),
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        tools=tools or None,
        documents=documents,
        **{
            "bos_token": special_tokens.bos_token or "",
            "eos_token": special_tokens.eos_token or "",
            **kwargs,
        },
    )


def message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as the chat template reads it; non-text parts are refused."""
    out = []
    for i, message in enumerate(messages):
        _check_text_only(message.content, f"messages[{i}].content")
        data: dict[str, Any] = {"role": _tag(message)}
        for name in message.__struct_fields__:
            value = getattr(message, name)
            if value is not None:
                data[name] = msgspec.to_builtins(value)
        if data.get("tool_calls"):  # an assistant message's
            data["tool_calls"] = [_tool_call(call) for call in data["tool_calls"]]
            data.setdefault("content", "")  # a call with no text: as vLLM renders it
        out.append(data)
    return out


def _tag(struct: msgspec.Struct) -> str:
    """A tagged Struct's tag: a message's `role`, a content part's `type`."""
    return str(type(struct).__struct_config__.tag)


def _check_text_only(content: Content | None, param: str) -> None:
    if not isinstance(content, list):
        return
    for j, part in enumerate(content):
        kind = _tag(part)
        if kind != "text":
            raise InvalidRequestError(
                f"{param}[{j}]: content parts of type {kind!r} are not supported (text only)",
                param=f"{param}[{j}]",
            )


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """Templates read a tool call's `arguments` as an object (vLLM parses them too)."""
    function = dict(call.get("function", {}))
    arguments = function.get("arguments", "")
    if isinstance(arguments, str) and json_depth(arguments.encode()) <= MAX_JSON_DEPTH:
        try:
            function["arguments"] = json.loads(arguments)
        except ValueError:
            pass  # not JSON: the template gets the string (so does JSON nested too deeply)
    return {**call, "function": function}
