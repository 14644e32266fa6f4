"""POST /v1/completions through `OpenAIService.handle` on SmolLM2: usage arithmetic,
streamed == non-streamed, stream_options, logprobs and echo shapes, n and lists of
prompts, and the 400s (context length, vocabulary, unsupported fields)."""

from __future__ import annotations

from typing import Any

import pytest

from llmcore.openai import OpenAIService
from llmcore.tokenization.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # the service runs on SmolLM2 (the smollm2 fixture)

URL = "/v1/completions"
PROMPT = "The capital of France is"
GREEDY = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}


def finish_reasons(events: list[Any]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for event in events:
        if event == "[DONE]":
            continue
        for choice in event["choices"]:
            if choice["finish_reason"] is not None:
                out.setdefault(choice["index"], []).append(choice["finish_reason"])
    return out


def texts(events: list[Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    for event in events:
        if event == "[DONE]":
            continue
        for choice in event["choices"]:
            out[choice["index"]] = out.get(choice["index"], "") + choice["text"]
    return out


def test_usage_counts_each_prompt_once_and_every_token(client: Any, tokenizer: Tokenizer) -> None:
    prompts = ["Once upon a time", "The quick brown fox"]
    body = {"prompt": prompts, "n": 2, "max_tokens": 4, "temperature": 0, "logprobs": 0}
    data = client.ok(URL, body)
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    usage = data["usage"]
    assert usage["prompt_tokens"] == sum(len(tokenizer.encode(p)) for p in prompts)
    generated = sum(len(c["logprobs"]["tokens"]) for c in data["choices"])
    assert usage["completion_tokens"] == generated
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(c["finish_reason"] in ("stop", "length") for c in data["choices"])
    # choice index = prompt index * n + i: both completions of a greedy prompt agree
    assert data["choices"][0]["text"] == data["choices"][1]["text"]
    assert data["choices"][2]["text"] == data["choices"][3]["text"]


def test_token_id_prompts(client: Any, tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(PROMPT)
    by_ids = client.ok(URL, {**GREEDY, "prompt": ids})
    by_lists = client.ok(URL, {**GREEDY, "prompt": [ids, ids[:3]]})
    by_text = client.ok(URL, GREEDY)
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    assert by_lists["choices"][0]["text"] == by_text["choices"][0]["text"]
    assert by_lists["usage"]["prompt_tokens"] == len(ids) + 3


def test_streamed_text_equals_non_streamed_with_one_finish_per_choice(client: Any) -> None:
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 1.0, "seed": 11, "n": 3}
    whole = client.ok(URL, body)
    events = client.stream(URL, body)
    assert texts(events) == {c["index"]: c["text"] for c in whole["choices"]}
    assert finish_reasons(events) == {c["index"]: [c["finish_reason"]] for c in whole["choices"]}
    assert all(e["object"] == "text_completion" for e in events[:-1])


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("continuous", [False, True])
def test_stream_options(client: Any, include_usage: bool, continuous: bool) -> None:
    options = {"include_usage": include_usage, "continuous_usage_stats": continuous}
    whole = client.ok(URL, GREEDY)
    events = client.stream(URL, {**GREEDY, "stream_options": options})[:-1]
    content = [e for e in events if e["choices"]]
    final = [e for e in events if not e["choices"]]
    assert content and texts(content)[0] == whole["choices"][0]["text"]
    if include_usage:
        assert len(final) == 1 and final[0] is events[-1]
        assert final[0]["usage"] == whole["usage"]
    else:
        assert not final
    if continuous:
        completion = [e["usage"]["completion_tokens"] for e in content]
        assert completion == sorted(completion) and completion[-1] == 6
        assert all(e["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"] for e in content)
    else:
        assert all("usage" not in e for e in content)


def test_stream_options_without_stream_is_a_400(client: Any) -> None:
    status, data = client.post(URL, {**GREEDY, "stream_options": {"include_usage": True}})
    assert status == 400 and data["error"]["param"] == "stream_options"


def check_completion_logprobs(lp: dict[str, Any], text: str, k: int) -> None:
    n = len(lp["tokens"])
    assert n and all(len(lp[key]) == n for key in ("token_logprobs", "top_logprobs", "text_offset"))
    assert "".join(lp["tokens"]) == text
    offsets = [0]
    for token in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp["text_offset"] == offsets
    for token, logprob, top in zip(
        lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
    ):
        if logprob is None:
            assert top is None
            continue
        assert logprob <= 0 and token in top and top[token] == logprob
        assert k <= len(top) <= k + 1 and all(v <= 0 for v in top.values())


def test_logprobs_shape_streamed_and_not(client: Any) -> None:
    body = {**GREEDY, "logprobs": 3}
    whole = client.ok(URL, body)["choices"][0]
    check_completion_logprobs(whole["logprobs"], whole["text"], 3)
    events = client.stream(URL, body)
    streamed = [c["logprobs"] for e in events[:-1] for c in e["choices"] if c["logprobs"]]
    joined = {key: [x for lp in streamed for x in lp[key]] for key in streamed[0]}
    assert joined == whole["logprobs"]


def test_logprobs_above_the_cap_is_a_400(client: Any) -> None:
    status, data = client.post(URL, {**GREEDY, "logprobs": 21})
    assert (
        status == 400 and data["error"]["param"] == "logprobs" and "20" in data["error"]["message"]
    )


def test_echo_with_logprobs(client: Any, tokenizer: Tokenizer) -> None:
    body = {**GREEDY, "max_tokens": 3, "echo": True, "logprobs": 1}
    choice = client.ok(URL, body)["choices"][0]
    assert choice["text"].startswith(PROMPT) and len(choice["text"]) > len(PROMPT)
    lp = choice["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(x is not None for x in lp["token_logprobs"][1:])
    assert len(lp["tokens"]) == len(tokenizer.encode(PROMPT)) + 3
    check_completion_logprobs(lp, choice["text"], 1)
    events = client.stream(URL, body)
    assert texts(events)[0] == choice["text"]
    assert events[0]["choices"][0]["text"].startswith(PROMPT)


def test_prompt_logprobs_extension(client: Any, tokenizer: Tokenizer) -> None:
    choice = client.ok(URL, {**GREEDY, "prompt_logprobs": 2})["choices"][0]
    prompt_lps = choice["prompt_logprobs"]
    ids = tokenizer.encode(PROMPT)
    assert len(prompt_lps) == len(ids) and prompt_lps[0] is None
    for token_id, entry in zip(ids[1:], prompt_lps[1:], strict=True):
        assert str(token_id) in entry and 2 <= len(entry) <= 3


def test_logit_bias(client: Any, tokenizer: Tokenizer) -> None:
    status, data = client.post(URL, {**GREEDY, "logit_bias": {"99999": 5}})
    message = data["error"]["message"]
    assert status == 400 and "99999" in message and str(tokenizer.vocab_size) in message
    status, data = client.post(URL, {**GREEDY, "logit_bias": {"paris": 5}})
    assert status == 400 and data["error"]["param"] == "logit_bias"
    paris = tokenizer.encode(" London", add_special_tokens=False)[0]
    forced = client.ok(URL, {**GREEDY, "max_tokens": 1, "logit_bias": {str(paris): 100}})
    assert forced["choices"][0]["text"] == " London"


def test_context_length(
    client: Any, engine: Any, make_served: Any, make_client: Any, tokenizer: Tokenizer
) -> None:
    limit = engine.core.max_model_len
    status, data = client.post(URL, {**GREEDY, "max_tokens": limit})
    prompt_tokens = len(tokenizer.encode(PROMPT))
    message = data["error"]["message"]
    assert status == 400 and data["error"]["code"] == "context_length_exceeded"
    assert str(limit) in message and str(prompt_tokens) in message
    small = make_client(OpenAIService([make_served(engine, max_model_len=32)]))
    prompt = tokenizer.encode(" word" * 28, add_special_tokens=False)
    assert len(prompt) == 28
    at_limit = small.ok(
        URL, {"prompt": prompt, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    )
    assert at_limit["usage"]["total_tokens"] == 32
    status, data = small.post(URL, {"prompt": prompt, "max_tokens": 5})
    assert status == 400 and "28" in data["error"]["message"] and "5" in data["error"]["message"]
    status, data = small.post(URL, {"prompt": prompt + [1] * 4, "max_tokens": None})
    assert status == 400 and "32" in data["error"]["message"]


@pytest.mark.parametrize(
    "prompt", [[1, 2, 49152], [[5, 6], [-1]], "", [], [[]], ["text", 5], [[1], "text"]]
)
def test_bad_prompts_are_400s(client: Any, prompt: Any) -> None:
    status, data = client.post(URL, {"prompt": prompt, "max_tokens": 2})
    assert status == 400 and data["error"]["param"] == "prompt", data


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("suffix", "the end"),
        ("response_format", {"type": "xml"}),
        ("best_of", 3),
        ("use_beam_search", True),
        ("guided_json", {"type": "object", "if": {}}),
        ("guided_regex", "(unclosed"),
        ("guided_decoding_backend", "outlines"),
    ],
)
def test_unsupported_fields_are_400s_naming_them(client: Any, field: str, value: Any) -> None:
    status, data = client.post(URL, {**GREEDY, field: value})
    assert status == 400 and data["error"]["param"] == field and field in data["error"]["message"]


def test_unknown_fields_are_ignored_and_harmless_ones_accepted(client: Any) -> None:
    body = {
        **GREEDY,
        "max_tokens": 2,
        "metadata": {"a": 1},
        "x_custom": [1, 2],
        "user": "u1",
        "response_format": {"type": "text"},
        "best_of": 1,
        "suffix": None,
    }
    assert client.ok(URL, body)["choices"][0]["finish_reason"] == "length"


def test_decode_errors_name_the_field(client: Any) -> None:
    status, data = client.post(URL, {**GREEDY, "temperature": "hot"})
    assert status == 400 and data["error"]["param"] == "temperature"
    assert data["error"]["type"] == "invalid_request_error"
    status, data = client.call("POST", URL, raw=b"{not json")
    assert status == 400
    status, data = client.post(URL, {"max_tokens": 2})
    assert status == 400 and "prompt" in data["error"]["message"]


def test_the_openai_sdk_parses_responses_and_chunks(client: Any) -> None:
    openai_types = pytest.importorskip("openai.types")
    # (echo + logprobs is left out: the SDK's types do not allow the null logprob of the
    # first prompt token that the API sends)
    body = {**GREEDY, "n": 2, "logprobs": 2}
    whole = openai_types.Completion.model_validate(client.ok(URL, body))
    assert openai_types.Completion.model_validate(client.ok(URL, {**GREEDY, "echo": True}))
    assert [c.index for c in whole.choices] == [0, 1] and whole.choices[0].logprobs is not None
    events = client.stream(URL, {**body, "stream_options": {"include_usage": True}})
    # chunks carry finish_reason null, which the SDK's Completion (used unvalidated for
    # streams) does not declare: validate the usage chunk only
    assert openai_types.Completion.model_validate(events[-2]).usage == whole.usage
    _, models = client.call("GET", "/v1/models")
    assert openai_types.Model.model_validate(models["data"][0]).id == whole.model
