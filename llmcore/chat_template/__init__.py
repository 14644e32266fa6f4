"""Chat templates: finding a model's template, and rendering conversations with it.

- `source`: where a model's template text comes from (`--chat-template`,
  `chat_template.jinja`, `tokenizer_config.json`, the GGUF key).
- `environment`: the sandboxed jinja2 environment with Hugging Face's semantics;
  each template text compiles once per process.
- `content_format`: whether a template reads message content as a string or as
  OpenAI content parts, read from its syntax tree.
- `template`: `ChatTemplate`, rendering plain messages byte-identically to
  transformers' `apply_chat_template(..., tokenize=False)`.
- `renderer`: `render_conversation`, the one place an OpenAI conversation (wire
  messages, tools, `chat_template_kwargs`, the tokenizer's BOS/EOS) becomes text.

Invariant: every failure of a template leaves as `ChatTemplateError`; a request the
renderer cannot honour is an `InvalidRequestError` naming the field.
"""

from __future__ import annotations

from llmcore.chat_template.content_format import (
    ContentFormat,
    accepts_string_content,
    detect_content_format,
)
from llmcore.chat_template.environment import compile_template
from llmcore.chat_template.renderer import SpecialTokens, message_dicts, render_conversation
from llmcore.chat_template.source import find_template_source
from llmcore.chat_template.template import (
    ChatTemplate,
    ContentFormatOption,
    Message,
    require_template,
)

__all__ = [
    "ChatTemplate",
    "ContentFormat",
    "ContentFormatOption",
    "Message",
    "SpecialTokens",
    "accepts_string_content",
    "compile_template",
    "detect_content_format",
    "find_template_source",
    "message_dicts",
    "render_conversation",
    "require_template",
]
