"""Chat templates: finding a model's template, and rendering conversations with it.

`ChatTemplate.render` is byte-identical to `transformers`' `apply_chat_template(...,
tokenize=False)` for the same template, messages and variables: the same sandboxed
jinja2 environment (trim_blocks, lstrip_blocks, loop controls, `{% generation %}`,
HF's `tojson`, `raise_exception`, `strftime_now`, `dict`, `namespace`), the same
message normalisation and the same `continue_final_message` cut. The one step of our
own comes first: message content is shaped into what the template reads (a string,
or OpenAI content parts; see `content_format` and `_shape_content`), and it never
changes a conversation transformers renders well. Every failure of a template, at
compile or render time, leaves as `ChatTemplateError`; a template compiles once per
process however many `ChatTemplate` objects share its text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from functools import cache, lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias, get_args

import jinja2
import jinja2.ext
import jinja2.nodes as nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmcore.errors import ChatTemplateError, CorruptModelFileError, NoChatTemplateError

ContentFormat: TypeAlias = Literal["string", "openai"]
ContentFormatOption: TypeAlias = Literal["auto", "string", "openai"]
Message: TypeAlias = Mapping[str, Any]

# transformers appends this to the final message, renders, and cuts the output there.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
# Names a message's reasoning travels under; transformers fills the first two from any.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# A template text needs at least one of these; a path never has them.
_TEMPLATE_CHARS = ("{", "}", "\n")


# ---- the jinja2 environment (HF's semantics) ---------------------------------------------


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`, HF's assistant-mask marker.

    The body is rendered as-is, inside a call block as HF does (so it scopes `set`
    the same way); we never compute assistant masks."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's declared attribute type)

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: Any) -> None:
    raise ChatTemplateError(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """HF's `tojson`: no HTML escaping, and json.dumps' layout options."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """`dict` for templates: builds dicts, exposes no type internals."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _check_namespace_name(name: object) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}"
        )


class _Namespace(jinja2.utils.Namespace):
    """`namespace` for templates: refuses dunder (and any `_`) attributes."""

    # jinja2's own signature trick: no named `self`, so `namespace(self=1)` works.
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_TemplateDict(),
        namespace=_Namespace,
    )
    return env


@lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template for `source`, compiled once per process (an LRU cache)."""
    try:
        return _environment().from_string(source)
    except jinja2.TemplateError as exc:
        line = f" at line {exc.lineno}" if isinstance(exc, jinja2.TemplateSyntaxError) else ""
        raise ChatTemplateError(f"chat template does not compile{line}: {exc}") from exc


# ---- content format detection (the idea of vLLM's `_detect_content_format`) ------------


def _is_item(node: nodes.Node, var: str, key: str | None) -> bool:
    """`var`, or `var[key]` / `var.key` when `key` is given."""
    if key is None:
        return isinstance(node, nodes.Name) and node.name == var
    if isinstance(node, nodes.Getitem):
        is_key = isinstance(node.arg, nodes.Const) and node.arg.value == key
        return is_key and _is_item(node.node, var, None)
    if isinstance(node, nodes.Getattr):
        return node.attr == key and _is_item(node.node, var, None)
    return False


def _refers_to(node: nodes.Node, var: str, key: str | None = None) -> bool:
    """`_is_item`, seen through slices (`messages[1:]`), filters and tests."""
    if isinstance(node, nodes.Filter | nodes.Test):
        return node.node is not None and _refers_to(node.node, var, key)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
        return _refers_to(node.node, var, key)
    return _is_item(node, var, key)


def _aliases(root: nodes.Template, var: str) -> set[str]:
    """`var` and every name `{% set %}` to it (`loop_messages = messages[1:]`), transitively."""
    names = {var}
    grew = True
    while grew:
        grew = False
        for assign in root.find_all(nodes.Assign):
            target = assign.target
            if isinstance(target, nodes.Name) and target.name not in names:
                if any(_refers_to(assign.node, name) for name in names):
                    names.add(target.name)
                    grew = True
    return names


def _loop_targets(root: nodes.Template, var: str, key: str | None = None) -> Iterator[str]:
    """The loop variables of `{% for x in var %}` (or `in var[key]`)."""
    for loop in root.find_all(nodes.For):
        if isinstance(loop.target, nodes.Name) and _refers_to(loop.iter, var, key):
            yield loop.target.name


def _tests_for_string(root: nodes.Template, var: str) -> bool:
    """Whether the template asks `var.content is string` (so it takes plain strings)."""
    return any(
        test.name == "string" and _is_item(test.node, var, "content")
        for test in root.find_all(nodes.Test)
    )


@lru_cache(maxsize=64)
def _content_use(source: str) -> tuple[bool, bool]:
    """(loops over a message's content, tests a message's content for `string`)."""
    root = _environment().parse(source)
    message_vars = {
        target for alias in _aliases(root, "messages") for target in _loop_targets(root, alias)
    }
    loops = any(any(True for _ in _loop_targets(root, var, "content")) for var in message_vars)
    return loops, any(_tests_for_string(root, var) for var in message_vars)


def detect_content_format(source: str) -> ContentFormat:
    """`"openai"` if the template loops over a message's `content`, else `"string"`."""
    return "openai" if _content_use(source)[0] else "string"


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


def _shape_content(content: Any, role: Any, fmt: ContentFormat, wrap_strings: bool) -> Any:
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


def _prepare_message(message: Any, fmt: ContentFormat, wrap_strings: bool) -> dict[str, Any]:
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


def _checked_objects(items: Sequence[Any] | None, what: str) -> Any:
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
        self._wrap_strings = self.content_format == "openai" and not _content_use(source)[1]

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
        if override is not None:
            source: str | None = _read_override(override)
        else:
            source = _from_model_folder(model_path, name)
            if source is None:
                source = gguf_template
        return None if source is None else cls(source, content_format=content_format)


def require_template(template: ChatTemplate | None) -> ChatTemplate:
    """`template`, or NoChatTemplateError (400) when the model has none."""
    if template is None:
        raise NoChatTemplateError("this model has no chat template; pass --chat-template")
    return template


# ---- finding a template ------------------------------------------------------------------


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for a path, or one with a NUL
        return False


def _read_override(override: str) -> str:
    if _is_file(override):
        try:
            return Path(override).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ChatTemplateError(f"cannot read chat template file {override}: {exc}") from exc
    if not any(char in override for char in _TEMPLATE_CHARS):
        raise ChatTemplateError(
            f"chat template {override!r} is not a file, nor template text (no '{{', '}}' or "
            "newline in it)"
        )
    return override


def _read_model_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptModelFileError(f"{path}: cannot be read as UTF-8 text: {exc}") from exc


def _from_model_folder(model_path: str | os.PathLike[str] | None, name: str | None) -> str | None:
    if model_path is None or not Path(model_path).is_dir():
        return None
    folder = Path(model_path)
    candidates = [folder / "chat_template.jinja"]
    if name is not None and Path(name).name == name:  # a plain name, never a path
        candidates.insert(0, folder / "additional_chat_templates" / f"{name}.jinja")
    for candidate in candidates:
        if candidate.is_file():
            return _read_model_file(candidate)
    config = folder / "tokenizer_config.json"
    return _from_tokenizer_config(config, name) if config.is_file() else None


def _from_tokenizer_config(path: Path, name: str | None) -> str | None:
    try:
        config = json.loads(_read_model_file(path))
    except json.JSONDecodeError as exc:
        raise CorruptModelFileError(f"{path}: not valid JSON: {exc}") from exc
    value = config.get("chat_template") if isinstance(config, dict) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return _pick_named(_named_templates(value, path), name)
    raise CorruptModelFileError(f"{path}: chat_template must be a string or a list")


def _named_templates(entries: list[Any], path: Path) -> dict[str, str]:
    named = {}
    for entry in entries:
        ok = isinstance(entry, dict) and isinstance(entry.get("name"), str)
        if not ok or not isinstance(entry.get("template"), str):
            raise CorruptModelFileError(
                f"{path}: each chat_template entry must be {{'name': str, 'template': str}}"
            )
        named[entry["name"]] = entry["template"]
    return named


def _pick_named(templates: dict[str, str], name: str | None) -> str | None:
    for wanted in (name, "default"):
        if wanted is not None and wanted in templates:
            return templates[wanted]
    return next(iter(templates.values()), None)
