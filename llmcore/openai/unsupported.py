"""Request fields that would change behaviour but are not supported: each is refused
with a 400 naming it, never silently dropped.

Invariant: a request passing these checks asks only for what the service does.
"""

from __future__ import annotations

from typing import Any

from llmcore.errors import InvalidRequestError
from llmcore.openai.options import ServiceOptions
from llmcore.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    PoolingRequest,
    TokenizeRequest,
)
from llmcore.openai.protocol.pooling import _PoolingRequest
from llmcore.openai.protocol.requests import _GenerationRequest

# vLLM's fields with no counterpart here: accepted when absent, null or empty only.
_GENERATION_EXTRAS = {
    "logits_processors": "custom logits processors are not supported",
    "vllm_xargs": "no extension reads extra arguments here",
    "kv_transfer_params": "disaggregated serving (KV transfer) is not supported",
}
_CHAT_EXTRAS = {
    "web_search_options": "web search is not supported",
    "verbosity": "is not supported",
    "mm_processor_kwargs": "only text is served (no multimodal processor)",
}
_ACTIVATION = (
    "applies to classification and cross-encoder outputs; the models served here pool "
    "embeddings (scores are cosine similarities), which have no activation"
)
_POOLING_EXTRAS = {
    "mm_processor_kwargs": "only text is served (no multimodal processor)",
    "softmax": _ACTIVATION,
    "activation": _ACTIVATION,
    "use_activation": _ACTIVATION,
    "truncation_side": "is not supported (text is cut at its end, token ids keep their end)",
}
_CHAT_EMBEDDING = ("add_generation_prompt", "continue_final_message", "chat_template")


def refuse(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


def check_generation(req: _GenerationRequest) -> None:
    """The checks shared by completions and chat completions."""
    if req.stream_options is not None and not req.stream:
        raise refuse("stream_options", "can only be set when stream is true")
    if req.use_beam_search:
        raise refuse("use_beam_search", "beam search is not supported")
    if req.truncate_prompt_tokens is not None:
        raise refuse("truncate_prompt_tokens", "is not supported")
    if req.stream and req.prompt_logprobs is not None:
        raise refuse("prompt_logprobs", "is not available when stream is true")
    _refuse_given(req, _GENERATION_EXTRAS)
    _check_best_of(req)


def _check_best_of(req: _GenerationRequest) -> None:
    n = 1 if req.n is None else req.n
    if req.best_of is not None:
        if req.best_of < n:
            raise refuse("best_of", f"must be >= n ({n}), got {req.best_of}")
        if req.best_of > n:
            raise refuse("best_of", "best_of > n is not supported")


def check_completion(req: CompletionRequest) -> None:
    check_generation(req)
    if req.suffix:
        raise refuse("suffix", "is not supported")
    if req.prompt_embeds is not None:
        raise refuse("prompt_embeds", "prompt embeddings are not supported")
    if req.prompt is None:
        raise refuse("prompt", "is required")


def check_chat(req: ChatCompletionRequest) -> None:
    check_generation(req)
    if _given(req.functions) or req.function_call not in (None, "none"):
        raise refuse("functions", "function calling is not supported")
    if req.audio is not None:
        raise refuse("audio", "audio output is not supported")
    if req.modalities not in (None, [], ["text"]):
        raise refuse("modalities", "only text output is supported")
    if req.prediction is not None:
        raise refuse("prediction", "predicted outputs are not supported")
    _refuse_given(req, _CHAT_EXTRAS)


def check_request_template(template: str | None, options: ServiceOptions) -> None:
    """A request's own `chat_template` needs the service's trust, as vLLM's
    `--trust-request-chat-template` gives it."""
    if template is not None and not options.trust_request_chat_template:
        raise refuse(
            "chat_template",
            "per-request chat templates are not allowed on this server "
            "(start it with --trust-request-chat-template)",
        )


def check_tokenize(req: TokenizeRequest) -> None:
    if _given(req.mm_processor_kwargs):
        raise refuse("mm_processor_kwargs", "only text is served (no multimodal processor)")


def check_pooling(req: _PoolingRequest) -> None:
    """The checks shared by /v1/embeddings, /pooling, /score and /rerank."""
    _refuse_given(req, _POOLING_EXTRAS)
    if req.padding not in (None, "do_not_pad"):
        raise refuse("padding", 'only "do_not_pad" is supported')


def check_embedding(req: EmbeddingRequest) -> None:
    check_pooling(req)
    if req.messages is not None:
        raise refuse("messages", "embeddings of a conversation are not supported; give input")
    for name in _CHAT_EMBEDDING:
        if getattr(req, name) is not None:
            raise refuse(name, "applies to messages, which are not supported")
    if _given(req.chat_template_kwargs):
        raise refuse("chat_template_kwargs", "applies to messages, which are not supported")
    if req.input is None:
        raise refuse("input", "is required")


def check_pooling_request(req: PoolingRequest) -> None:
    if req.data is not None:
        raise refuse("data", "IO processor plugins are not supported")
    check_embedding(req)
    if req.task not in (None, "embed"):
        raise refuse("task", f'only "embed" is supported here, not {req.task!r}')


def check_score_format(encoding_format: str | None) -> None:
    """/score and /rerank answer numbers: only the "float" format."""
    if encoding_format not in (None, "float"):
        raise refuse("encoding_format", 'scores are numbers: only "float" is supported')


def _refuse_given(req: Any, extras: dict[str, str]) -> None:
    for name, why in extras.items():
        if _given(getattr(req, name)):
            raise refuse(name, why)


def _given(value: Any) -> bool:
    return value is not None and value != [] and value != {}
