"""SamplingParams.validate: every invalid value is refused, naming its field."""

from __future__ import annotations

import math

import pytest

from llmcore.errors import InvalidRequestError
from llmcore.sampling_params import DEFAULT_MAX_LOGPROBS, SamplingParams

VOCAB = 100

INVALID: list[tuple[dict[str, object], str]] = [
    ({"n": 0}, "n"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": math.nan}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 2.0}, "min_p"),
    ({"min_p": -0.1}, "min_p"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"presence_penalty": -2.01}, "presence_penalty"),
    ({"frequency_penalty": -3.0}, "frequency_penalty"),
    ({"frequency_penalty": math.inf}, "frequency_penalty"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"logit_bias": {VOCAB: 1.0}}, "logit_bias"),
    ({"logit_bias": {-1: 1.0}}, "logit_bias"),
    ({"logit_bias": {0: 100.5}}, "logit_bias"),
    ({"logit_bias": {0: math.nan}}, "logit_bias"),
    ({"logprobs": DEFAULT_MAX_LOGPROBS + 1}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"prompt_logprobs": DEFAULT_MAX_LOGPROBS + 1}, "prompt_logprobs"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 17, "max_tokens": 16}, "min_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"allowed_token_ids": []}, "allowed_token_ids"),
    ({"allowed_token_ids": [1, VOCAB]}, "allowed_token_ids"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": [VOCAB]}, "stop_token_ids"),
    ({"stop": ["ok", ""]}, "stop"),
]


@pytest.mark.parametrize(("fields", "param"), INVALID, ids=[f"{f}" for f, _ in INVALID])
def test_invalid_value_raises_naming_the_field(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**fields).validate(VOCAB)  # type: ignore[arg-type]
    assert info.value.param == param
    assert info.value.status == 400
    assert param in info.value.message


def test_defaults_are_valid() -> None:
    SamplingParams().validate(VOCAB)


VALID: list[dict[str, object]] = [
    {"temperature": 0.0},
    {"top_p": 1.0, "top_k": -1, "min_p": 1.0},
    {"top_k": 0},
    {"presence_penalty": -2.0, "frequency_penalty": 2.0, "repetition_penalty": 0.1},
    {"logit_bias": {0: -100.0, VOCAB - 1: 100.0}},
    {"logprobs": 0, "prompt_logprobs": DEFAULT_MAX_LOGPROBS},
    {"min_tokens": 16, "max_tokens": 16},
    {"min_tokens": 1000, "max_tokens": None},
    {"allowed_token_ids": [0, VOCAB - 1], "stop_token_ids": [VOCAB - 1], "stop": ["\n"]},
]


@pytest.mark.parametrize("fields", VALID, ids=[f"{f}" for f in VALID])
def test_valid_edge_values_pass(fields: dict[str, object]) -> None:
    SamplingParams(**fields).validate(VOCAB)  # type: ignore[arg-type]


def test_the_logprobs_cap_is_configurable() -> None:
    SamplingParams(logprobs=50).validate(VOCAB, max_logprobs=50)
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(logprobs=6).validate(VOCAB, max_logprobs=5)
    assert info.value.param == "logprobs"
