"""Structured outputs without a model: the constraint's validation, its extraction
from OpenAI/vLLM request fields, and the bitmask arithmetic."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import torch

from llmcore.errors import InvalidRequestError
from llmcore.openai.protocol import CHAT_DECODER
from llmcore.openai.structured import structured_outputs_of
from llmcore.sampling_params import SamplingParams
from llmcore.structured_outputs import ConstraintKind, StructuredOutputsParams
from llmcore.structured_outputs.backend import apply_bitmask, bitmask_words

MESSAGES = [{"role": "user", "content": "hi"}]


def spec_of(**fields: Any) -> StructuredOutputsParams | None:
    body = msgspec.json.encode({"messages": MESSAGES, **fields})
    return structured_outputs_of(CHAT_DECODER.decode(body))


@pytest.mark.parametrize(
    ("fields", "kind", "param"),
    [
        (
            {"response_format": {"type": "json_object"}},
            ConstraintKind.JSON_OBJECT,
            "response_format",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {}},
                }
            },
            ConstraintKind.JSON,
            "response_format",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            ConstraintKind.JSON_OBJECT,
            "response_format",
        ),
        ({"guided_json": '{"type": "object"}'}, ConstraintKind.JSON, "guided_json"),
        ({"guided_regex": "a+"}, ConstraintKind.REGEX, "guided_regex"),
        ({"guided_choice": ["a", "b"]}, ConstraintKind.CHOICE, "guided_choice"),
        ({"guided_grammar": "start: /a/"}, ConstraintKind.GRAMMAR, "guided_grammar"),
        ({"structured_outputs": {"regex": "[0-9]+"}}, ConstraintKind.REGEX, "structured_outputs"),
        (
            {"structured_outputs": {"json": {"type": "object"}, "disable_any_whitespace": True}},
            ConstraintKind.JSON,
            "structured_outputs",
        ),
        (
            {"response_format": {"type": "structural_tag", "structures": [], "triggers": []}},
            ConstraintKind.STRUCTURAL_TAG,
            "response_format",
        ),
    ],
)
def test_each_spelling_becomes_one_constraint(
    fields: dict[str, Any], kind: ConstraintKind, param: str
) -> None:
    spec = spec_of(**fields)
    assert spec is not None and spec.kind is kind and spec.param == param


def test_no_constraint_and_text_format_are_none() -> None:
    assert spec_of() is None
    assert spec_of(response_format={"type": "text"}) is None
    assert spec_of(guided_decoding_backend="guidance") is None


def test_whitespace_pattern_reaches_the_constraint() -> None:
    spec = spec_of(guided_json={"type": "object"}, guided_whitespace_pattern=" ?")
    assert spec is not None and spec.whitespace_pattern == " ?"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_grammar": "   "}, "guided_grammar"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_json": "[1, 2]"}, "guided_json"),
        ({"guided_decoding_backend": "xgrammar"}, "guided_decoding_backend"),
        ({"guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),
        ({"structured_outputs": {}}, "structured_outputs"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ],
)
def test_bad_constraints_are_refused_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        spec_of(**fields)
    assert info.value.param == param and param in str(info.value)


def test_a_misspelt_structured_outputs_key_is_a_decode_error() -> None:
    body = msgspec.json.encode({"messages": MESSAGES, "structured_outputs": {"regexp": "a"}})
    with pytest.raises(Exception, match="regexp"):
        CHAT_DECODER.decode(body)


def test_sampling_params_validate_their_constraint() -> None:
    SamplingParams(structured_outputs=StructuredOutputsParams(choice=["a"])).validate(10)
    with pytest.raises(InvalidRequestError, match="choice"):
        SamplingParams(structured_outputs=StructuredOutputsParams(choice=[])).validate(10)
    with pytest.raises(InvalidRequestError, match="only one kind"):
        StructuredOutputsParams(regex="a", grammar="start: /a/").validate()


@pytest.mark.parametrize("density", [0.02, 0.4])  # sparse rows are rebuilt, dense ones masked
@pytest.mark.parametrize("vocab", [1, 31, 32, 33, 100, 1000])
def test_apply_bitmask_keeps_exactly_the_allowed_tokens(vocab: int, density: float) -> None:
    gen = torch.Generator().manual_seed(vocab)
    allowed = torch.rand(3, vocab, generator=gen) < density
    words = bitmask_words(vocab)
    bitmask = torch.zeros(3, words, dtype=torch.int32)
    for row in range(3):
        for token in allowed[row].nonzero().view(-1).tolist():
            word, bit = divmod(token, 32)
            value = int(bitmask[row, word]) & 0xFFFFFFFF | (1 << bit)
            bitmask[row, word] = value - (1 << 32) if value >= 1 << 31 else value
    logits = torch.randn(5, vocab, generator=gen)
    expected = logits.clone()
    rows = [0, 2, 3]
    for j, row in enumerate(rows):
        expected[row][~allowed[j]] = float("-inf")
    apply_bitmask(logits, bitmask, rows)
    assert torch.equal(logits, expected)
    every = torch.randn(3, vocab, generator=gen)
    want = every.masked_fill(~allowed, float("-inf"))
    apply_bitmask(every, bitmask, [0, 1, 2])
    assert torch.equal(every, want)
