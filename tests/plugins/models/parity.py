"""The parity checks every tiny decoder model goes through against transformers:
long prompts then decode across blocks, chunked prefill, greedy generation, mixed
batches and decode batches (each sequence as if alone). Each family's test module
builds its tiny models (`tiny_models.build_spec`) and calls these with the
transformers model and llmcore's `LoadedModel` of the same folder."""

from __future__ import annotations

from typing import Any

import torch

import llmcore
from tests.plugins.models import tiny_models

BLOCK = 16


def hf_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def tokens(n: int, seed: int, vocab: int = tiny_models.VOCAB) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def blocks(n_tokens: int, first: int = 0, stride: int = 1) -> list[int]:
    return [first + i * stride for i in range(-(-n_tokens // BLOCK))]


def long_prompt_then_decode_across_blocks(
    hf_model: Any, loaded: Any, prompt: int = 100, total: int = 150, tol: float = 1e-4
) -> None:
    ids = tokens(total, seed=1)  # a prompt over several blocks, then decode steps
    expected = hf_logits(hf_model, ids)
    runner = llmcore.ModelRunner(loaded, num_blocks=3 + len(blocks(total)), block_size=BLOCK)
    table = blocks(len(ids), first=3, stride=1)
    got = runner.execute([llmcore.SequenceChunk(ids[:prompt], 0, table)])[0]
    assert rel(got, expected[prompt - 1]) < tol
    for pos in range(prompt, total):
        got = runner.execute([llmcore.SequenceChunk([ids[pos]], pos, table)])[0]
        assert rel(got, expected[pos]) < tol, pos


def chunked_prefill_matches_whole(
    hf_model: Any, loaded: Any, chunk: int, n: int = 90, tol: float = 1e-4
) -> None:
    ids = tokens(n, seed=chunk)
    expected = hf_logits(hf_model, ids)
    width = len(blocks(n))
    runner = llmcore.ModelRunner(loaded, num_blocks=2 * width + 2, block_size=BLOCK)
    table = blocks(len(ids), first=2 * width + 1, stride=-2)  # scattered, descending blocks
    for start in range(0, len(ids), chunk):
        end = min(start + chunk, len(ids))
        got = runner.execute([llmcore.SequenceChunk(ids[start:end], start, table)])[0]
        assert rel(got, expected[end - 1]) < tol, (start, end)


def greedy_generation_matches_transformers(
    hf_model: Any,
    loaded: Any,
    cases: tuple[tuple[int, int], ...] = ((5, 3), (6, 40), (7, 77)),
    new_tokens: int = 60,
) -> None:
    longest = max(n for _, n in cases) + new_tokens
    runner = llmcore.ModelRunner(loaded, num_blocks=len(blocks(longest)) + 1, block_size=BLOCK)
    for seed, n_prompt in cases:
        ids = tokens(n_prompt, seed)
        with torch.inference_mode():
            out = hf_model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        got = llmcore.greedy_generate(runner, ids, new_tokens, prefill_chunk=32)
        assert got == out[0, len(ids) :].tolist()


def mixed_batch_equals_each_sequence_alone(loaded: Any, tol: float = 1e-4) -> None:
    """One forward pass holding a whole prompt, a prompt chunk after cached
    context, and two decode tokens: each row equals that sequence run alone."""
    seqs = [tokens(n, seed=100 + n) for n in (37, 70, 18, 51)]
    cached = [0, 40, 17, 50]  # tokens already in the cache before the mixed step
    tables = [blocks(len(s), first=i, stride=4) for i, s in enumerate(seqs)]

    alone = []
    for s, c, t in zip(seqs, cached, tables, strict=True):
        runner = llmcore.ModelRunner(loaded, num_blocks=24, block_size=BLOCK)
        if c:
            runner.execute([llmcore.SequenceChunk(s[:c], 0, t)])
        alone.append(runner.execute([llmcore.SequenceChunk(s[c:], c, t)])[0])

    runner = llmcore.ModelRunner(loaded, num_blocks=24, block_size=BLOCK)
    runner.execute(
        [
            llmcore.SequenceChunk(s[:c], 0, t)
            for s, c, t in zip(seqs, cached, tables, strict=True)
            if c
        ]
    )
    mixed = runner.execute(
        [llmcore.SequenceChunk(s[c:], c, t) for s, c, t in zip(seqs, cached, tables, strict=True)]
    )
    for row, ref in zip(mixed, alone, strict=True):
        assert rel(row, ref) < tol


def decode_batch_equals_each_sequence_alone(loaded: Any, tol: float = 1e-4) -> None:
    seqs = [tokens(n, seed=200 + n) for n in (16, 33, 5)]
    tables = [blocks(len(s), first=i, stride=3) for i, s in enumerate(seqs)]
    runner = llmcore.ModelRunner(loaded, num_blocks=16, block_size=BLOCK)
    runner.execute([llmcore.SequenceChunk(s[:-1], 0, t) for s, t in zip(seqs, tables, strict=True)])
    batch = runner.execute(
        [llmcore.SequenceChunk(s[-1:], len(s) - 1, t) for s, t in zip(seqs, tables, strict=True)]
    )
    for i, (s, t) in enumerate(zip(seqs, tables, strict=True)):
        single = llmcore.ModelRunner(loaded, num_blocks=16, block_size=BLOCK)
        ref = single.execute([llmcore.SequenceChunk(s, 0, t)])[0]
        assert rel(batch[i], ref) < tol
