"""Tool calling end to end: a real `python -m llmcore.http` serving the embedded
SmolLM2-135M-Instruct (no tool parser: SmolLM2 was not trained to call tools, so
"required" and a named function, enforced by grammars, are what any model can do),
driven by the official `openai` client; then "auto" with the hermes parser through
an in-process service, and the same request bodies through a JSON-lines batch."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.server_process import run_openai, smollm2_server

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

pytestmark = pytest.mark.slow  # a server subprocess on SmolLM2

MODEL = "SmolLM2-135M-Instruct"
T = TypeVar("T")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ADD_MESSAGES = [{"role": "user", "content": "What is 2 plus 3?"}]
ASK = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with smollm2_server(smollm2_path, tmp_path_factory.mktemp("tools")) as srv:
        yield srv.url + "/v1"


def run(server: str, work: Callable[[Any], Awaitable[T]]) -> T:
    return run_openai(server, work)


def ask(client: Any, **kw: Any) -> Awaitable[Any]:
    kw.setdefault("messages", [{"role": "user", "content": ASK}])
    kw.setdefault("max_tokens", 300)
    return client.chat.completions.create(model=MODEL, tools=TOOLS, **kw)  # type: ignore[no-any-return]


def check_calls(calls: list[Any]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_and_named_calls_validate_greedy_and_sampled(server: str) -> None:
    named = {"type": "function", "function": {"name": "add"}}

    async def work(client: Any) -> list[Any]:
        return await asyncio.gather(
            ask(client, tool_choice="required", temperature=0),
            ask(client, tool_choice="required", temperature=1, seed=7, n=3),
            ask(client, tool_choice=named, temperature=0, messages=ADD_MESSAGES),
            ask(client, tool_choice=named, temperature=1, seed=8, n=3, messages=ADD_MESSAGES),
        )

    required, required_sampled, add, add_sampled = run(server, work)
    for choice in [*required.choices, *required_sampled.choices]:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        check_calls(choice.message.tool_calls)
    for choice in [*add.choices, *add_sampled.choices]:
        assert choice.finish_reason == "stop"  # a named function: OpenAI says stop
        (call,) = choice.message.tool_calls
        assert call.function.name == "add"
        check_calls([call])


def test_parallel_tool_calls_false_gives_one_call(server: str) -> None:
    async def work(client: Any) -> list[Any]:
        return await asyncio.gather(*(
            ask(client, tool_choice="required", parallel_tool_calls=False, temperature=1,
                seed=s)
            for s in range(4)
        ))  # fmt: skip

    for reply in run(server, work):
        calls = reply.choices[0].message.tool_calls
        assert calls is not None and len(calls) == 1, reply
        check_calls(calls)


def test_streamed_calls_equal_the_whole_answer(server: str) -> None:
    async def work(client: Any) -> tuple[Any, list[Any]]:
        whole = await ask(client, tool_choice="required", temperature=0)
        stream = await ask(client, tool_choice="required", temperature=0, stream=True)
        return whole, [chunk async for chunk in stream]

    whole, chunks = run(server, work)
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk.choices:
            assert not choice.delta.content  # no markup leaks into content
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                if delta.id is not None:
                    assert delta.index not in calls and delta.type == "function"
                    calls[delta.index] = {"name": delta.function.name, "arguments": ""}
                else:
                    assert delta.function.name is None
                calls[delta.index]["arguments"] += delta.function.arguments or ""
    expected = [
        {"name": c.function.name, "arguments": c.function.arguments}
        for c in whole.choices[0].message.tool_calls
    ]
    assert [calls[i] for i in sorted(calls)] == expected
    assert finish == "tool_calls"


def test_round_trip_call_result_answer(server: str) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}

    async def work(client: Any) -> tuple[Any, Any]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
        first = await ask(client, messages=messages, tool_choice=named, temperature=0)
        call = first.choices[0].message.tool_calls[0]
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
        ]
        final = await ask(client, messages=messages, tool_choice="none", temperature=0,
                          max_tokens=40)  # fmt: skip
        return first, final

    first, final = run(server, work)
    check_calls(first.choices[0].message.tool_calls)
    answer = final.choices[0].message
    assert answer.tool_calls is None and answer.content
    assert final.usage.prompt_tokens > first.usage.prompt_tokens  # the call and result rendered


BAD = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}],
      "tool_choice": "required"}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"if": {}}}}],
      "tool_choice": "none"}, "tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "auto"}, "tool_choice"),  # no --enable-auto-tool-choice
    ({"tools": TOOLS}, "tool_choice"),  # "auto" is the default with tools
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format"),
    ({"include_reasoning": False}, "include_reasoning"),  # no --reasoning-parser
]  # fmt: skip


def test_bad_tool_requests_are_400s_naming_the_field(server: str) -> None:
    async def work(client: Any) -> list[Any]:
        results = []
        for extra, _ in BAD:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}
            try:
                await client.post("/chat/completions", body=body, cast_to=object)
            except openai.BadRequestError as exc:
                results.append(exc.body)
            else:
                results.append(None)
        results.append(await ask(client, tool_choice="none", max_tokens=3, temperature=0))
        return results

    *errors, still_serving = run(server, work)
    for (extra, param), error in zip(BAD, errors, strict=True):
        assert error is not None and error["param"] == param, (extra, error)
        assert param in error["message"]
    assert still_serving.choices[0].finish_reason == "length"


def test_tool_bodies_in_a_json_lines_batch(smollm2_path: Path, tmp_path: Path) -> None:
    named = {"type": "function", "function": {"name": "add"}}
    lines = [
        {"custom_id": "required", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "messages": [{"role": "user", "content": ASK}],
                  "tools": TOOLS, "tool_choice": "required", "temperature": 0,
                  "max_tokens": 200}},
        {"custom_id": "named", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "messages": ADD_MESSAGES,
                  "tools": TOOLS, "tool_choice": named, "temperature": 0, "max_tokens": 200}},
    ]  # fmt: skip
    batch = tmp_path / "in.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    subprocess.run(
        [sys.executable, "-m", "llmcore.jsonl", str(smollm2_path), "-i", str(batch),
         "-o", str(out), "--dtype", "float32", "--kv-cache-memory", "256MiB"],
        check=True, timeout=300,
    )  # fmt: skip
    answers = {a["custom_id"]: a["response"]["body"] for a in map(json.loads, out.open())}
    required = answers["required"]["choices"][0]
    assert required["finish_reason"] == "tool_calls"
    named_call = answers["named"]["choices"][0]["message"]["tool_calls"][0]
    assert named_call["function"]["name"] == "add" and named_call["type"] == "function"
    for call in [*required["message"]["tool_calls"], named_call]:
        args = json.loads(call["function"]["arguments"])
        jsonschema.validate(args, SCHEMAS[call["function"]["name"]])


def test_llm_chat_returns_parsed_tool_calls(smollm2_path: Path) -> None:
    import llmcore

    llm = llmcore.LLM(smollm2_path, dtype="float32", kv_cache_memory=128 << 20)
    params = llmcore.SamplingParams(temperature=0, max_tokens=200)
    messages = [{"role": "user", "content": ASK}]
    (required,) = llm.chat(messages, params, tools=TOOLS, tool_choice="required")
    (named,) = llm.chat(ADD_MESSAGES, params, tools=TOOLS,
                        tool_choice={"type": "function", "function": {"name": "add"}})  # fmt: skip
    (plain,) = llm.chat(messages, llmcore.SamplingParams(temperature=0, max_tokens=5))
    calls = required.outputs[0].tool_calls
    assert calls and all(c.id.startswith("call_") for c in calls)
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    (add,) = named.outputs[0].tool_calls or []
    assert add.name == "add" and add.arguments == named.outputs[0].text
    assert plain.outputs[0].tool_calls is None
    with pytest.raises(llmcore.InvalidRequestError, match="tool_choice"):
        llm.chat(messages, params, tools=TOOLS)  # "auto" needs a tool_call_parser


HERMES_CALL = (
    r'<tool_call>\n\{"name": "add", "arguments": \{"a": [0-9], "b": [0-9]\}\}\n</tool_call>'
)


@pytest.fixture(scope="module")
def auto_server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    flags = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    with smollm2_server(smollm2_path, tmp_path_factory.mktemp("tools-auto"), *flags) as srv:
        yield srv.url + "/v1"


def test_auto_reads_the_models_own_calls_with_its_parser(auto_server: str) -> None:
    """SmolLM2 was not trained to call tools, so a regex makes it write a hermes call
    (tool_choice "auto" may be combined with a response constraint); the hermes parser
    then finds it, whole and streamed, and plain answers stay content."""
    forced = {"guided_regex": HERMES_CALL}

    async def work(client: Any) -> tuple[Any, list[Any], Any]:
        whole = await ask(client, messages=ADD_MESSAGES, temperature=0, extra_body=forced)
        stream = await ask(client, messages=ADD_MESSAGES, temperature=0, extra_body=forced,
                           stream=True)  # fmt: skip
        plain = await ask(client, temperature=0, max_tokens=8)
        return whole, [chunk async for chunk in stream], plain

    whole, chunks, plain = run(auto_server, work)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "add"
    check_calls([call])
    streamed = ""
    for chunk in chunks:
        for c in chunk.choices:
            assert not c.delta.content  # the call's markup never reaches the content
            for delta in c.delta.tool_calls or []:
                streamed += delta.function.arguments or ""
    assert json.loads(streamed) == json.loads(call.function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].message.content
