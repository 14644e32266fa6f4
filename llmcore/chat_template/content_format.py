"""Which content format a chat template expects, read from its syntax tree (the idea
of vLLM's `_detect_content_format`): "openai" when it loops over a message's
`content` (a list of parts), else "string"; and whether it tests `content is string`
itself, so that a plain string needs no wrapping into a text part.

Invariant: only the template's syntax is read, never rendered; each text is analysed
once per process (an LRU cache keyed on the text).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Literal, TypeAlias

import jinja2.nodes as nodes

from llmcore.chat_template.environment import parse_template

ContentFormat: TypeAlias = Literal["string", "openai"]


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
    root = parse_template(source)
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
