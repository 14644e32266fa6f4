"""Every field of vLLM's request types (written out below from vLLM's "OpenAI-Compatible
Server" documentation and its protocol definitions, not imported from vllm) is
either honoured, with an effect this test observes, or refused with a 400 naming it.

Each table maps a field to (extra body, expectation): `OK` means accepted with the
same effect as in vLLM, covered where the comment says (sampling parameters by the
engine's tests) or none at all in vLLM either (`user`, `length_penalty` without beam
search); `REFUSED` a 400 whose `param` is the field; a function, a check of the answer.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import numpy as np
import pytest
import torch

from llmcore.errors import InvalidRequestError
from llmcore.openai import OpenAIService, ServedModel, ServiceOptions, ServiceRequest
from llmcore.openai.protocol import (
    CHAT_DECODER,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    PoolingRequest,
    RequestDecoder,
    RerankRequest,
    ScoreRequest,
    TokenizeRequest,
)
from llmcore.openai.protocol.decoding import UNKNOWN_FIELDS
from llmcore.openai.request_ids import HeaderRequestId, resolve_request_id
from llmcore.openai.vectors import EMBED_DTYPES, decode_base64, encode_vector, vector_encoding

OK = "ok"
REFUSED = "refused"
Check = Callable[[Any, dict[str, Any]], None]  # (client, answer)
EMBED = "all-MiniLM-L6-v2"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
PARTIAL_ANSWER = {"role": "assistant", "content": "The capital"}
TOOLS = [{"type": "function", "function": {"name": "f"}}]

# ---- vLLM's fields, from its documentation (the Extra Parameters sections) ------------------

CHAT_FIELDS = (
    # OpenAI's, as vLLM declares them
    "messages", "model", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "max_tokens", "max_completion_tokens", "n", "presence_penalty", "response_format", "seed",
    "stop", "stream", "stream_options", "temperature", "top_p", "tools", "tool_choice",
    "reasoning_effort", "include_reasoning", "parallel_tool_calls", "user",
    # chat-completion-sampling-params
    "use_beam_search", "top_k", "min_p", "repetition_penalty", "length_penalty",
    "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "prompt_logprobs", "allowed_token_ids", "bad_words",
    # chat-completion-extra-params
    "echo", "add_generation_prompt", "continue_final_message", "add_special_tokens",
    "documents", "chat_template", "chat_template_kwargs", "mm_processor_kwargs",
    "structured_outputs", "priority", "request_id", "logits_processors",
    "return_tokens_as_token_ids", "return_token_ids", "cache_salt", "kv_transfer_params",
    "vllm_xargs",
    # earlier vLLM versions
    "best_of", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
    "structural_tag", "guided_decoding_backend", "guided_whitespace_pattern",
)  # fmt: skip
COMPLETION_FIELDS = (
    "model", "prompt", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens",
    "n", "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix",
    "temperature", "top_p", "user",
    # completion-sampling-params
    "use_beam_search", "top_k", "min_p", "repetition_penalty", "length_penalty",
    "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
    "allowed_token_ids", "prompt_logprobs",
    # completion-extra-params
    "prompt_embeds", "add_special_tokens", "response_format", "structured_outputs",
    "priority", "request_id", "logits_processors", "return_tokens_as_token_ids",
    "return_token_ids", "cache_salt", "kv_transfer_params", "vllm_xargs",
    # earlier vLLM versions
    "best_of", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
    "guided_decoding_backend", "guided_whitespace_pattern",
)  # fmt: skip
_POOLING_COMMON = ("model", "user", "truncate_prompt_tokens", "request_id", "priority")
EMBEDDING_FIELDS = (
    *_POOLING_COMMON, "input", "encoding_format", "dimensions", "add_special_tokens",
    "normalize", "embed_dtype", "endianness",
)  # fmt: skip
EMBEDDING_CHAT_FIELDS = (
    *_POOLING_COMMON, "messages", "encoding_format", "dimensions", "add_generation_prompt",
    "continue_final_message", "add_special_tokens", "chat_template", "chat_template_kwargs",
    "mm_processor_kwargs", "normalize", "embed_dtype", "endianness",
)  # fmt: skip
POOLING_FIELDS = (*EMBEDDING_FIELDS, "task", "softmax", "activation", "use_activation", "data")
SCORE_FIELDS = (
    *_POOLING_COMMON, "text_1", "text_2", "mm_processor_kwargs", "softmax", "activation",
    "use_activation",
)  # fmt: skip
RERANK_FIELDS = (
    *_POOLING_COMMON, "query", "documents", "top_n", "mm_processor_kwargs", "softmax",
    "activation", "use_activation",
)  # fmt: skip
TOKENIZE_FIELDS = ("model", "prompt", "add_special_tokens", "return_token_strs")
TOKENIZE_CHAT_FIELDS = (
    "model", "messages", "add_generation_prompt", "return_token_strs", "continue_final_message",
    "add_special_tokens", "chat_template", "chat_template_kwargs", "mm_processor_kwargs", "tools",
)  # fmt: skip
DETOKENIZE_FIELDS = ("model", "tokens")

# ---- checks of honoured fields ---------------------------------------------------------------


def _tokenizer(client: Any, index: int = 0) -> Any:
    return client.service.models[index].tokenizer


def _chat_token_ids(client: Any, data: dict[str, Any]) -> None:
    prompt = client.ok("/tokenize", {"messages": MESSAGES})["tokens"]
    assert data["prompt_token_ids"] == prompt
    [choice] = data["choices"]
    assert len(choice["token_ids"]) == data["usage"]["completion_tokens"]
    text = _tokenizer(client).decode(choice["token_ids"], skip_special_tokens=True)
    assert text == choice["message"]["content"]


def _completion_token_ids(client: Any, data: dict[str, Any]) -> None:
    [choice] = data["choices"]
    assert choice["prompt_token_ids"] == _tokenizer(client).encode("Paris is", True)
    assert len(choice["token_ids"]) == data["usage"]["completion_tokens"]
    assert (
        _tokenizer(client).decode(choice["token_ids"], skip_special_tokens=True) == (choice["text"])
    )


TOOL_X = [
    {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {"x": {"enum": [1, 2]}},
                "required": ["x"],
                "additionalProperties": False,
            },
        },
    }
]


def _one_call(finish_reason: str) -> Check:
    def check(client: Any, data: dict[str, Any]) -> None:
        [choice] = data["choices"]
        [call] = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "f" and call["type"] == "function"
        assert json.loads(call["function"]["arguments"])["x"] in (1, 2)
        assert choice["finish_reason"] == finish_reason, data

    return check


def _text_in(*texts: str) -> Check:
    def check(client: Any, data: dict[str, Any]) -> None:
        choice = data["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        assert text in texts and choice["finish_reason"] == "stop", data

    return check


def _id_is(prefix: str) -> Check:
    def check(client: Any, data: dict[str, Any]) -> None:
        assert data["id"] == f"{prefix}-my-request-7"

    return check


def _chat_tokens_as_ids(client: Any, data: dict[str, Any]) -> None:
    [choice] = data["choices"]
    tokens = [entry["token"] for entry in choice["logprobs"]["content"]]
    assert tokens == [f"token_id:{i}" for i in choice["token_ids"]]


def _completion_tokens_as_ids(client: Any, data: dict[str, Any]) -> None:
    [choice] = data["choices"]
    assert choice["logprobs"]["tokens"] == [f"token_id:{i}" for i in choice["token_ids"]]


def _floats(client: Any, text: str) -> np.ndarray:
    data = client.ok("/v1/embeddings", {"model": EMBED, "input": text})
    return np.array(data["data"][0]["embedding"], dtype=np.float32)


def _base64_is(dtype: str, endianness: str = "native") -> Check:
    def check(client: Any, data: dict[str, Any]) -> None:
        decoded = decode_base64(_vector(data), dtype, endianness)
        expected = _floats(client, "hello")
        if dtype == "float16":
            assert np.array_equal(decoded, expected.astype(np.float16).astype(np.float32))
        else:
            assert np.array_equal(decoded, expected)

    return check


def _vector(data: dict[str, Any]) -> Any:
    row = data["data"][0]
    return row["embedding"] if "embedding" in row else row["data"]  # /v1/embeddings, /pooling


def _not_normalized(client: Any, data: dict[str, Any]) -> None:
    assert abs(np.linalg.norm(np.array(_vector(data))) - 1.0) > 1e-3


def _prompt_tokens(n: int) -> Check:
    def check(client: Any, data: dict[str, Any]) -> None:
        assert data["usage"]["prompt_tokens"] == n

    return check


def _dimensions(client: Any, data: dict[str, Any]) -> None:
    assert len(_vector(data)) == 384


def _top_n(client: Any, data: dict[str, Any]) -> None:
    assert len(data["results"]) == 1


def _token_strs(client: Any, data: dict[str, Any]) -> None:
    assert len(data["token_strs"]) == data["count"]


# ---- the cases: field -> (extra body, expectation) -------------------------------------------

SAMPLING = {
    "frequency_penalty": ({"frequency_penalty": 0.5}, OK),  # engine sampling tests
    "presence_penalty": ({"presence_penalty": 0.5}, OK),
    "repetition_penalty": ({"repetition_penalty": 1.2}, OK),
    "logit_bias": ({"logit_bias": {"42": 5.0}}, OK),
    "seed": ({"seed": 3, "temperature": 1.0}, OK),
    "stop": ({"stop": ["\n"]}, OK),
    "temperature": ({"temperature": 0.7}, OK),
    "top_p": ({"top_p": 0.9}, OK),
    "top_k": ({"top_k": 5}, OK),
    "min_p": ({"min_p": 0.1}, OK),
    "stop_token_ids": ({"stop_token_ids": [2]}, OK),
    "include_stop_str_in_output": ({"include_stop_str_in_output": True}, OK),
    "ignore_eos": ({"ignore_eos": True}, OK),
    "min_tokens": ({"min_tokens": 2}, OK),
    "skip_special_tokens": ({"skip_special_tokens": False}, OK),
    "spaces_between_special_tokens": ({"spaces_between_special_tokens": False}, OK),
    "allowed_token_ids": ({"allowed_token_ids": [42, 43]}, OK),
    "bad_words": ({"bad_words": ["Paris"]}, OK),
    "n": ({"n": 2, "temperature": 1.0}, lambda c, d: len(d["choices"]) == 2),
    "max_tokens": ({"max_tokens": 2}, lambda c, d: d["usage"]["completion_tokens"] == 2),
    # streams (and stream_options): test_chat, test_completions, and the stream tests below
    "stream": ({"stream": False}, OK),
    "stream_options": ({"stream_options": None}, OK),
    "user": ({"user": "u-1"}, OK),  # no effect, as in vLLM
    "length_penalty": ({"length_penalty": 2.0}, OK),  # beam search only: no effect, as in vLLM
    "priority": ({"priority": -1}, OK),  # engine scheduler tests
    "cache_salt": ({"cache_salt": "salt-1"}, OK),  # engine prefix-cache tests
    "add_special_tokens": ({"add_special_tokens": False}, OK),  # test_chat / test_completions
    "echo": ({"echo": True}, OK),  # echo: test_chat / test_completions
    "truncate_prompt_tokens": ({"truncate_prompt_tokens": 4}, REFUSED),
    "use_beam_search": ({"use_beam_search": True}, REFUSED),
    # structured outputs (tests/llmcore/openai/test_structured_outputs.py covers them whole)
    "response_format": (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"enum": [7, 8]}}}},
        _text_in("7", "8"),
    ),
    "structured_outputs": ({"structured_outputs": {"regex": "a{3}"}}, _text_in("aaa")),
    "guided_json": ({"guided_json": {"enum": ["x", "y"]}}, _text_in('"x"', '"y"')),
    "guided_regex": ({"guided_regex": "b{2}"}, _text_in("bb")),
    "guided_choice": ({"guided_choice": ["yes", "no"]}, _text_in("yes", "no")),
    "guided_grammar": ({"guided_grammar": 'root ::= "ab"'}, _text_in("ab")),
    "structural_tag": (
        {"structural_tag": {"structures": [{"begin": "<f>", "end": "</f>"}], "triggers": ["<x"]}},
        REFUSED,  # a begin that starts with none of the triggers
    ),
    "guided_decoding_backend": ({"guided_decoding_backend": "xgrammar"}, REFUSED),
    "guided_whitespace_pattern": (
        {"guided_json": {"enum": [1]}, "guided_whitespace_pattern": " ?"},
        _text_in("1"),
    ),
    "logits_processors": ({"logits_processors": ["my.Processor"]}, REFUSED),
    "kv_transfer_params": ({"kv_transfer_params": {"do_remote_decode": True}}, REFUSED),
    "vllm_xargs": ({"vllm_xargs": {"k": 1}}, REFUSED),
    "best_of": ({"best_of": 3}, REFUSED),
}
CHAT_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    **SAMPLING,
    "messages": ({}, OK),
    "model": ({"model": "SmolLM2-135M-Instruct"}, OK),
    "logprobs": ({"logprobs": True}, lambda c, d: d["choices"][0]["logprobs"]["content"]),
    "top_logprobs": (
        {"logprobs": True, "top_logprobs": 2},
        lambda c, d: len(d["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2,
    ),
    "max_completion_tokens": (
        {"max_completion_tokens": 2},
        lambda c, d: d["usage"]["completion_tokens"] == 2,
    ),
    "tools": (
        {
            "tools": TOOL_X,
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "max_tokens": 30,
        },
        _one_call("stop"),
    ),
    "tool_choice": ({"tool_choice": "auto"}, REFUSED),  # no tools (and no auto tool choice)
    "parallel_tool_calls": (
        {
            "tools": TOOL_X,
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "max_tokens": 40,
        },
        _one_call("tool_calls"),
    ),
    "reasoning_effort": ({"reasoning_effort": "low"}, REFUSED),
    "include_reasoning": ({"include_reasoning": False}, REFUSED),
    "add_generation_prompt": ({"add_generation_prompt": True}, OK),  # test_chat
    "continue_final_message": (
        {
            "continue_final_message": True,
            "add_generation_prompt": False,
            "messages": [*MESSAGES, {"role": "assistant", "content": "The capital"}],
        },
        lambda c, d: d["choices"][0]["message"]["role"] == "assistant",
    ),
    "documents": ({"documents": [{"title": "t", "text": "x"}]}, OK),  # the /tokenize test
    "chat_template": ({"chat_template": "{{ messages[0].content }}"}, REFUSED),  # not trusted
    "chat_template_kwargs": ({"chat_template_kwargs": {"custom": 1}}, OK),  # test_chat_template
    "mm_processor_kwargs": ({"mm_processor_kwargs": {"num_crops": 4}}, REFUSED),
    "request_id": ({"request_id": "my-request-7"}, _id_is("chatcmpl")),
    "return_token_ids": ({"return_token_ids": True}, _chat_token_ids),
    "return_tokens_as_token_ids": (
        {"logprobs": True, "return_tokens_as_token_ids": True, "return_token_ids": True},
        _chat_tokens_as_ids,
    ),
    "prompt_logprobs": (
        {"prompt_logprobs": 1},
        lambda c, d: d["prompt_logprobs"][0] is None and len(d["prompt_logprobs"]) > 1,
    ),
}
COMPLETION_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    **SAMPLING,
    "model": ({"model": "SmolLM2-135M-Instruct"}, OK),
    "prompt": ({}, OK),
    "logprobs": ({"logprobs": 1}, lambda c, d: d["choices"][0]["logprobs"]["tokens"]),
    "suffix": ({"suffix": "the end"}, REFUSED),
    "prompt_embeds": ({"prompt_embeds": "AAAA"}, REFUSED),
    "bad_words": ({"bad_words": ["Paris"]}, OK),
    "request_id": ({"request_id": "my-request-7"}, _id_is("cmpl")),
    "return_token_ids": ({"return_token_ids": True}, _completion_token_ids),
    "return_tokens_as_token_ids": (
        {"logprobs": 0, "return_tokens_as_token_ids": True, "return_token_ids": True},
        _completion_tokens_as_ids,
    ),
    "prompt_logprobs": (
        {"prompt_logprobs": 1},
        lambda c, d: d["choices"][0]["prompt_logprobs"][0] is None,
    ),
}
_POOLING_COMMON_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "model": ({"model": EMBED}, OK),
    "user": ({"user": "u-1"}, OK),  # no effect, as in vLLM
    "priority": ({"priority": -1}, OK),  # the encode queue's order: engine scheduler tests
    "mm_processor_kwargs": ({"mm_processor_kwargs": {"a": 1}}, REFUSED),
    "softmax": ({"softmax": True}, REFUSED),
    "activation": ({"activation": True}, REFUSED),
    "use_activation": ({"use_activation": True}, REFUSED),
}
EMBEDDING_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    **_POOLING_COMMON_CASES,
    "input": ({}, OK),
    "truncate_prompt_tokens": ({"truncate_prompt_tokens": 2}, _prompt_tokens(2)),
    "request_id": ({"request_id": "my-request-7"}, _id_is("embd")),
    "encoding_format": ({"encoding_format": "base64"}, _base64_is("float32")),
    "embed_dtype": ({"encoding_format": "base64", "embed_dtype": "float16"}, _base64_is("float16")),
    "endianness": (
        {"encoding_format": "base64", "endianness": "big"},
        _base64_is("float32", "big"),
    ),
    "dimensions": ({"dimensions": 384}, _dimensions),
    "add_special_tokens": ({"add_special_tokens": False}, _prompt_tokens(1)),
    "normalize": ({"normalize": False}, _not_normalized),
    # the chat variant: conversations are not embedded here
    "messages": ({"messages": MESSAGES}, REFUSED),
    "add_generation_prompt": ({"add_generation_prompt": True}, REFUSED),
    "continue_final_message": ({"continue_final_message": True}, REFUSED),
    "chat_template": ({"chat_template": "{{ 1 }}"}, REFUSED),
    "chat_template_kwargs": ({"chat_template_kwargs": {"a": 1}}, REFUSED),
}
POOLING_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    **EMBEDDING_CASES,
    "request_id": ({"request_id": "my-request-7"}, _id_is("pool")),
    "task": ({"task": "classify"}, REFUSED),
    "data": ({"data": {"x": 1}}, REFUSED),
}
SCORE_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    **_POOLING_COMMON_CASES,
    "text_1": ({}, OK),
    "text_2": ({}, OK),
    "truncate_prompt_tokens": ({"truncate_prompt_tokens": 2}, _prompt_tokens(4)),
    "request_id": ({"request_id": "my-request-7"}, _id_is("score")),
    "encoding_format": ({"encoding_format": "base64"}, REFUSED),  # not vLLM's: never dropped
}
RERANK_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    **_POOLING_COMMON_CASES,
    "query": ({}, OK),
    "documents": ({}, OK),
    "top_n": ({"top_n": 1}, _top_n),
    "truncate_prompt_tokens": (
        {"truncate_prompt_tokens": 2},
        lambda c, d: d["usage"]["total_tokens"] == 4,
    ),
    "request_id": ({"request_id": "my-request-7"}, _id_is("rerank")),
}
TOKENIZE_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "model": ({"model": "SmolLM2-135M-Instruct"}, OK),
    "prompt": ({}, OK),
    "add_special_tokens": ({"add_special_tokens": False}, OK),
    "return_token_strs": ({"return_token_strs": True}, _token_strs),
}
TOKENIZE_CHAT_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    **TOKENIZE_CASES,
    "messages": ({}, OK),
    "add_generation_prompt": ({"add_generation_prompt": False}, OK),
    "continue_final_message": (
        {"continue_final_message": True, "add_generation_prompt": False},
        OK,
    ),
    "chat_template": ({"chat_template": "{{ messages[0].content }}"}, REFUSED),  # not trusted
    "chat_template_kwargs": ({"chat_template_kwargs": {"custom": 1}}, OK),
    "mm_processor_kwargs": ({"mm_processor_kwargs": {"a": 1}}, REFUSED),
    "tools": ({"tools": [{"type": "function", "function": {"name": "f"}}]}, OK),  # below
}
DETOKENIZE_CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "model": ({"model": "SmolLM2-135M-Instruct"}, OK),
    "tokens": ({}, lambda c, d: d["prompt"] == "Hello"),
}

CHAT_BASE = {"messages": MESSAGES, "max_tokens": 3, "temperature": 0}
COMPLETION_BASE = {"prompt": "Paris is", "max_tokens": 3, "temperature": 0}
EMBED_BASE = {"model": EMBED, "input": "hello"}
APIS: dict[str, tuple[str, dict[str, Any], tuple[str, ...], dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", CHAT_BASE, CHAT_FIELDS, CHAT_CASES),
    "completions": ("/v1/completions", COMPLETION_BASE, COMPLETION_FIELDS, COMPLETION_CASES),
    "embeddings": ("/v1/embeddings", EMBED_BASE, EMBEDDING_FIELDS, EMBEDDING_CASES),
    "embeddings-chat": ("/v1/embeddings", EMBED_BASE, EMBEDDING_CHAT_FIELDS, EMBEDDING_CASES),
    "pooling": ("/pooling", EMBED_BASE, POOLING_FIELDS, POOLING_CASES),
    "score": (
        "/score",
        {"model": EMBED, "text_1": "a b", "text_2": "c d"},
        SCORE_FIELDS,
        SCORE_CASES,
    ),
    "rerank": (
        "/rerank",
        {"model": EMBED, "query": "a b", "documents": ["c"]},
        RERANK_FIELDS,
        RERANK_CASES,
    ),
    "tokenize": ("/tokenize", {"prompt": "hello"}, TOKENIZE_FIELDS, TOKENIZE_CASES),
    "tokenize-chat": (
        "/tokenize",
        {"messages": MESSAGES},
        TOKENIZE_CHAT_FIELDS,
        TOKENIZE_CHAT_CASES,
    ),
    "detokenize": ("/detokenize", {"tokens": [19556]}, DETOKENIZE_FIELDS, DETOKENIZE_CASES),
}
OUR_TYPES: dict[str, type[msgspec.Struct]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
    "embeddings-chat": EmbeddingRequest,
    "pooling": PoolingRequest,
    "score": ScoreRequest,
    "rerank": RerankRequest,
    "tokenize": TokenizeRequest,
    "tokenize-chat": TokenizeRequest,
    "detokenize": DetokenizeRequest,
}


def _all_cases() -> Iterator[tuple[str, str]]:
    for api, (_, _, fields, _) in APIS.items():
        for field in fields:
            yield api, field


# ---- unit: no model ------------------------------------------------------------------------


@pytest.mark.parametrize("api", list(APIS))
def test_every_vllm_field_is_declared_and_has_a_case(api: str) -> None:
    """Declared: decoding keeps it (so it is honoured or refused, never dropped)."""
    _, _, fields, cases = APIS[api]
    declared = {f.encode_name for f in msgspec.structs.fields(OUR_TYPES[api])}
    assert not set(fields) - declared
    assert not set(fields) - cases.keys()


# ---- on the models ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("api", "field"), list(_all_cases()))
def test_every_vllm_field_is_honoured_or_refused(both: Any, api: str, field: str) -> None:
    path, base, _, cases = APIS[api]
    extra, expect = cases[field]
    body = {**base, **extra}
    if api == "detokenize" and field == "tokens":
        body["tokens"] = _tokenizer(both).encode("Hello", False)
    status, data = both.post(path, body)
    if expect == REFUSED:
        assert status == 400, data
        assert data["error"]["param"] == field, data
        assert field in data["error"]["message"]
        return
    assert status == 200, data
    if callable(expect):
        result = expect(both, data)
        assert result is None or result, f"{field}: {data}"


# ---- behaviours that need a service of their own -------------------------------------------

TEMPLATE = (
    "{% for d in documents %}DOC {{ d.title }}: {{ d.text }}\n{% endfor %}"
    "{% for t in tools %}TOOL {{ t.function.name }}\n{% endfor %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def make_service(both: Any, make_client: Callable[[OpenAIService], Any]) -> Callable[..., Any]:
    """`make_service(**options)`: a client of a service on `both`'s models, with options."""
    models: list[ServedModel] = both.service.models

    def make(**options: Any) -> Any:
        return make_client(OpenAIService(models, options=ServiceOptions(**options)))

    return make


@pytest.mark.slow
def test_tokenize_renders_exactly_as_chat(make_service: Callable[..., Any]) -> None:
    client = make_service(trust_request_chat_template=True)
    fields = {
        "messages": MESSAGES,
        "tools": [{"type": "function", "function": {"name": "lookup"}}],
        "documents": [{"title": "Atlas", "text": "Paris is the capital."}],
        "chat_template": TEMPLATE,
    }
    tokens = client.ok("/tokenize", fields)["tokens"]
    chat = client.ok(
        "/v1/chat/completions",
        {**fields, "tool_choice": "none", "max_tokens": 1, "return_token_ids": True},
    )
    assert chat["prompt_token_ids"] == tokens
    text = client.ok("/detokenize", {"tokens": tokens})["prompt"]
    assert text.startswith("DOC Atlas: Paris is the capital.\nTOOL lookup\n<|im_start|>user")


@pytest.mark.slow
def test_response_role(make_service: Callable[..., Any]) -> None:
    client = make_service(response_role="bot")
    data = client.ok("/v1/chat/completions", CHAT_BASE)
    assert data["choices"][0]["message"]["role"] == "bot"
    events = client.stream("/v1/chat/completions", CHAT_BASE)
    assert events[0]["choices"][0]["delta"] == {"role": "bot", "content": ""}


@pytest.mark.slow
def test_force_include_usage(make_service: Callable[..., Any]) -> None:
    client = make_service(enable_force_include_usage=True)
    events = client.stream("/v1/completions", COMPLETION_BASE)[:-1]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3
    assert all("usage" not in e for e in events[:-1])


@pytest.mark.slow
def test_prompt_tokens_details_from_the_prefix_cache(make_service: Callable[..., Any]) -> None:
    client = make_service(enable_prompt_tokens_details=True)
    body = {**COMPLETION_BASE, "prompt": "The history of Paris " * 20}
    client.ok("/v1/completions", body)
    again = client.ok("/v1/completions", body)["usage"]
    cached = again["prompt_tokens_details"]["cached_tokens"]
    assert 16 <= cached < again["prompt_tokens"] and cached % 16 == 0
    stream = client.stream("/v1/completions", {**body, "stream_options": {"include_usage": True}})
    assert stream[-2]["usage"]["prompt_tokens_details"]["cached_tokens"] == cached
    plain = make_service().ok("/v1/completions", body)["usage"]
    assert "prompt_tokens_details" not in plain


@pytest.mark.slow
def test_return_tokens_as_token_ids_by_default(make_service: Callable[..., Any]) -> None:
    client = make_service(return_tokens_as_token_ids=True)
    body = {**CHAT_BASE, "logprobs": True, "return_token_ids": True}
    _chat_tokens_as_ids(client, client.ok("/v1/chat/completions", body))
    plain = client.ok("/v1/chat/completions", {**body, "return_tokens_as_token_ids": False})
    assert not plain["choices"][0]["logprobs"]["content"][0]["token"].startswith("token_id:")


@pytest.mark.slow
def test_return_token_ids_in_streams(both: Any) -> None:
    body = {**CHAT_BASE, "return_token_ids": True}
    whole = both.ok("/v1/chat/completions", body)
    events = both.stream("/v1/chat/completions", body)[:-1]
    assert events[0]["prompt_token_ids"] == whole["prompt_token_ids"]
    ids = [i for e in events[1:] for c in e["choices"] for i in c.get("token_ids") or []]
    assert ids == whole["choices"][0]["token_ids"]
    body = {**COMPLETION_BASE, "return_token_ids": True}
    whole = both.ok("/v1/completions", body)
    events = both.stream("/v1/completions", body)[:-1]
    assert events[0]["choices"][0]["prompt_token_ids"] == whole["choices"][0]["prompt_token_ids"]
    assert all("prompt_token_ids" not in c for e in events[1:] for c in e["choices"])
    ids = [i for e in events for c in e["choices"] for i in c.get("token_ids") or []]
    assert ids == whole["choices"][0]["token_ids"]


@pytest.mark.slow
def test_the_header_request_id_wins_over_the_body(both: Any) -> None:
    body = json.dumps({**CHAT_BASE, "request_id": "from-body"}).encode()
    headers = [("content-type", "application/json"), ("x-request-id", "from-header")]
    request = ServiceRequest("POST", "/v1/chat/completions", headers, body, "from-header")
    answer = both.run(both.service.handle(request))
    assert json.loads(answer.body)["id"] == "chatcmpl-from-header"


@pytest.mark.slow
def test_trusted_chat_template_is_used(make_service: Callable[..., Any]) -> None:
    client = make_service(trust_request_chat_template=True)
    data = client.ok(
        "/tokenize", {"messages": MESSAGES, "chat_template": "X{{ messages[0].content }}"}
    )
    assert client.ok("/detokenize", {"tokens": data["tokens"]})["prompt"].startswith("XWhat")


# ---- unit: the parts that need no model ----------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("endianness", ["native", "little", "big"])
def test_base64_vectors_round_trip_in_every_dtype(dtype: str, endianness: str) -> None:
    data = torch.tensor([0.5, -1.25, 3.0, 0.1])
    encoding = vector_encoding("base64", dtype, endianness)
    decoded = decode_base64(str(encode_vector(data, encoding)), dtype, endianness)
    assert np.array_equal(decoded, data.to(EMBED_DTYPES[dtype]).float().numpy())


def test_base64_is_the_raw_values_in_the_dtype() -> None:
    data = torch.tensor([0.5, -1.25, 3.0])
    little = encode_vector(data, vector_encoding("base64", "float16", "little"))
    assert base64.b64decode(str(little)) == np.array([0.5, -1.25, 3.0], "<f2").tobytes()
    big = encode_vector(data, vector_encoding("base64", "float16", "big"))
    assert base64.b64decode(str(big)) == np.array([0.5, -1.25, 3.0], ">f2").tobytes()
    assert encode_vector(data, vector_encoding(None, "float16", None)) == [0.5, -1.25, 3.0]


@pytest.mark.parametrize(
    ("fmt", "dtype", "order", "param"),
    [("bin", None, None, "encoding_format"), (None, "int8", None, "embed_dtype"),
     (None, None, "middle", "endianness")],
)  # fmt: skip
def test_bad_vector_encodings_are_refused_by_name(
    fmt: str | None, dtype: str | None, order: str | None, param: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        vector_encoding(fmt, dtype, order)
    assert info.value.param == param


def test_request_id_header_wins_then_body_then_transport() -> None:
    marked = ServiceRequest("POST", "/x", [("x-request-id", "h")], b"", "h").request_id
    assert isinstance(marked, HeaderRequestId)
    unmarked = ServiceRequest("POST", "/x", [], b"", "made-up").request_id
    assert not isinstance(unmarked, HeaderRequestId)
    assert resolve_request_id(marked, "body") == "h"
    assert resolve_request_id(unmarked, "body") == "body"
    assert resolve_request_id(unmarked, None) == "made-up"
    with pytest.raises(InvalidRequestError):
        resolve_request_id(unmarked, "x" * 1000)


def test_unknown_fields_are_logged_once_per_name(caplog: pytest.LogCaptureFixture) -> None:
    UNKNOWN_FIELDS.logged.discard("zz_unknown")
    with caplog.at_level(logging.WARNING, logger="llmcore.openai"):
        req = CHAT_DECODER.decode(b'{"messages": [], "zz_unknown": 1, "store": true}')
        CHAT_DECODER.decode(b'{"messages": [], "zz_unknown": 2}')
    assert type(req) is ChatCompletionRequest and req.store is True
    logged = [r.getMessage() for r in caplog.records if "zz_unknown" in r.getMessage()]
    assert len(logged) == 1 and "store" not in logged[0]


def test_known_fields_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llmcore.openai"):
        for api, (_, _, fields, cases) in APIS.items():
            decoder = RequestDecoder(OUR_TYPES[api])
            for field in fields:
                body = {**APIS[api][1], **cases[field][0]}
                try:
                    decoder.decode(json.dumps(body).encode())
                except msgspec.ValidationError:
                    pass
    assert not caplog.records
