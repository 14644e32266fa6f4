"""Prompts: a completions `prompt` (text, texts, token ids or lists of them) or a
chat conversation (rendered to text by `llmcore.chat_template`), as token ids, checked.

Invariant: a prompt that leaves here is non-empty, every id is in the tokenizer's
vocabulary, and prompt + max_tokens fits the served context (exactly full is fine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from llmcore.chat_template import render_conversation
from llmcore.errors import ContextLengthExceededError, InvalidRequestError
from llmcore.openai.generation import Prompt
from llmcore.openai.interface import ServedModel
from llmcore.openai.protocol import ChatMessage, Content, PromptInput, TextPart


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


def chat_prompt(
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
    tokenizer = model.tokenizer
    text = render_conversation(
        model.chat_template,
        messages,
        tokenizer,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        chat_template_kwargs=chat_template_kwargs,
        tools=tools,
        documents=documents,
    )
    ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    check_token_ids(ids, tokenizer.vocab_size, "messages")
    return Prompt(ids, text)
