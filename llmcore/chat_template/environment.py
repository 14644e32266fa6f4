"""The jinja2 environment chat templates run in, with Hugging Face's semantics:
sandboxed, `trim_blocks`, `lstrip_blocks`, loop controls, `{% generation %}`, HF's
`tojson`, `raise_exception`, `strftime_now`, and a `dict` and `namespace` that expose
no internals.

Invariant: a template text compiles once per process (`compile_template` is an LRU
cache keyed on the text); a compile failure leaves as `ChatTemplateError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from functools import cache, lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes as nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmcore.errors import ChatTemplateError


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`, HF's assistant-mask marker.

    The body is rendered as-is, inside a call block as HF does (so it scopes `set`
    the same way); we never compute assistant masks."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's declared attribute type)

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Callable[[], str]) -> str:
        return str(caller())


def _raise_exception(message: object) -> None:
    raise ChatTemplateError(str(message))


def _tojson(
    value: object,
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

    def __setitem__(self, name: str, value: object) -> None:
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


def parse_template(source: str) -> nodes.Template:
    """The template's syntax tree, parsed by the same environment (for inspection)."""
    return _environment().parse(source)
