"""An Anthropic Messages request as the chat completion request that serves it.

Invariant: the translation only renames: the conversation, tools and sampling
parameters become the chat request a client would send for the same thing, so the
one chat pipeline renders, validates and generates both alike (the same
conversation gives the same prompt and, greedy, the same text). What chat cannot
express is refused here with a 400 naming the field (image and document blocks,
server tools, MCP servers, containers), never dropped.

- `system` (text or text blocks) is the first, system message.
- A user turn's `tool_result` blocks are tool messages (in order, before the
  turn's text), an assistant turn's `tool_use` blocks its tool calls and its
  `thinking` blocks its reasoning; text blocks are text parts.
- A final assistant turn is a prefill: it is continued (`continue_final_message`).
- `tool_choice`: auto -> "auto", any -> "required", tool -> that function, none
  -> "none"; `disable_parallel_tool_use` -> `parallel_tool_calls: false`; tools
  without a choice are "auto", as Anthropic's default (which, as in vLLM, needs
  `--enable-auto-tool-choice`).
- `thinking` -> `chat_template_kwargs.enable_thinking`: true for "enabled" and
  "adaptive", false for "disabled".
"""

from __future__ import annotations

import json
from typing import Any

from llmcore.anthropic.requests import (
    BlockIn,
    CountTokensRequest,
    DocumentBlockIn,
    ImageBlockIn,
    MessageIn,
    MessagesRequest,
    TextBlockIn,
    ThinkingBlockIn,
    ToolChoiceIn,
    ToolIn,
    ToolResultBlockIn,
    ToolUseBlockIn,
)
from llmcore.errors import InvalidRequestError
from llmcore.openai.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatMessage,
    Content,
    ContentPart,
    FunctionCall,
    StreamOptions,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from llmcore.openai.protocol.requests import JsonSchemaFormat, ResponseFormat

# The prefix of an is_error tool result's text: chat's tool messages have no flag.
TOOL_ERROR_PREFIX = "Error: "


def chat_request(req: MessagesRequest) -> ChatCompletionRequest:
    """The chat completion request that answers `req` (streamed with usage on every
    chunk when `req` streams: message_start needs the prompt's size)."""
    _refuse_extras(req)
    chat = _conversation(req)
    chat.max_tokens = req.max_tokens
    chat.stop = req.stop_sequences
    chat.temperature = req.temperature
    chat.top_p = req.top_p
    chat.top_k = req.top_k
    if req.stream:
        chat.stream = True
        chat.stream_options = StreamOptions(include_usage=True, continuous_usage_stats=True)
    if req.output_config is not None:
        _output_config(req, chat)
    return chat


def count_request(req: CountTokensRequest) -> ChatCompletionRequest:
    """The chat request whose prompt count_tokens counts."""
    _refuse_extras(req)
    return _conversation(req)


def _conversation(req: MessagesRequest | CountTokensRequest) -> ChatCompletionRequest:
    messages: list[ChatMessage] = []
    if req.system is not None and req.system != "" and req.system != []:
        system = [TextBlockIn(req.system)] if isinstance(req.system, str) else req.system
        messages.append(SystemMessage(content=_content([TextPart(b.text) for b in system])))
    for i, message in enumerate(req.messages):
        messages.extend(_messages(message, f"messages[{i}]"))
    if not messages:
        raise InvalidRequestError("messages: at least one message is required", param="messages")
    prefill = bool(req.messages) and req.messages[-1].role == "assistant"
    chat = ChatCompletionRequest(
        model=req.model,
        messages=messages,
        continue_final_message=prefill or None,
        add_generation_prompt=False if prefill else None,
    )
    if req.tools:
        chat.tools = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(req.tools)]
    chat.tool_choice, chat.parallel_tool_calls = _tool_choice(req.tool_choice)
    if req.thinking is not None:
        chat.chat_template_kwargs = {"enable_thinking": req.thinking.type != "disabled"}
    return chat


def _refuse_extras(req: MessagesRequest | CountTokensRequest) -> None:
    if req.mcp_servers:
        raise _refuse("mcp_servers", "MCP servers are not supported")
    if isinstance(req, MessagesRequest) and req.container is not None:
        raise _refuse("container", "containers (code execution) are not supported")


def _messages(message: MessageIn, where: str) -> list[ChatMessage]:
    if isinstance(message.content, str):
        if message.role == "user":
            return [UserMessage(content=message.content)]
        return [AssistantMessage(content=message.content)]
    if message.role == "user":
        return _user_turn(message.content, where)
    return [_assistant_turn(message.content, where)]


def _user_turn(blocks: list[BlockIn], where: str) -> list[ChatMessage]:
    """Tool results as tool messages, then the turn's text (if any) as one user message."""
    out: list[ChatMessage] = []
    parts: list[TextPart] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        if isinstance(block, ToolResultBlockIn):
            out.append(_tool_result(block, at))
        elif isinstance(block, TextBlockIn):
            parts.append(TextPart(text=block.text))
        else:
            raise _unsupported_block(block, at, "user")
    if parts or not out:
        out.append(UserMessage(content=_content(parts)))
    return out


def _assistant_turn(blocks: list[BlockIn], where: str) -> AssistantMessage:
    parts: list[TextPart] = []
    calls: list[ToolCall] = []
    reasoning: list[str] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        if isinstance(block, TextBlockIn):
            parts.append(TextPart(text=block.text))
        elif isinstance(block, ToolUseBlockIn):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(ToolCall(id=block.id, function=FunctionCall(block.name, arguments)))
        elif isinstance(block, ThinkingBlockIn):
            reasoning.append(block.thinking)
        elif block.__struct_config__.tag != "redacted_thinking":
            raise _unsupported_block(block, at, "assistant")
    return AssistantMessage(
        content=_content(parts) if parts else None,
        tool_calls=calls or None,
        reasoning_content="".join(reasoning) or None,
    )


def _tool_result(block: ToolResultBlockIn, where: str) -> ToolMessage:
    text = ""
    if isinstance(block.content, str):
        text = block.content
    elif block.content is not None:
        texts = []
        for k, item in enumerate(block.content):
            if not isinstance(item, TextBlockIn):
                raise _unsupported_block(item, f"{where}.content[{k}]", "tool_result")
            texts.append(item.text)
        text = "\n".join(texts)
    if block.is_error:
        text = TOOL_ERROR_PREFIX + text
    return ToolMessage(content=text, tool_call_id=block.tool_use_id)


def _content(parts: list[TextPart]) -> Content:
    """One text part as a string (as a chat client would send it), else the parts."""
    if len(parts) == 1:
        return parts[0].text
    content: list[ContentPart] = list(parts)
    return content


def _unsupported_block(block: BlockIn, where: str, turn: str) -> InvalidRequestError:
    kind = block.__struct_config__.tag
    if isinstance(block, ImageBlockIn | DocumentBlockIn):
        reason = f"{kind} blocks are not supported: only text is served"
    else:
        reason = f"a {kind} block cannot appear in a {turn} turn"
    return InvalidRequestError(f"{where}: {reason}", param="messages")


def _tool(tool: ToolIn, where: str) -> dict[str, Any]:
    if tool.type not in (None, "custom"):
        raise _refuse("tools", f"{where}: server tools ({tool.type!r}) are not supported")
    if tool.input_schema is None:
        raise _refuse("tools", f"{where}: input_schema is required")
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(
    choice: ToolChoiceIn | None,
) -> tuple[str | dict[str, Any] | None, bool | None]:
    """(chat's tool_choice, parallel_tool_calls); None: chat's default ("auto" with
    tools, else "none")."""
    if choice is None:
        return None, None
    parallel = False if choice.disable_parallel_tool_use else None
    if choice.type == "tool":
        if not choice.name:
            raise _refuse("tool_choice", '{"type": "tool"} needs the tool\'s name')
        return {"type": "function", "function": {"name": choice.name}}, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel


def _output_config(req: MessagesRequest, chat: ChatCompletionRequest) -> None:
    config = req.output_config
    assert config is not None
    if config.format is not None:
        if config.format.type != "json_schema" or config.format.schema_ is None:
            raise _refuse("output_config", 'format must be {"type": "json_schema", "schema"}')
        chat.response_format = ResponseFormat(
            type="json_schema",
            json_schema=JsonSchemaFormat(name="output", schema_=config.format.schema_),
        )
    if config.effort is not None:
        chat.reasoning_effort = config.effort


def _refuse(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)
