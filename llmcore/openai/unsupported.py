"""Request fields that would change behaviour but are not supported: each is refused
with a 400 naming it, never silently dropped.

Invariant: a request passing these checks asks only for what the service does.
"""

from __future__ import annotations

from typing import Any

from llmcore.errors import InvalidRequestError
from llmcore.openai.protocol import ChatCompletionRequest, CompletionRequest
from llmcore.openai.protocol.requests import _GenerationRequest


def refuse(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


def check_generation(req: _GenerationRequest) -> None:
    """The checks shared by completions and chat completions."""
    if req.stream_options is not None and not req.stream:
        raise refuse("stream_options", "can only be set when stream is true")
    if req.use_beam_search:
        raise refuse("use_beam_search", "beam search is not supported")
    if req.return_tokens_as_token_ids:
        raise refuse("return_tokens_as_token_ids", "is not supported")
    if req.truncate_prompt_tokens is not None:
        raise refuse("truncate_prompt_tokens", "is not supported")
    if req.stream and req.prompt_logprobs is not None:
        raise refuse("prompt_logprobs", "is not available when stream is true")


def check_completion(req: CompletionRequest) -> None:
    check_generation(req)
    if req.suffix:
        raise refuse("suffix", "is not supported")
    n = 1 if req.n is None else req.n
    if req.best_of is not None:
        if req.best_of < n:
            raise refuse("best_of", f"must be >= n ({n}), got {req.best_of}")
        if req.best_of > n:
            raise refuse("best_of", "best_of > n is not supported")


def check_chat(req: ChatCompletionRequest) -> None:
    check_generation(req)
    tools = bool(req.tools)
    if req.tool_choice is not None and req.tool_choice != "none":
        raise refuse("tool_choice", "tool calling is not supported yet")
    if tools and req.tool_choice is None:  # OpenAI's default with tools is "auto"
        raise refuse("tools", 'tool calling is not supported yet (tool_choice "none" only)')
    if tools and req.parallel_tool_calls:
        raise refuse("parallel_tool_calls", "tool calling is not supported yet")
    if _given(req.functions) or req.function_call not in (None, "none"):
        raise refuse("functions", "function calling is not supported")
    if req.audio is not None:
        raise refuse("audio", "audio output is not supported")
    if req.modalities not in (None, [], ["text"]):
        raise refuse("modalities", "only text output is supported")
    if req.prediction is not None:
        raise refuse("prediction", "predicted outputs are not supported")
    if req.chat_template is not None:
        raise refuse("chat_template", "per-request chat templates are not supported")


def _given(value: Any) -> bool:
    return value is not None and value != [] and value != {}
