"""POST /v1/chat/completions through `OpenAIService.handle` on SmolLM2: the response
and stream shapes, streamed == non-streamed, n, logprobs (chat shape, bytes),
echo / continue_final_message, and the 400s."""

from __future__ import annotations

from typing import Any

import pytest

from llmcore.openai import OpenAIService
from llmcore.openai.logprobs import TokenStrings
from llmcore.tokenization.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # the service runs on SmolLM2 (the smollm2 fixture)

URL = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"messages": MESSAGES, "max_tokens": 6, "temperature": 0}


def content_by_index(events: list[Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    for event in events:
        if event == "[DONE]":
            continue
        for choice in event["choices"]:
            out[choice["index"]] = out.get(choice["index"], "") + (
                choice["delta"].get("content") or ""
            )
    return out


def test_response_shape_and_usage(client: Any) -> None:
    data = client.ok(URL, GREEDY)
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert data["model"] == "SmolLM2-135M-Instruct"
    [choice] = data["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = data["usage"]
    tokenized = client.ok("/tokenize", {"messages": MESSAGES})
    assert usage["prompt_tokens"] == tokenized["count"]
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6


def test_max_completion_tokens_wins_over_max_tokens(client: Any) -> None:
    data = client.ok(URL, {**GREEDY, "max_tokens": 9, "max_completion_tokens": 2})
    assert data["usage"]["completion_tokens"] == 2


def test_stream_matches_non_stream_with_role_chunks_and_usage(client: Any) -> None:
    body = {**GREEDY, "n": 3, "temperature": 1.0, "seed": 5, "max_tokens": 8}
    whole = client.ok(URL, body)
    events = client.stream(URL, {**body, "stream_options": {"include_usage": True}})
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    roles = events[:3]
    assert [e["choices"][0]["index"] for e in roles] == [0, 1, 2]
    assert all(e["choices"][0]["delta"] == {"role": "assistant", "content": ""} for e in roles)
    assert content_by_index(events) == {
        c["index"]: c["message"]["content"] for c in whole["choices"]
    }
    finishes = [
        (c["index"], c["finish_reason"])
        for e in events[:-1]
        for c in e["choices"]
        if c["finish_reason"] is not None
    ]
    assert sorted(finishes) == [(c["index"], c["finish_reason"]) for c in whole["choices"]]
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    assert all("usage" not in e for e in events[:-2])


def test_continuous_usage_stats(client: Any) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    events = client.stream(URL, {**GREEDY, "stream_options": options})[:-1]
    assert all("usage" in e for e in events)
    completion = [e["usage"]["completion_tokens"] for e in events]
    assert completion[0] == 0 and completion == sorted(completion) and completion[-1] == 6


def test_logprobs_shape(client: Any) -> None:
    body = {**GREEDY, "logprobs": True, "top_logprobs": 2}
    choice = client.ok(URL, body)["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == 6
    assert "".join(e["token"] for e in content) == choice["message"]["content"]
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["logprob"] <= 0 and entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 2
        assert all(set(t) == {"token", "logprob", "bytes"} for t in entry["top_logprobs"])
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][1]["logprob"]
    streamed = [
        c["logprobs"]["content"]
        for e in client.stream(URL, body)[:-1]
        for c in e["choices"]
        if c["logprobs"]
    ]
    assert [x for part in streamed for x in part] == content
    only = client.ok(URL, {**GREEDY, "logprobs": True})["choices"][0]["logprobs"]["content"]
    assert all(e["top_logprobs"] == [] for e in only)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_logprobs_errors(client: Any, body: dict[str, Any], param: str) -> None:
    status, data = client.post(URL, {**GREEDY, **body})
    assert status == 400 and data["error"]["param"] == param


def test_token_bytes_rebuild_multibyte_text(tokenizer: Tokenizer) -> None:
    text = "Hello wörld 日本 😀 naïve"
    ids = tokenizer.encode(text, add_special_tokens=False)
    strings = TokenStrings(tokenizer)
    assert bytes(b for i in ids for b in strings.bytes(i)) == text.encode()
    assert any("\ufffd" in strings.text(i) for i in ids)  # some tokens split a character
    assert strings.text(ids[0]) == "Hello"


def test_echo_and_continue_final_message(client: Any) -> None:
    start = "The capital of France is"
    messages = [*MESSAGES, {"role": "assistant", "content": start}]
    body = {
        "messages": messages,
        "max_tokens": 3,
        "temperature": 0,
        "continue_final_message": True,
        "echo": True,
    }
    choice = client.ok(URL, body)["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].startswith(start + " ")
    events = client.stream(URL, body)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[1]["choices"][0]["delta"] == {"content": start}
    assert content_by_index(events)[0] == choice["message"]["content"]
    status, data = client.post(URL, {**body, "add_generation_prompt": True})
    assert status == 400 and data["error"]["param"] == "continue_final_message"


def test_default_max_tokens_is_the_rest_of_the_context(client: Any) -> None:
    data = client.ok(URL, {"messages": MESSAGES, "temperature": 0, "stop": ["."]})
    assert data["choices"][0]["finish_reason"] == "stop"
    assert "Paris" in data["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        # tools alone mean tool_choice "auto", which needs --enable-auto-tool-choice
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
        ({"tools": [{"type": "function"}], "tool_choice": "none"}, "tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"guided_json": {"type": "strin"}}, "guided_json"),
        ({"guided_regex": "b", "guided_choice": ["a"]}, "guided_choice"),
        ({"structured_outputs": {"choice": ["a"], "regexp": "b"}}, "structured_outputs"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs"),
    ],
)
def test_unsupported_fields_are_400s_naming_them(
    client: Any, extra: dict[str, Any], param: str
) -> None:
    status, data = client.post(URL, {**GREEDY, **extra})
    assert status == 400 and data["error"]["param"] == param, data
    assert param in data["error"]["message"]


def test_tools_with_tool_choice_none_and_unknown_fields_are_accepted(client: Any) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    body = {
        **GREEDY,
        "max_tokens": 2,
        "tools": tools,
        "tool_choice": "none",
        "store": False,
        "metadata": {"k": "v"},
        "reasoning_effort": None,  # a value is refused (no reasoning parser): test_vllm_fields
        "unknown": {"x": [1]},
    }
    assert client.ok(URL, body)["choices"][0]["finish_reason"] == "length"


def test_content_parts_text_and_image(client: Any) -> None:
    parts = [
        {"type": "text", "text": "What is the capital"},
        {"type": "text", "text": "of France?"},
    ]
    body = {**GREEDY, "max_tokens": 2, "messages": [{"role": "user", "content": parts}]}
    assert client.ok(URL, body)["choices"][0]["message"]["content"]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body["messages"] = [{"role": "user", "content": [parts[0], image]}]
    status, data = client.post(URL, body)
    assert status == 400 and data["error"]["param"] == "messages[0].content[1]"
    assert "not supported" in data["error"]["message"]


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "robot", "content": "hi"}], [{"content": "hi"}], [{"role": "user"}], "hi"],
)
def test_bad_messages_are_400s(client: Any, messages: Any) -> None:
    status, data = client.post(URL, {"messages": messages, "max_tokens": 2})
    assert status == 400 and data["error"]["type"] == "invalid_request_error", data


def test_conversation_with_tool_calls_renders(client: Any) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "Paris"},
    ]
    status, _ = client.post(URL, {"messages": messages, "max_tokens": 2, "temperature": 0})
    assert status == 200
    # A call with no text (content absent or null) renders with empty content, as
    # vLLM's does: the same prompt (SmolLM2's template reads message['content']).
    first = client.ok(URL, {"messages": messages, "max_tokens": 1, "return_token_ids": True})
    for content in ({}, {"content": None}):
        messages[1] = {"role": "assistant", "tool_calls": [call], **content}
        again = client.ok(URL, {"messages": messages, "max_tokens": 1, "return_token_ids": True})
        assert again["prompt_token_ids"] == first["prompt_token_ids"]


def test_model_without_chat_template(engine: Any, make_served: Any, make_client: Any) -> None:
    bare = make_client(OpenAIService([make_served(engine, chat_template=None)]))
    status, data = bare.post(URL, GREEDY)
    assert status == 400
    assert data["error"]["message"] == "this model has no chat template; pass --chat-template"
    assert bare.ok("/v1/completions", {"prompt": "Hi", "max_tokens": 1})["choices"]


def test_the_openai_sdk_parses_responses_and_chunks(client: Any) -> None:
    openai_types = pytest.importorskip("openai.types.chat")
    body = {**GREEDY, "n": 2, "logprobs": True, "top_logprobs": 1}
    whole = openai_types.ChatCompletion.model_validate(client.ok(URL, body))
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    assert whole.choices[1].logprobs is not None and whole.choices[1].logprobs.content
    events = client.stream(URL, {**body, "stream_options": {"include_usage": True}})
    chunks = [openai_types.ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    assert chunks[-1].usage == whole.usage and chunks[0].choices[0].delta.role == "assistant"
