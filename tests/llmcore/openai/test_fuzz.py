"""Random requests never get a 5xx: bodies built from the request Structs' field
names with plausible and hostile values (wrong types, huge and negative numbers,
out-of-vocabulary ids, unknown fields), random routes, methods and content types.
Generation stays short (max_tokens is always a small number or not a number)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcore.openai import ServiceRequest, ServiceStream
from llmcore.openai.protocol import ChatCompletionRequest, CompletionRequest

pytestmark = pytest.mark.slow  # the service runs on SmolLM2 (the smollm2 fixture)

NAME = "SmolLM2-135M-Instruct"
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
junk = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
small_int = st.one_of(st.integers(1, 3), st.integers(-2, 5))
token_id = st.one_of(st.integers(0, 49151), st.integers(-3, 49160))
text = st.text(max_size=24)
part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text}),
    st.fixed_dictionaries({"type": st.just("text"), "text": text}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["image_url", "audio", "text"]), "image_url": junk}
    ),
)
role = st.sampled_from(["system", "developer", "user", "user", "assistant", "tool", "bot"])
message = st.fixed_dictionaries(
    {"role": role, "content": st.one_of(text, text, st.lists(part, max_size=3))},
    optional={"name": text, "tool_call_id": text},
)
prompt = st.one_of(
    text.filter(bool),
    st.lists(token_id, min_size=1, max_size=6),
    st.lists(text, max_size=3),
    st.lists(st.lists(token_id, max_size=4), max_size=2),
)
messages = st.lists(message, min_size=1, max_size=3)

PLAUSIBLE: dict[str, Any] = {
    "model": st.sampled_from([NAME, NAME, "gpt-4o"]),
    "n": small_int,
    "best_of": small_int,
    "temperature": st.one_of(st.floats(0, 2), st.floats(-1, 1e300)),
    "top_p": st.floats(-0.5, 1.5),
    "top_k": st.integers(-3, 60000),
    "min_p": st.floats(-0.5, 1.5),
    "presence_penalty": st.floats(-3, 3),
    "frequency_penalty": st.floats(-3, 3),
    "repetition_penalty": st.floats(-1, 1e300),
    "logit_bias": st.dictionaries(
        st.one_of(token_id.map(str), text), st.floats(-200, 200), max_size=3
    ),
    "allowed_token_ids": st.lists(token_id, max_size=4),
    "bad_words": st.lists(text, max_size=3),
    "min_tokens": small_int,
    "ignore_eos": st.booleans(),
    "stop": st.one_of(text, st.lists(text, max_size=3)),
    "stop_token_ids": st.lists(token_id, max_size=3),
    "include_stop_str_in_output": st.booleans(),
    "seed": st.one_of(st.integers(0, 100), st.integers(-(2**65), 2**65)),
    "skip_special_tokens": st.booleans(),
    "spaces_between_special_tokens": st.booleans(),
    "logprobs": st.one_of(st.integers(0, 3), st.integers(-2, 25), st.booleans()),
    "top_logprobs": st.one_of(st.integers(0, 3), st.integers(-2, 25)),
    "prompt_logprobs": st.one_of(st.integers(0, 3), st.integers(-2, 25)),
    "priority": st.integers(-(2**70), 2**70),
    "cache_salt": text,
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries(
        {}, optional={"include_usage": st.booleans(), "continuous_usage_stats": st.booleans()}
    ),
    "echo": st.booleans(),
    "add_special_tokens": st.booleans(),
    "max_completion_tokens": st.integers(-1, 3),
    "chat_template_kwargs": st.dictionaries(
        st.sampled_from(["messages", "bos_token", "x", "self"]), junk, max_size=2
    ),
    "documents": st.lists(st.dictionaries(text, text, max_size=2), max_size=2),
    "continue_final_message": st.booleans(),
    "add_generation_prompt": st.booleans(),
    "tools": st.lists(junk, max_size=2),
    "tool_choice": st.sampled_from(["none", "auto", "required"]),
    "parallel_tool_calls": st.booleans(),
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
    "suffix": st.one_of(st.none(), text),
    "modalities": st.lists(st.sampled_from(["text", "audio"]), max_size=2),
}
# Never null: a null max_tokens means "the rest of the context", too slow for a fuzz test.
MAX_TOKENS = st.one_of(st.integers(-1, 3), st.text(max_size=3), st.floats(0, 3), st.booleans())


def body_for(
    struct: type[msgspec.Struct], required: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """A valid base (`required`, max_tokens 1-3), a few plausible fields, and some of
    the time one hostile edit: junk in any field but max_tokens, or an unknown field."""
    fields = [f for f in struct.__struct_fields__ if f not in (*required, "max_tokens")]
    plausible = [f for f in fields if f in PLAUSIBLE]

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        body = {name: draw(strategy) for name, strategy in required.items()}
        body["max_tokens"] = draw(st.integers(1, 3))
        for name in draw(st.lists(st.sampled_from(plausible), max_size=4, unique=True)):
            body[name] = draw(PLAUSIBLE[name])
        edit = draw(st.sampled_from([2, 2, 2, 2, 0, 1]))
        if edit == 0:
            body[draw(st.sampled_from([*fields, *required, "an_unknown_field"]))] = draw(junk)
        elif edit == 1:
            body["max_tokens"] = draw(MAX_TOKENS)
        return body

    return build()


ROUTE_BODIES = st.one_of(
    st.tuples(st.just("/v1/completions"), body_for(CompletionRequest, {"prompt": prompt})),
    st.tuples(
        st.just("/v1/chat/completions"), body_for(ChatCompletionRequest, {"messages": messages})
    ),
    st.tuples(
        st.sampled_from(["/tokenize", "/detokenize"]),
        st.dictionaries(
            st.sampled_from(
                ["prompt", "messages", "tokens", "model", "add_special_tokens", "return_token_strs"]
            ),
            st.one_of(messages, st.lists(token_id, max_size=4), text, junk),
            max_size=4,
        ),
    ),
    st.tuples(
        st.sampled_from(["/v1/models", "/v1/models/x", "/health", "/load", "/nope", "/"]), junk
    ),
)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    route_body=ROUTE_BODIES,
    method=st.sampled_from(["POST"] * 8 + ["GET", "PUT"]),
    content_type=st.sampled_from(["application/json"] * 6 + [None, "text/plain"]),
    raw=st.sampled_from([False] * 15 + [True]),  # sometimes cut the JSON short
)
def test_no_request_gets_a_5xx(
    client: Any, route_body: tuple[str, Any], method: str, content_type: str | None, raw: bool
) -> None:
    path, body = route_body
    data = json.dumps(body).encode() if not raw else json.dumps(body).encode()[:-1]
    headers = [("content-type", content_type)] if content_type else []
    answer = client.run(client.service.handle(ServiceRequest(method, path, headers, data, "fuzz")))
    assert answer.status < 500, answer.body if not isinstance(answer, ServiceStream) else ""
    if isinstance(answer, ServiceStream):
        events = client.run(_read(answer))
        assert events[-1] == b"[DONE]"
        for event in events[:-1]:
            error = json.loads(event).get("error")
            assert error is None or error["type"] == "invalid_request_error", error


async def _read(stream: ServiceStream) -> list[bytes]:
    return [chunk[len(b"data: ") : -2] async for chunk in stream.chunks]


def test_after_the_fuzz_the_engine_is_idle_and_healthy(client: Any, engine: Any) -> None:
    async def idle() -> Any:
        for _ in range(200):
            stats = engine.statistics()
            if stats.num_running == stats.num_waiting == 0:
                break
            await asyncio.sleep(0.01)
        return stats

    stats = client.run(idle())
    assert stats.num_kv_blocks_free == stats.num_kv_blocks
    assert client.call("GET", "/health")[0] == 200
    assert client.call("GET", "/load") == (200, {"server_load": 0})
