"""Prompts: a completions `prompt` (text, texts, token ids or lists of them) or a
chat conversation (rendered by the model's chat template), as token ids, checked.

Invariant: a prompt that leaves here is non-empty, every id is in the tokenizer's
vocabulary, and prompt + max_tokens fits the served context (exactly full is fine).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import msgspec

from llmcore.chat_template import require_template
from llmcore.errors import ContextLengthExceededError, InvalidRequestError
from llmcore.openai.generation import Prompt
from llmcore.openai.interface import ServedModel
from llmcore.openai.protocol import (
    ROLE_OF,
    AssistantMessage,
    ChatMessage,
    Content,
    PromptInput,
    TextPart,
)

# Keys of chat_template_kwargs that would collide with the renderer's own arguments.
_RESERVED_KWARGS = frozenset(
    {"self", "messages", "add_generation_prompt", "continue_final_message", "tools", "documents"}
)


def check_token_ids(ids: Sequence[int], vocab_size: int, param: str) -> None:
    if not ids:
        raise InvalidRequestError(f"{param}: the prompt is empty", param=param)
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(
            f"{param}: token id {bad} is out of vocabulary (vocab size {vocab_size})", param=param
        )


def check_context(model: ServedModel, num_prompt: int, max_tokens: int | None, what: str) -> None:
    """Prompt + max_tokens must fit `model.max_model_len`; with no max_tokens, the
    prompt must leave room for at least one token."""
    limit = model.max_model_len
    if max_tokens is None and num_prompt >= limit:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {limit} tokens. However, your {what} "
            f"has {num_prompt} tokens, which leaves no room for the completion. Please "
            f"reduce the length of the {what}.",
            param=what,
        )
    if max_tokens is not None and num_prompt + max_tokens > limit:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{num_prompt + max_tokens} tokens ({num_prompt} in the {what}, {max_tokens} in "
            f"the completion). Please reduce the length of the {what} or completion.",
            param="max_tokens",
        )


# ---- completions --------------------------------------------------------------------------


def completion_prompts(
    model: ServedModel, prompt: PromptInput, add_special_tokens: bool, param: str = "prompt"
) -> list[Prompt]:
    """One `Prompt` per prompt of the request, tokenized and checked."""
    tokenizer = model.tokenizer
    prompts = []
    for item in prompt_items(prompt, param):
        if isinstance(item, str):
            ids = tokenizer.encode(item, add_special_tokens=add_special_tokens)
            prompts.append(Prompt(ids, item))
        else:
            prompts.append(Prompt(list(item)))
        check_token_ids(prompts[-1].token_ids, tokenizer.vocab_size, param)
    return prompts


def prompt_items(prompt: PromptInput, param: str = "prompt") -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [cast(list[int], prompt)]
    if prompt and all(isinstance(p, str) for p in prompt):
        return cast(list[str | list[int]], prompt)
    if prompt and all(isinstance(p, list) for p in prompt):
        return cast(list[str | list[int]], prompt)
    raise InvalidRequestError(
        f"{param}: must be a string, a list of strings, a list of token ids or a list of "
        "token-id lists (not mixed, not empty)",
        param=param,
    )


def prompt_text(model: ServedModel, prompt: Prompt) -> str:
    """The prompt's text (for echo): as given, or decoded from its ids."""
    if prompt.text is not None:
        return prompt.text
    return model.tokenizer.decode(prompt.token_ids, skip_special_tokens=False)


# ---- chat ---------------------------------------------------------------------------------


def content_text(content: Content | None) -> str:
    """The text of a message's content (text parts joined with newlines)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content if isinstance(part, TextPart))


def message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as the chat template reads it; non-text parts are refused."""
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, TextPart):
                    param = f"messages[{i}].content[{j}]"
                    kind = type(part).__name__
                    raise InvalidRequestError(
                        f"{param}: content parts of type {_PART_TYPES.get(kind, kind)!r} are "
                        "not supported (text only)",
                        param=param,
                    )
        data: dict[str, Any] = {"role": ROLE_OF[type(message)]}
        for name in message.__struct_fields__:
            value = getattr(message, name)
            if value is not None:
                data[name] = _plain(value)
        if isinstance(message, AssistantMessage) and message.tool_calls:
            data["tool_calls"] = [_tool_call(call) for call in data["tool_calls"]]
        out.append(data)
    return out


_PART_TYPES = {
    "ImageURLPart": "image_url",
    "InputAudioPart": "input_audio",
    "FilePart": "file",
    "RefusalPart": "refusal",
}


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """Templates read a tool call's `arguments` as an object (vLLM parses them too)."""
    function = dict(call.get("function", {}))
    try:
        function["arguments"] = json.loads(function.get("arguments", ""))
    except (TypeError, ValueError):
        pass  # not JSON: the template gets the string
    return {**call, "function": function}


def render_chat(
    model: ServedModel,
    messages: Sequence[ChatMessage],
    *,
    add_generation_prompt: bool,
    continue_final_message: bool,
    add_special_tokens: bool,
    chat_template_kwargs: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
) -> Prompt:
    """The conversation rendered by the model's chat template, and its token ids."""
    template = require_template(model.chat_template)
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
    tokenizer = model.tokenizer
    text = template.render(
        message_dicts(messages),
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        tools=tools or None,
        documents=documents,
        **{
            "bos_token": tokenizer.bos_token or "",
            "eos_token": tokenizer.eos_token or "",
            **kwargs,
        },
    )
    ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    check_token_ids(ids, tokenizer.vocab_size, "messages")
    return Prompt(ids, text)
