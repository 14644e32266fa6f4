"""Structured outputs in the engine on SmolLM2-135M-Instruct: every completion
matches its constraint, also when preempted, sampled, with n > 1, aborted, cut by
max_tokens or a stop string; unconstrained neighbours are untouched; the masks'
time is counted."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

import llmcore
from llmcore.engine.config import EngineConfig
from llmcore.engine.core import EngineCore
from llmcore.errors import InvalidRequestError
from llmcore.sampling_params import SamplingParams
from llmcore.structured_outputs import StructuredOutputsParams
from llmcore.tokenization.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # SmolLM2 (the smollm2 fixture)

BLOCK = 16
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(smollm2: llmcore.LoadedModel) -> Tokenizer:
    return llmcore.load_tokenizer(smollm2.path)


def make_core(smollm2: llmcore.LoadedModel, tokenizer: Tokenizer, **options: Any) -> EngineCore:
    options.setdefault("kv_cache_memory", 96 << 20)
    return EngineCore(smollm2, tokenizer, EngineConfig(block_size=BLOCK, **options))


def chat_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    rendered = (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    return tokenizer.encode(rendered, add_special_tokens=False)


def run(core: EngineCore, prompts: list[list[int]], params: list[SamplingParams]) -> list[Any]:
    texts: dict[str, list[dict[str, Any]]] = {}
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        core.add(core.make_requests(prompt, p, f"r{i}"))
        texts[f"r{i}"] = [{"text": "", "ids": [], "finish": None} for _ in range(p.n)]
    while core.has_work():
        for out in core.step():
            for c in out.outputs:
                acc = texts[out.request_id][c.index]
                acc["text"] += c.text
                acc["ids"] += c.token_ids
                acc["finish"] = c.finish_reason
    return [texts[f"r{i}"] for i in range(len(prompts))]


def json_params(**options: Any) -> SamplingParams:
    options.setdefault("temperature", 0.0)
    options.setdefault("max_tokens", 120)
    return SamplingParams(structured_outputs=StructuredOutputsParams(json=PERSON), **options)


def assert_person(completion: dict[str, Any]) -> None:
    assert completion["finish"] == "stop", completion
    jsonschema.validate(json.loads(completion["text"]), PERSON)


def test_constrained_outputs_match_and_neighbours_are_untouched(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    prompts = [chat_prompt(tokenizer, f"Describe person number {i} as JSON.") for i in range(6)]
    free = SamplingParams(temperature=0.0, max_tokens=24)
    params = [json_params() if i % 2 else free for i in range(6)]
    core = make_core(smollm2, tokenizer)
    mixed = run(core, prompts, params)
    alone = run(make_core(smollm2, tokenizer), prompts[::2], params[::2])
    assert [mixed[i] for i in range(0, 6, 2)] == alone
    for i in range(1, 6, 2):
        assert_person(mixed[i][0])
    stats = core.structured.statistics()
    assert stats.num_compiled == 3 and stats.num_mask_rows > 0 and stats.mask_seconds > 0


def test_sampled_completions_each_match(smollm2: llmcore.LoadedModel, tokenizer: Tokenizer) -> None:
    prompt = chat_prompt(tokenizer, "Invent a person and give it as JSON.")
    (outs,) = run(
        make_core(smollm2, tokenizer),
        [prompt],
        [json_params(temperature=1.0, n=4, seed=7, max_tokens=200)],
    )
    for completion in outs:
        assert_person(completion)


def test_preemption_keeps_the_grammar_state(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    prompts = [
        chat_prompt(tokenizer, f"Person {i} " + "with a long history " * 4) for i in range(8)
    ]
    params = [json_params(max_tokens=60)] * 8
    roomy = run(make_core(smollm2, tokenizer), prompts, params)
    tight_core = make_core(smollm2, tokenizer, kv_cache_memory=20 * BLOCK * 46080)
    tight = run(tight_core, prompts, params)
    assert tight_core.statistics().num_preemptions > 0
    assert tight == roomy
    for outs in tight:
        assert outs[0]["finish"] in ("stop", "length")
        if outs[0]["finish"] == "stop":
            assert_person(outs[0])


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        (
            StructuredOutputsParams(choice=["positive", "negative"]),
            lambda t: t in ("positive", "negative"),
        ),
        (
            StructuredOutputsParams(regex=r"[0-9]{3}-[0-9]{4}"),
            lambda t: re.fullmatch(r"[0-9]{3}-[0-9]{4}", t),
        ),
        (
            StructuredOutputsParams(
                grammar='start: expr\nexpr: NUM | expr ("+" | "*") expr\nNUM: /[0-9]{1,3}/'
            ),
            lambda t: re.fullmatch(r"[0-9]{1,3}([+*][0-9]{1,3})*", t),
        ),
        (StructuredOutputsParams(grammar='root ::= "yes" | "no"'), lambda t: t in ("yes", "no")),
    ],
)
def test_each_kind_of_constraint(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer, spec: StructuredOutputsParams, check: Any
) -> None:
    prompt = chat_prompt(
        tokenizer, "Is this review positive? Answer: it was great. Also write 12+7."
    )
    params = SamplingParams(temperature=0.0, max_tokens=80, structured_outputs=spec)
    ((out,),) = run(make_core(smollm2, tokenizer), [prompt], [params])
    assert out["finish"] == "stop" and check(out["text"]), out


def test_max_tokens_cuts_with_length_and_stop_strings_still_act(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    core = make_core(smollm2, tokenizer)
    prompt = chat_prompt(tokenizer, "A person as JSON.")
    (short,), (stopped,) = run(
        core, [prompt, prompt], [json_params(max_tokens=3), json_params(stop=['"age"'])]
    )
    assert short["finish"] == "length" and len(short["ids"]) == 3
    assert stopped["finish"] == "stop" and '"age"' not in stopped["text"]
    assert core.statistics().num_kv_blocks_free == core.statistics().num_kv_blocks


def test_filters_that_leave_no_allowed_token_end_the_request(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    """allowed_token_ids disjoint from what the grammar allows: the request ends
    instead of generating what the grammar forbids or hanging."""
    core = make_core(smollm2, tokenizer)
    digits = tokenizer.encode("7", add_special_tokens=False)
    spec = StructuredOutputsParams(choice=["yes", "no"])
    params = SamplingParams(
        temperature=0.0, max_tokens=10, allowed_token_ids=digits, structured_outputs=spec
    )
    ((out,),) = run(core, [chat_prompt(tokenizer, "Yes or no?")], [params])
    assert out["finish"] == "stop" and len(out["ids"]) <= 1


def test_abort_frees_a_constrained_request(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    core = make_core(smollm2, tokenizer)
    core.add(core.make_requests(chat_prompt(tokenizer, "JSON please"), json_params(n=2), "a"))
    core.step()
    core.step()
    core.abort("a")
    while core.has_work():
        core.step()
    stats = core.statistics()
    assert stats.num_running == 0 and stats.num_kv_blocks_free == stats.num_kv_blocks


@pytest.mark.parametrize(
    "spec",
    [
        StructuredOutputsParams(json={"type": "strin"}),
        StructuredOutputsParams(json={"type": "object", "if": {}}),
        StructuredOutputsParams(regex="(a"),
        StructuredOutputsParams(grammar="start: undefined_rule"),
        StructuredOutputsParams(
            structural_tag={"structures": [{"begin": "<f>", "end": "</f>"}], "triggers": ["<g"]}
        ),
    ],
)
def test_bad_constraints_are_refused_before_queueing(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer, spec: StructuredOutputsParams
) -> None:
    core = make_core(smollm2, tokenizer)
    with pytest.raises(InvalidRequestError) as info:
        core.make_requests([1, 2, 3], SamplingParams(structured_outputs=spec), "bad")
    assert info.value.param == "structured_outputs"
    assert not core.has_work()


def test_a_constraint_waits_for_its_start_after_tokens(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    """As after a reasoning's end: the grammar applies from the token after
    `start_after`, which the model generates freely (here: its own first two tokens)."""
    core = make_core(smollm2, tokenizer)
    prompt = chat_prompt(tokenizer, "Is the sky blue?")
    ((free,),) = run(core, [prompt], [SamplingParams(temperature=0.0, max_tokens=2)])
    marker = free["ids"]
    spec = StructuredOutputsParams(choice=["maybe", "never"], start_after=marker)
    params = SamplingParams(temperature=0.0, max_tokens=20, structured_outputs=spec)
    ((out,),) = run(core, [prompt], [params])
    assert out["ids"][:2] == marker and out["finish"] == "stop"
    assert tokenizer.decode(out["ids"][2:]) in ("maybe", "never")
