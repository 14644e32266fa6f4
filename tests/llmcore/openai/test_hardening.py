"""What an outside probe found, at the service (SmolLM2 for generation beside
all-MiniLM-L6-v2 for embeddings): bodies nested too deeply and `logit_bias` keys of
thousands of digits are 400s, not 500s; a prompt too long to fit is refused by its
length before it is tokenized, and a long one is tokenized on a worker thread; and
a fuzz of JSON values of every kind, depth and size against every JSON route never
gets a 5xx."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcore.engine.async_engine import AsyncEngine
from llmcore.openai import ServiceStream
from llmcore.openai.prompts import THREAD_TOKENIZE_CHARS, max_prompt_chars
from llmcore.openai.protocol import MAX_JSON_DEPTH
from llmcore.openai.routes import ROUTES
from llmcore.tokenization.tokenizer import Tokenizer

from .conftest import Client

pytestmark = pytest.mark.slow

CHAT = "SmolLM2-135M-Instruct"
MINILM = "all-MiniLM-L6-v2"
JSON_ROUTES = sorted({spec.path for spec in ROUTES if spec.request is not None})


def nested(depth: int, kind: str = "object") -> bytes:
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth + b"1" + b"]" * depth


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
            **fields}  # fmt: skip


# ---- 1: nesting -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 500, 1000, 20_000])
@pytest.mark.parametrize("kind", ["object", "array"])
def test_a_body_nested_too_deeply_is_400(both: Client, path: str, depth: int, kind: str) -> None:
    status, data = both.call("POST", path, raw=nested(depth, kind))
    assert status == 400, data
    assert data["error"]["type"] == "invalid_request_error"
    assert f"nested {depth} levels deep" in data["error"]["message"]


def test_nesting_inside_a_field_counts_and_strings_do_not(both: Client) -> None:
    deep = json.loads(nested(MAX_JSON_DEPTH + 5))
    status, _ = both.post("/v1/chat/completions", chat_body(chat_template_kwargs={"x": deep}))
    assert status == 400
    fine = json.loads(nested(MAX_JSON_DEPTH - 5))
    status, data = both.post("/v1/chat/completions", chat_body(chat_template_kwargs={"x": fine}))
    assert status == 200, data
    brackets = chat_body(messages=[{"role": "user", "content": "[{" * 500 + '\\"]}' * 10}])
    status, data = both.post("/v1/chat/completions", brackets)
    assert status == 200, data


def test_deeply_nested_tool_call_arguments_reach_the_template_as_text(both: Client) -> None:
    call = {"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": nested(5000).decode()}}  # fmt: skip
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "calling f", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}]  # fmt: skip
    status, data = both.post("/tokenize", {"model": CHAT, "messages": messages})
    assert status == 200, data


# ---- 2: integer strings ---------------------------------------------------------------------


@pytest.mark.parametrize("key", ["1" * 5000, "-" + "9" * 5000, "9" * 19, "1e5", " 1", "٣"])
def test_a_logit_bias_key_that_is_no_token_id_is_400(both: Client, key: str) -> None:
    status, data = both.post("/v1/chat/completions", chat_body(logit_bias={key: 1.0}))
    assert status == 400, data
    assert data["error"]["param"] == "logit_bias"


def test_a_logit_bias_key_with_leading_zeros_is_its_token(both: Client) -> None:
    status, data = both.post("/v1/chat/completions", chat_body(logit_bias={"0" * 5000 + "1": 1}))
    assert status == 200, data


# ---- 5: prompts too long to tokenize ----------------------------------------------------------


@pytest.fixture
def spy(tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Records (text length, thread name) of every text the shared tokenizer encodes."""
    seen: list[tuple[int, str]] = []
    encode, encode_batch = tokenizer.encode, tokenizer.encode_batch

    def spy_encode(text: str, add_special_tokens: bool = True) -> list[int]:
        seen.append((len(text), threading.current_thread().name))
        return encode(text, add_special_tokens)

    def spy_batch(texts: Any, add_special_tokens: bool = True) -> list[list[int]]:
        seen.extend((len(t), threading.current_thread().name) for t in texts)
        return encode_batch(texts, add_special_tokens)

    monkeypatch.setattr(tokenizer, "encode", spy_encode)
    monkeypatch.setattr(tokenizer, "encode_batch", spy_batch)
    return seen


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", lambda text: {"model": CHAT, "prompt": text, "max_tokens": 1}),
        ("/v1/completions", lambda text: {"model": CHAT, "prompt": ["a", text]}),
        ("/v1/chat/completions", lambda text: chat_body(messages=[{"role": "user",
                                                                   "content": text}])),
        ("/tokenize", lambda text: {"model": CHAT, "prompt": text}),
        ("/tokenize", lambda text: {"model": CHAT, "messages": [{"role": "user",
                                                                 "content": text}]}),
    ],
    ids=["completion", "completion-list", "chat", "tokenize", "tokenize-chat"],
)  # fmt: skip
def test_a_prompt_too_long_to_fit_is_refused_before_tokenizing(
    both: Client, spy: list[tuple[int, str]], path: str, body: Any
) -> None:
    model = both.service.models[0]
    text = "hello world " * (max_prompt_chars(model) // 12 + 10)
    status, data = both.post(path, body(text))
    assert status == 400, data
    assert data["error"]["code"] == "context_length_exceeded"
    assert all(length < len(text) for length, _ in spy)


def test_a_token_id_prompt_too_long_is_refused_by_its_length(both: Client) -> None:
    ids = [-1] * 200_000  # out of vocabulary too: the length is looked at first
    status, data = both.post("/v1/completions", {"model": CHAT, "prompt": ids})
    assert status == 400 and data["error"]["code"] == "context_length_exceeded"


def test_a_long_prompt_is_tokenized_on_a_worker_thread(
    both: Client, spy: list[tuple[int, str]]
) -> None:
    text = "hello world " * (THREAD_TOKENIZE_CHARS // 12 + 100)
    status, data = both.post("/tokenize", {"model": CHAT, "prompt": text})
    assert status == 200 and data["count"] > 1000
    assert spy == [(len(text), spy[0][1])] and spy[0][1] != threading.main_thread().name
    spy.clear()
    status, data = both.post("/tokenize", {"model": CHAT, "prompt": "short"})
    assert status == 200 and spy == [(5, threading.main_thread().name)]


def test_an_embedding_input_too_long_is_cut_when_truncating(both: Client) -> None:
    model = both.service.models[1]
    text = "word " * (max_prompt_chars(model) // 5 + 1000)
    status, data = both.post("/v1/embeddings", {"model": MINILM, "input": text})
    assert status == 400 and data["error"]["code"] == "context_length_exceeded"
    body = {"model": MINILM, "input": [text, "word " * 20], "truncate_prompt_tokens": 16}
    status, data = both.post("/v1/embeddings", {**body, "encoding_format": "float"})
    assert status == 200, data
    first, second = (d["embedding"] for d in data["data"])
    assert first == pytest.approx(second, abs=1e-5)  # the same 16 tokens
    assert data["usage"]["prompt_tokens"] == 32


# ---- the fuzz: JSON of every kind, depth and size, on every JSON route ------------------------


def _number() -> st.SearchStrategy[bytes]:
    digits = st.integers(1, 6000).map(lambda n: b"7" * n)
    return st.one_of(
        st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
        digits,
        digits.map(lambda d: b"-" + d),
        st.sampled_from([b"1e999", b"-1e999", b"1E-999", b"-0", b"0.0", b"1e308"]),
    )


def _string() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.text(max_size=20).map(lambda s: json.dumps(s).encode()),
        st.tuples(st.sampled_from(["a", "[", "\\", '"', "é", "\x00", "<|im_start|>"]),
                  st.integers(0, 200_000))
        .map(lambda pair: json.dumps(pair[0] * pair[1]).encode()),
    )  # fmt: skip


def _wrap(value: bytes, depth: int, kind: str) -> bytes:
    opening, closing = (b'{"k":', b"}") if kind == "object" else (b"[", b"]")
    return opening * depth + value + closing * depth


SCALAR = st.one_of(st.sampled_from([b"null", b"true", b"false"]), _number(), _string())
JSON_VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: b"[" + b",".join(items) + b"]"),
        st.lists(st.tuples(_string(), inner), max_size=4).map(
            lambda pairs: b"{" + b",".join(k + b":" + v for k, v in pairs) + b"}"
        ),
        st.tuples(inner, st.integers(0, 3000), st.sampled_from(["object", "array"])).map(
            lambda t: _wrap(*t)
        ),
    ),
    max_leaves=12,
)
FIELDS = ["model", "messages", "prompt", "input", "n", "stream", "logit_bias",
          "stop", "tools", "chat_template_kwargs", "response_format", "text_1", "text_2",
          "query", "documents", "tokens", "truncate_prompt_tokens", "dimensions",
          "encoding_format", "seed", "priority", "logprobs", "top_logprobs"]  # fmt: skip
BASES = {
    "/v1/chat/completions": chat_body(),
    "/v1/completions": {"model": CHAT, "prompt": "Hi", "max_tokens": 1},
    "/v1/messages": chat_body(),
    "/v1/messages/count_tokens": chat_body(),
    "/tokenize": {"model": CHAT, "prompt": "Hi"},
    "/detokenize": {"model": CHAT, "tokens": [1, 2]},
}
EMBED_BASE = {"model": MINILM, "input": "Hi", "text_1": "a", "text_2": "b", "query": "q",
              "documents": ["d"]}  # fmt: skip


@st.composite
def route_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(st.sampled_from(JSON_ROUTES))
    value = draw(JSON_VALUE)
    if draw(st.booleans()):
        return path, value  # the value is the whole body
    base = dict(BASES.get(path, EMBED_BASE))
    base["max_tokens"] = 1
    encoded = {name: json.dumps(v).encode() for name, v in base.items()}
    encoded[draw(st.sampled_from(FIELDS))] = value
    return path, b"{" + b",".join(
        json.dumps(k).encode() + b":" + v for k, v in encoded.items()
    ) + b"}"


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(route_body=route_bodies())
def test_no_json_body_gets_a_5xx(both: Client, route_body: tuple[str, bytes]) -> None:
    path, body = route_body
    answer = both.request("POST", path, raw=body)
    assert answer.status < 500, answer.body if not isinstance(answer, ServiceStream) else ""
    if isinstance(answer, ServiceStream):
        both.run(answer.aclose())


def test_after_the_fuzz_both_engines_are_idle_and_healthy(
    both: Client, engine: AsyncEngine, minilm_engine: AsyncEngine
) -> None:
    assert both.call("GET", "/health")[0] == 200
    for eng in (engine, minilm_engine):
        stats = eng.statistics()
        assert stats.num_running == stats.num_waiting == 0


# ---- the OpenAPI document states what the service enforces ---------------------------------

REFUSED = [
    ("/v1/completions", {"model": CHAT, "prompt": []}),
    ("/v1/completions", {"model": CHAT, "prompt": [[]]}),
    ("/v1/completions", {"model": CHAT, "prompt": [-1]}),
    ("/v1/completions", {"model": CHAT, "prompt": [[5, -2]]}),
    ("/v1/completions", {"model": CHAT, "prompt": [1, "a"]}),
    ("/v1/chat/completions", {"model": CHAT, "messages": []}),
    ("/v1/embeddings", {"model": MINILM, "input": ""}),
    ("/v1/embeddings", {"model": MINILM, "input": ["a", ""]}),
    ("/v1/embeddings", {"model": MINILM, "input": []}),
    ("/pooling", {"model": MINILM, "input": [[]]}),
    ("/score", {"model": MINILM, "text_1": "", "text_2": "b"}),
    ("/score", {"model": MINILM, "text_1": [], "text_2": "b"}),
    ("/rerank", {"model": MINILM, "query": "", "documents": ["d"]}),
    ("/rerank", {"model": MINILM, "query": "q", "documents": []}),
    ("/detokenize", {"model": CHAT, "tokens": [-1]}),
    ("/tokenize", {"model": CHAT}),
    ("/tokenize", {"model": CHAT, "prompt": None, "messages": None}),
    ("/tokenize", {"model": CHAT, "prompt": "a", "messages": [{"role": "user", "content": "b"}]}),
    ("/tokenize", {"model": CHAT, "messages": []}),
]
ACCEPTED = [
    ("/v1/completions", {"model": CHAT, "prompt": [[5, 6], [7]], "max_tokens": 1}),
    ("/v1/completions", {"model": CHAT, "prompt": ["a", "b"], "max_tokens": 1}),
    ("/v1/embeddings", {"model": MINILM, "input": [[101, 7592, 102]]}),
    ("/score", {"model": MINILM, "text_1": "a", "text_2": ["b", "c"]}),
    ("/rerank", {"model": MINILM, "query": "q", "documents": ["d", {"text": "e"}]}),
    ("/detokenize", {"model": CHAT, "tokens": [0, 5]}),
    ("/tokenize", {"model": CHAT, "prompt": "a", "messages": None}),
    ("/tokenize", {"model": CHAT, "messages": [{"role": "user", "content": "b"}]}),
]


@pytest.fixture(scope="module")
def request_schemas(both: Client) -> Any:
    """A validator of each route's request body against the served OpenAPI document."""
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    status, document = both.call("GET", "/openapi.json")
    assert status == 200
    resource = referencing.Resource.from_contents(
        document, default_specification=referencing.jsonschema.DRAFT202012
    )
    registry = referencing.Registry().with_resource("urn:llmcore", resource)

    def validator(path: str) -> Any:
        ref = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        schema = {"$ref": "urn:llmcore" + ref["schema"]["$ref"]}
        return jsonschema.Draft202012Validator(schema, registry=registry)

    return validator


@pytest.mark.parametrize(("path", "body"), REFUSED)
def test_what_the_document_forbids_is_refused(
    both: Client, request_schemas: Any, path: str, body: dict[str, Any]
) -> None:
    assert not request_schemas(path).is_valid(body)
    status, data = both.post(path, body)
    assert status == 400, data


@pytest.mark.parametrize(("path", "body"), ACCEPTED)
def test_what_the_document_allows_is_served(
    both: Client, request_schemas: Any, path: str, body: dict[str, Any]
) -> None:
    assert request_schemas(path).is_valid(body)
    status, data = both.post(path, body)
    assert status == 200, data
