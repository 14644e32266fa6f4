"""`ChatTemplate`: one template, rendering a conversation of plain messages (dicts)
into prompt text; `ChatTemplate.resolve` finds a model's own template.

`ChatTemplate.render` is byte-identical to `transformers`' `apply_chat_template(...,
tokenize=False)` for the same template, messages and variables: the same sandboxed
jinja2 environment (see `environment`), the same message normalisation and the same
`continue_final_message` cut. The one step of our own comes first: message content is
shaped into what the template reads (a string, or OpenAI content parts; see
`content_format` and `_shape_content`), and it never changes a conversation
transformers renders well. Every failure of a template, at compile or render time,
leaves as `ChatTemplateError`; a template compiles once per process however many
`ChatTemplate` objects share its text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeAlias, get_args

import jinja2
import jinja2.ext
import jinja2.utils

from llmcore.chat_template.content_format import (
    ContentFormat,
    accepts_string_content,
    detect_content_format,
)
from llmcore.chat_template.environment import compile_template
from llmcore.chat_template.source import find_template_source
from llmcore.errors import ChatTemplateError, NoChatTemplateError

ContentFormatOption: TypeAlias = Literal["auto", "string", "openai"]
Message: TypeAlias = Mapping[str, Any]

# transformers appends this to the final message, renders, and cuts the output there.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
# Names a message's reasoning travels under; transformers fills the first two from any.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


# ---- preparing the template's inputs -----------------------------------------------------


def _plain(value: Any) -> Any:
    """A fresh copy made of plain JSON types, as transformers gives its templates.

    Subclasses of scalars lose their methods; unknown objects become "<TypeName>"."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return f"<{type(value).__name__}>"


def _joined_text(parts: Sequence[Any]) -> str:
    """Text parts joined with newlines; any other part is refused."""
    texts = []
    for part in parts:
        kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
        if kind != "text" or not isinstance(part.get("text"), str):
            raise ChatTemplateError(
                f"this model's chat template takes text content only; "
                f"a content part of type {kind!r} cannot be rendered"
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _only_text(parts: Sequence[Any]) -> bool:
    return all(isinstance(part, Mapping) and part.get("type") == "text" for part in parts)


def _shape_content(content: object, role: object, fmt: ContentFormat, wrap_strings: bool) -> object:
    """Content as the template reads it. "string": parts become their joined text.
    "openai": parts stay parts, and a string becomes one text part unless the template
    itself handles strings (`content is string`), so that what transformers renders
    well is never changed. Tool results become strings in both formats unless they
    carry non-text parts (as vLLM does: templates print them whole)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if wrap_strings and role != "tool" else content
    if isinstance(content, list | tuple):
        if fmt == "string" or (role == "tool" and _only_text(content)):
            return _joined_text(content)
    return content


def _prepare_message(message: object, fmt: ContentFormat, wrap_strings: bool) -> dict[str, Any]:
    """One message as transformers hands it to the template: None-valued keys dropped,
    plain data, content shaped, and reasoning filled in under all its names."""
    if not isinstance(message, Mapping):
        raise ChatTemplateError(
            f"each chat message must be an object, not {type(message).__name__}"
        )
    out = {key: _plain(value) for key, value in message.items() if value is not None}
    if "content" in out:
        out["content"] = _shape_content(out["content"], out.get("role"), fmt, wrap_strings)
    reasoning = next((out[key] for key in _REASONING_FIELDS if key in out), None)
    if reasoning is not None:
        out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
    return out


def _checked_objects(items: Sequence[object] | None, what: str) -> list[Any] | None:
    if items is None:
        return None
    for item in items:
        if not isinstance(item, Mapping):
            raise ChatTemplateError(
                f"each of {what} must be a JSON object, not {type(item).__name__}"
            )
    return _plain(list(items))


# ---- continue_final_message (transformers' tag-and-cut) ---------------------------------


def _tag_final_message(message: dict[str, Any], source: str) -> str:
    """Append the tag to the final message's (last) text; return that text untagged."""
    content = message.get("content")
    if content is None:
        raise ChatTemplateError(
            "continue_final_message is set but the final message has no content to continue"
        )
    if "content" not in source:
        raise ChatTemplateError(
            "continue_final_message is set but this chat template never reads message content"
        )
    if isinstance(content, str):
        message["content"] = content + _CONTINUE_TAG
        return content
    for part in reversed(content if isinstance(content, list | tuple) else ()):
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            text: str = part["text"]
            part["text"] = text + _CONTINUE_TAG
            return text
    raise ChatTemplateError(
        "continue_final_message is set but the final message has no text to continue"
    )


def _cut_at_tag(rendered: str, final_text: str) -> str:
    """The rendering up to where the final message's text ends."""
    tag = _CONTINUE_TAG.strip()
    if final_text.strip() not in rendered or tag not in rendered:
        raise ChatTemplateError(
            "continue_final_message is set but the final message does not appear in the "
            "rendered chat: this chat template changes or drops it"
        )
    end = rendered.rindex(tag)
    if rendered.startswith(_CONTINUE_TAG, end):
        return rendered[:end]
    return rendered[:end].rstrip()  # the template trimmed the message: trim the same way


# ---- rendering ---------------------------------------------------------------------------


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line a render error came from (jinja2 rewrites tracebacks so)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _render(template: jinja2.Template, context: dict[str, Any]) -> str:
    try:
        return template.render(context)
    except ChatTemplateError:
        raise  # raise_exception(): the template's own message
    except Exception as exc:  # anything else the template did wrong, incl. Python errors
        line = _template_line(exc.__traceback__)
        where = f" at line {line}" if line is not None else ""
        kind = "" if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: "
        raise ChatTemplateError(f"chat template failed{where}: {kind}{exc}") from exc


class ChatTemplate:
    """One chat template: `render(messages, ...)` turns a conversation into a prompt.

    `content_format` is how the template wants message content: "string" (content
    parts are joined into their text) or "openai" (parts are passed as parts)."""

    __slots__ = ("_template", "_wrap_strings", "content_format", "source")

    def __init__(self, source: str, *, content_format: ContentFormatOption = "auto") -> None:
        if content_format not in get_args(ContentFormatOption):
            raise ChatTemplateError(
                f"content_format must be 'auto', 'string' or 'openai', not {content_format!r}"
            )
        self.source = source
        self._template = compile_template(source)
        self.content_format: ContentFormat = (
            detect_content_format(source) if content_format == "auto" else content_format
        )
        self._wrap_strings = self.content_format == "openai" and not accepts_string_content(source)

    def __repr__(self) -> str:
        return f"ChatTemplate(<{len(self.source)} chars>, content_format={self.content_format!r})"

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **variables: Any,
    ) -> str:
        """The prompt text, as `apply_chat_template(..., tokenize=False)` makes it.

        `variables` reach the template as they are (bos_token, chat_template_kwargs...).
        Raises ChatTemplateError if the template refuses or fails to render."""
        if not messages:
            raise ChatTemplateError("cannot render an empty conversation")
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError(
                "continue_final_message and add_generation_prompt cannot both be set"
            )
        chat = [
            _prepare_message(message, self.content_format, self._wrap_strings)
            for message in messages
        ]
        context = {
            **_plain(variables),
            "messages": chat,
            "tools": _checked_objects(tools, "tools"),
            "documents": _checked_objects(documents, "documents"),
            "add_generation_prompt": add_generation_prompt,
        }
        if not continue_final_message:
            return _render(self._template, context)
        final_text = _tag_final_message(chat[-1], self.source)
        return _cut_at_tag(_render(self._template, context), final_text)

    @classmethod
    def resolve(
        cls,
        model_path: str | os.PathLike[str] | None,
        override: str | None = None,
        name: str | None = None,
        gguf_template: str | None = None,
        *,
        content_format: ContentFormatOption = "auto",
    ) -> ChatTemplate | None:
        """The model's chat template, or None if it has none. First found wins:

        1. `override` (--chat-template): a file if it names one, else template text;
        2. `chat_template.jinja` in the model folder (`additional_chat_templates/
           NAME.jinja` first when `name` is given);
        3. `tokenizer_config.json`'s `chat_template`: a string, or a list of
           {"name", "template"} from which `name` is taken, else "default", else the first;
        4. `gguf_template`: the GGUF key `tokenizer.chat_template`, read by the caller
           (`GGUFFile(path).metadata.get("tokenizer.chat_template")`).

        An override that is neither an existing file nor text with `{`, `}` or a
        newline (a mistyped path) is refused with ChatTemplateError.
        """
        source = find_template_source(model_path, override, name, gguf_template)
        return None if source is None else cls(source, content_format=content_format)


def require_template(template: ChatTemplate | None) -> ChatTemplate:
    """`template`, or NoChatTemplateError (400) when the model has none."""
    if template is None:
        raise NoChatTemplateError("this model has no chat template; pass --chat-template")
    return template
