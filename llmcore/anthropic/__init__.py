"""Anthropic's Messages API (POST /v1/messages, /v1/messages/count_tokens) on the
OpenAI service: wire types (`requests`, `responses`), the translation onto the chat
completions pipeline (`translate`), the answer and its stream reshaped
(`answer`, `stream`), and errors in Anthropic's shape (`errors`).

Invariant: nothing here generates: every message is a chat completion, so both
APIs give the same text for the same conversation.
"""

from __future__ import annotations

from llmcore.anthropic.errors import anthropic_error
from llmcore.anthropic.messages import count_tokens, create_message
from llmcore.anthropic.requests import (
    COUNT_TOKENS_DECODER,
    MESSAGES_DECODER,
    CountTokensRequest,
    MessagesRequest,
)
from llmcore.anthropic.responses import CountTokensResponse, ErrorEvent, Message, StreamEvent

__all__ = [
    "COUNT_TOKENS_DECODER",
    "MESSAGES_DECODER",
    "CountTokensRequest",
    "CountTokensResponse",
    "ErrorEvent",
    "Message",
    "MessagesRequest",
    "StreamEvent",
    "anthropic_error",
    "count_tokens",
    "create_message",
]
