"""Response bodies of the OpenAI service, in OpenAI's (and vLLM's) shapes.

Invariant: every Struct is `omit_defaults=True`, so a field with a default appears
only when it says something (vLLM's extensions such as `stop_reason` or
`prompt_logprobs`); fields OpenAI always sends, even as `null` (`finish_reason`,
`logprobs`, an error's `param` and `code`), have no default and so always appear.
"""

from __future__ import annotations

import msgspec

from llmcore.openai.protocol.messages import ToolCall


class _Response(msgspec.Struct, omit_defaults=True):
    pass


class PromptTokensDetails(_Response):
    cached_tokens: int  # prompt tokens served from the prefix cache


class UsageInfo(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None  # --enable-prompt-tokens-details


class PromptLogprob(_Response):
    """One candidate at one prompt position (vLLM's `prompt_logprobs` entries)."""

    logprob: float
    rank: int | None
    decoded_token: str


# One dict per prompt position, keyed by token id (a string in JSON); the first is null.
PromptLogprobs = list[dict[str, PromptLogprob] | None]


# ---- /v1/completions --------------------------------------------------------------------


class CompletionLogprobs(_Response):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    stop_reason: str | int | None = None
    prompt_logprobs: PromptLogprobs | None = None
    token_ids: list[int] | None = None  # return_token_ids: generated (streamed: the delta)
    prompt_token_ids: list[int] | None = None  # return_token_ids (streamed: first chunk)


class CompletionResponse(_Response):
    id: str
    object: str  # "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo


class CompletionChunk(_Response):
    id: str
    object: str  # "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# ---- /v1/chat/completions ---------------------------------------------------------------


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatChoiceLogprobs(_Response):
    content: list[ChatLogprob] | None


class ChatMessageOut(_Response):
    role: str
    content: str | None
    reasoning_content: str | None = None  # with a reasoning parser
    tool_calls: list[ToolCall] | None = None


class ChatChoice(_Response):
    index: int
    message: ChatMessageOut
    logprobs: ChatChoiceLogprobs | None
    finish_reason: str | None
    stop_reason: str | int | None = None
    token_ids: list[int] | None = None  # return_token_ids


class ChatCompletionResponse(_Response):
    id: str
    object: str  # "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    prompt_logprobs: PromptLogprobs | None = None
    prompt_token_ids: list[int] | None = None  # return_token_ids


class DeltaFunctionCall(_Response):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(_Response):
    """OpenAI's streamed call: the first delta of a call has its id, type and name."""

    index: int
    id: str | None = None
    type: str | None = None
    function: DeltaFunctionCall | None = None


class DeltaMessage(_Response):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(_Response):
    index: int
    delta: DeltaMessage
    logprobs: ChatChoiceLogprobs | None
    finish_reason: str | None
    stop_reason: str | int | None = None
    token_ids: list[int] | None = None  # return_token_ids: this chunk's tokens


class ChatCompletionChunk(_Response):
    id: str
    object: str  # "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None
    prompt_token_ids: list[int] | None = None  # return_token_ids: on the role chunks


# ---- models, tokenizer, server ----------------------------------------------------------


class ModelCard(_Response):
    id: str
    object: str  # "model"
    created: int
    owned_by: str
    root: str
    max_model_len: int
    task: str  # llmcore: "generate" or "embed"
    capabilities: list[str]  # llmcore: the endpoints this model answers
    parent: str | None = None


class ModelList(_Response):
    object: str  # "list"
    data: list[ModelCard]


class TokenizeResponse(_Response):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str | None] | None = None


class DetokenizeResponse(_Response):
    prompt: str


class VersionResponse(_Response):
    version: str


class LoadResponse(_Response):
    server_load: int


class ErrorInfo(_Response):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorResponse(_Response):
    error: ErrorInfo
