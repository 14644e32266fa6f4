"""Chat messages on the wire: a tagged union on `role`, content a string or a list of
parts tagged on `type`.

Invariant: every shape OpenAI's API accepts for a message decodes here (unknown
fields are tolerated); whether the service can *use* it (only text parts can be
rendered today) is decided by the service, which answers 400 naming the part.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec


class _Part(msgspec.Struct, tag_field="type", omit_defaults=True, forbid_unknown_fields=False):
    pass


class TextPart(_Part, tag="text"):
    text: str


class ImageURL(msgspec.Struct, omit_defaults=True):
    url: str
    detail: str | None = None


class ImageURLPart(_Part, tag="image_url"):
    image_url: ImageURL


class InputAudioPart(_Part, tag="input_audio"):
    input_audio: dict[str, Any]


class FilePart(_Part, tag="file"):
    file: dict[str, Any]


class RefusalPart(_Part, tag="refusal"):
    refusal: str


ContentPart: TypeAlias = TextPart | ImageURLPart | InputAudioPart | FilePart | RefusalPart
Content: TypeAlias = str | list[ContentPart]


class FunctionCall(msgspec.Struct, omit_defaults=True):
    name: str
    arguments: str


class ToolCall(msgspec.Struct):
    id: str
    function: FunctionCall
    type: str = "function"


class _Message(msgspec.Struct, tag_field="role", omit_defaults=True, forbid_unknown_fields=False):
    pass


class SystemMessage(_Message, tag="system"):
    content: Content
    name: str | None = None


class DeveloperMessage(_Message, tag="developer"):
    content: Content
    name: str | None = None


class UserMessage(_Message, tag="user"):
    content: Content
    name: str | None = None


class AssistantMessage(_Message, tag="assistant"):
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    reasoning_content: str | None = None


class ToolMessage(_Message, tag="tool"):
    content: Content
    tool_call_id: str | None = None


ChatMessage: TypeAlias = (
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage
)

ROLE_OF: dict[type[_Message], str] = {
    SystemMessage: "system",
    DeveloperMessage: "developer",
    UserMessage: "user",
    AssistantMessage: "assistant",
    ToolMessage: "tool",
}
