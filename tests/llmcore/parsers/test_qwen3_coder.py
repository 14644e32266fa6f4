"""`qwen3_coder`: XML calls, values converted by the tool schema's types."""

from __future__ import annotations

import pytest

from plugins.tool_parsers.qwen3_coder import Qwen3CoderToolParser
from tests.llmcore.parsers.harness import check_tools

MARKERS = ("<tool_call>", "</tool_call>", "<function=", "<parameter=")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run",
            "parameters": {
                "type": "object",
                "properties": {
                    "cmd": {"type": "string"},
                    "n": {"type": "integer"},
                    "x": {"type": "number"},
                    "ok": {"type": "boolean"},
                    "opts": {"type": "object"},
                    "ids": {"type": "array"},
                },
            },
        },
    }
]


def make() -> Qwen3CoderToolParser:
    return Qwen3CoderToolParser(TOOLS)


def call(name: str, **params: str) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


WELL_FORMED = [
    pytest.param(call("run", cmd="ls -la"), [("run", {"cmd": "ls -la"})], None, id="single"),
    pytest.param(
        call("run", n="3", x="2.5", ok="True", opts='{"a": [1, {"b": null}]}', ids="[1, 2]"),
        [("run", {"n": 3, "x": 2.5, "ok": True, "opts": {"a": [1, {"b": None}]}, "ids": [1, 2]})],
        None,
        id="typed",
    ),
    pytest.param(
        call("run", n="many", x="4.0", cmd="null", other="7"),
        [("run", {"n": "many", "x": 4, "cmd": None, "other": "7"})],
        None,
        id="fallbacks-and-unknown",
    ),
    pytest.param(
        call("run", cmd='echo "hi" \\n ünï 日本\n  indented') + "\n" + call("run", cmd="pwd"),
        [("run", {"cmd": 'echo "hi" \\n ünï 日本\n  indented'}), ("run", {"cmd": "pwd"})],
        None,
        id="parallel-unicode-multiline",
    ),
    pytest.param(
        "I will run it.\n" + call("other", a="1") + "\nDone.",
        [("other", {"a": "1"})],
        "I will run it.\n\nDone.",
        id="text-around-untyped-tool",
    ),
    pytest.param(
        "<tool_call>\n<function=run>\n</function>\n</tool_call>",
        [("run", {})],
        None,
        id="no-parameters",
    ),
    pytest.param(
        "<tool_call>\n<function=run>\n<parameter=cmd>\nls\n<parameter=n>\n2\n</function>",
        [("run", {"cmd": "ls", "n": 2})],
        None,
        id="unclosed-parameters-and-call",
    ),
    pytest.param("<tool_call>x</tool_call>", [], "<tool_call>x</tool_call>", id="no-function"),
    pytest.param("<tool_call>\n<function=run", [], "<tool_call>\n<function=run", id="cut-name"),
]


@pytest.mark.parametrize(("text", "calls", "content"), WELL_FORMED)
def test_calls(text: str, calls: list, content: str | None) -> None:
    check_tools(make, text, calls, content, MARKERS if calls else ())


def test_parameters_stream_one_by_one() -> None:
    stream = make().stream()
    fragments = [
        d.arguments for c in call("run", cmd="a", n="1") for d in stream.feed(c).tool_calls
    ]
    assert fragments == ["{", '"cmd": "a"', ', "n": 1', "}"]
