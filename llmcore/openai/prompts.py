"""Prompts: a completions `prompt` (text, texts, token ids or lists of them) or a
chat conversation (rendered to text by `llmcore.chat_template`), as token ids, checked.

Invariant: a prompt that leaves here is non-empty, every id is in the tokenizer's
vocabulary, and prompt + max_tokens fits the served context (exactly full is fine).
A text too long to fit is refused by its length before it is tokenized, and a long
text is tokenized on a worker thread, so no prompt stalls the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from llmcore.chat_template import ChatTemplate, render_conversation
from llmcore.errors import ContextLengthExceededError, InvalidRequestError
from llmcore.openai.generation import Prompt
from llmcore.openai.interface import ServedModel
from llmcore.openai.protocol import ChatMessage, Content, PromptInput, TextPart

_T = TypeVar("_T")

# Texts longer than this are tokenized on a worker thread: the tokenizers library
# releases the GIL in `encode_batch` (not in `encode`), so the event loop runs on.
THREAD_TOKENIZE_CHARS = 1 << 14


def max_prompt_chars(model: ServedModel) -> int:
    """The longest text, in characters, that could still fit `model`'s context: no
    token spans more than `max_token_chars` characters; the factor 2 leaves room
    for normalizers that fold text (NFKC, accent stripping)."""
    return model.max_model_len * model.tokenizer.max_token_chars * 2


def fitting_text(model: ServedModel, text: str, param: str, *, cut: bool = False) -> str:
    """`text`, if its length lets it fit `model`'s context; else, with `cut` (the caller
    truncates the ids, keeping their beginning), its first `max_prompt_chars`
    characters, and without, a ContextLengthExceededError. Nothing is tokenized."""
    if len(text) <= model.max_model_len:  # the bound needs max_token_chars: not before
        return text
    limit = max_prompt_chars(model)
    if len(text) > limit and not cut:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {model.max_model_len} tokens. "
            f"However, your {param} has {len(text)} characters, more than that many "
            f"tokens can hold (at most {limit}). Please reduce the length of the {param}.",
            param=param,
        )
    return text[:limit]


async def tokenizing(num_chars: int, encode: Callable[..., _T], *args: Any) -> _T:
    """`encode(*args)`, on a worker thread when it tokenizes more than
    THREAD_TOKENIZE_CHARS characters (it must go through `encode_batch` then)."""
    if num_chars <= THREAD_TOKENIZE_CHARS:
        return encode(*args)
    return await asyncio.to_thread(encode, *args)


async def encode_text(
    model: ServedModel, text: str, *, add_special_tokens: bool, param: str
) -> list[int]:
    """Token ids of `text`, refused by its length first if it cannot fit."""
    text = fitting_text(model, text, param)
    tokenizer = model.tokenizer
    if len(text) <= THREAD_TOKENIZE_CHARS:
        return tokenizer.encode(text, add_special_tokens=add_special_tokens)
    (ids,) = await asyncio.to_thread(tokenizer.encode_batch, [text], add_special_tokens)
    return ids


def check_prompt_length(model: ServedModel, num_tokens: int, param: str) -> None:
    """A prompt of token ids longer than the context is refused before its ids are
    looked at."""
    if num_tokens > model.max_model_len:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {model.max_model_len} tokens. However, "
            f"your {param} has {num_tokens} tokens. Please reduce the length of the {param}.",
            param=param,
        )


def check_token_ids(ids: Sequence[int], vocab_size: int, param: str) -> None:
    if not ids:
        raise InvalidRequestError(f"{param}: the prompt is empty", param=param)
    if 0 <= min(ids) and max(ids) < vocab_size:  # two passes in C: the common case
        return
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


async def completion_prompts(
    model: ServedModel, prompt: PromptInput, add_special_tokens: bool, param: str = "prompt"
) -> list[Prompt]:
    """One `Prompt` per prompt of the request, tokenized and checked."""
    tokenizer = model.tokenizer
    prompts = []
    for item in prompt_items(prompt, param):
        if isinstance(item, str):
            ids = await encode_text(model, item, add_special_tokens=add_special_tokens, param=param)
            prompts.append(Prompt(ids, item))
        else:
            check_prompt_length(model, len(item), param)
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


async def chat_prompt(
    model: ServedModel,
    messages: Sequence[ChatMessage],
    *,
    add_generation_prompt: bool,
    continue_final_message: bool,
    add_special_tokens: bool,
    chat_template_kwargs: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
    chat_template: str | None = None,
) -> Prompt:
    """The conversation rendered by the model's chat template (or the request's own
    `chat_template`, already allowed by the caller), and its token ids."""
    tokenizer = model.tokenizer
    template = model.chat_template if chat_template is None else ChatTemplate(chat_template)
    text = render_conversation(
        template,
        messages,
        tokenizer,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        chat_template_kwargs=chat_template_kwargs,
        tools=tools,
        documents=documents,
    )
    ids = await encode_text(model, text, add_special_tokens=add_special_tokens, param="messages")
    check_token_ids(ids, tokenizer.vocab_size, "messages")
    return Prompt(ids, text)
