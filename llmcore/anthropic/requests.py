"""Request bodies of Anthropic's Messages API (POST /v1/messages and
/v1/messages/count_tokens): msgspec Structs and one decoder per type.

Invariant: every shape Anthropic documents for these fields decodes (unknown
fields are tolerated, as on the OpenAI routes); what the service cannot do with a
shape that decodes (image and document blocks, server tools, MCP servers) is
refused by `llmcore.anthropic.translate` with a 400 naming it, never dropped. A
missing `max_tokens`, a role other than "user"/"assistant" or an unknown block type
is a decode error (a 400 naming the field's path).
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec

from llmcore.openai.protocol import RequestDecoder


class _Block(msgspec.Struct, tag_field="type", forbid_unknown_fields=False):
    pass


class TextBlockIn(_Block, tag="text"):
    text: str
    cache_control: dict[str, Any] | None = None  # accepted; the prefix cache is automatic
    citations: Any = None


class ImageBlockIn(_Block, tag="image"):
    source: dict[str, Any]  # refused: only text is served


class DocumentBlockIn(_Block, tag="document"):
    source: dict[str, Any]  # refused: only text is served


class ToolUseBlockIn(_Block, tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlockIn(_Block, tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlockIn | ImageBlockIn | DocumentBlockIn] | None = None
    is_error: bool | None = None


class ThinkingBlockIn(_Block, tag="thinking"):
    thinking: str
    signature: str | None = None


class RedactedThinkingBlockIn(_Block, tag="redacted_thinking"):
    data: str  # opaque: dropped, as Anthropic's own models see nothing of it either


BlockIn: TypeAlias = (
    TextBlockIn
    | ImageBlockIn
    | DocumentBlockIn
    | ToolUseBlockIn
    | ToolResultBlockIn
    | ThinkingBlockIn
    | RedactedThinkingBlockIn
)


class MessageIn(msgspec.Struct, forbid_unknown_fields=False):
    role: Literal["user", "assistant"]
    content: str | list[BlockIn]


class ToolIn(msgspec.Struct, forbid_unknown_fields=False):
    """A client tool; `type` is absent or "custom" (server tools are refused)."""

    name: str
    input_schema: dict[str, Any] | None = None  # required for client tools (checked)
    description: str | None = None
    type: str | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoiceIn(msgspec.Struct, forbid_unknown_fields=False):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None  # "tool": the tool to call
    disable_parallel_tool_use: bool | None = None


class ThinkingIn(msgspec.Struct, forbid_unknown_fields=False):
    type: Literal["enabled", "adaptive", "disabled"]  # adaptive: as enabled
    budget_tokens: int | None = None  # accepted, not enforced (see docs/server.md)


class OutputFormatIn(msgspec.Struct, forbid_unknown_fields=False):
    type: str  # "json_schema"
    schema_: dict[str, Any] | None = msgspec.field(default=None, name="schema")


class OutputConfigIn(msgspec.Struct, forbid_unknown_fields=False):
    format: OutputFormatIn | None = None
    effort: str | None = None


class _Conversation(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """What count_tokens and messages share: what is rendered into the prompt."""

    model: str | None = None  # Anthropic requires it; here None is the first served model
    messages: list[MessageIn]
    system: str | list[TextBlockIn] | None = None
    tools: list[ToolIn] | None = None
    tool_choice: ToolChoiceIn | None = None
    thinking: ThinkingIn | None = None
    mcp_servers: Any = None  # refused unless null or empty


class MessagesRequest(_Conversation, kw_only=True):
    max_tokens: int
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool | None = None
    metadata: dict[str, Any] | None = None  # accepted, no effect
    service_tier: str | None = None  # accepted, no effect
    output_config: OutputConfigIn | None = None
    container: Any = None  # refused unless null


class CountTokensRequest(_Conversation, kw_only=True):
    pass


MESSAGES_DECODER = RequestDecoder(MessagesRequest)
COUNT_TOKENS_DECODER = RequestDecoder(CountTokensRequest)
