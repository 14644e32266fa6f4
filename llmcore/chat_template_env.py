"""The jinja2 environment of chat templates, with Hugging Face's semantics, and the
detection of the content format a template expects.

Invariant: a template text compiles once per process (`compile_template` is an LRU
cache keyed on the text); a compile failure leaves as `ChatTemplateError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from functools import cache, lru_cache
from typing import Any, Literal, TypeAlias

import jinja2
import jinja2.ext
import jinja2.nodes as nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmcore.errors import ChatTemplateError

ContentFormat: TypeAlias = Literal["string", "openai"]

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


def accepts_string_content(source: str) -> bool:
    """Whether the template checks for string content (so a string needs no wrapping)."""
    return _content_use(source)[1]


def detect_content_format(source: str) -> ContentFormat:
    """`"openai"` if the template loops over a message's `content`, else `"string"`."""
    return "openai" if _content_use(source)[0] else "string"
