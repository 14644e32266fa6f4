"""Tiny Llama / Llama-3 (tied, scaled rope) / Qwen2 / Mistral models built by
transformers: llmcore's forward pass over the paged KV cache against transformers,
through long prompts, chunked prefill, decode across block boundaries, and batches
of sequences of different lengths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import llmcore
from tests.plugins.models import tiny_models

BLOCK = 16


@pytest.fixture(scope="module", params=sorted(tiny_models.KINDS))
def tiny(request: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any, Any]:
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    hf_model = tiny_models.build(kind, folder)
    loaded = llmcore.load_model(folder, dtype="float32")
    return kind, folder, hf_model, loaded


def _hf_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, tiny_models.VOCAB, (n,), generator=g).tolist()


def _blocks(n_tokens: int, first: int = 0, stride: int = 1) -> list[int]:
    return [first + i * stride for i in range(-(-n_tokens // BLOCK))]


def test_folder_layout_is_what_the_case_claims(tiny: tuple[str, Path, Any, Any]) -> None:
    kind, folder, _, loaded = tiny
    sharded = (folder / "model.safetensors.index.json").is_file()
    assert sharded == (kind == "llama")
    if sharded:
        assert len(list(folder.glob("*.safetensors"))) > 1
    assert loaded.config.tie_word_embeddings == (kind == "llama3-tied")
    if kind == "llama3-tied":
        assert loaded.model.lm_head is loaded.model.embed_tokens
    gen = loaded.config.generation_defaults
    assert gen["temperature"] == 0.7 and gen["top_p"] == 0.9
    assert loaded.config.eos_token_ids == [2]


def test_long_prompt_then_decode_across_blocks(tiny: tuple[str, Path, Any, Any]) -> None:
    _, _, hf_model, loaded = tiny
    ids = _tokens(150, seed=1)  # prompt of 100 (7 blocks), then 50 decode steps
    expected = _hf_logits(hf_model, ids)
    runner = llmcore.ModelRunner(loaded, num_blocks=16, block_size=BLOCK)
    table = _blocks(len(ids), first=3, stride=1)
    got = runner.execute([llmcore.SequenceChunk(ids[:100], 0, table)])[0]
    assert _rel(got, expected[99]) < 1e-4
    for pos in range(100, 150):
        got = runner.execute([llmcore.SequenceChunk([ids[pos]], pos, table)])[0]
        assert _rel(got, expected[pos]) < 1e-4, pos


@pytest.mark.parametrize("chunk", [1, 7, 16, 23, 64])
def test_chunked_prefill_matches_whole(tiny: tuple[str, Path, Any, Any], chunk: int) -> None:
    _, _, hf_model, loaded = tiny
    ids = _tokens(90, seed=chunk)
    expected = _hf_logits(hf_model, ids)
    runner = llmcore.ModelRunner(loaded, num_blocks=20, block_size=BLOCK)
    table = _blocks(len(ids), first=19, stride=-2)  # scattered, descending blocks
    for start in range(0, len(ids), chunk):
        end = min(start + chunk, len(ids))
        got = runner.execute([llmcore.SequenceChunk(ids[start:end], start, table)])[0]
        assert _rel(got, expected[end - 1]) < 1e-4, (start, end)


@pytest.mark.slow  # transformers' generate loop as the reference
def test_greedy_generation_matches_transformers(tiny: tuple[str, Path, Any, Any]) -> None:
    _, _, hf_model, loaded = tiny
    runner = llmcore.ModelRunner(loaded, num_blocks=16, block_size=BLOCK)
    for seed, n_prompt in [(5, 3), (6, 40), (7, 77)]:
        ids = _tokens(n_prompt, seed)
        with torch.inference_mode():
            out = hf_model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=60,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        got = llmcore.greedy_generate(runner, ids, 60, prefill_chunk=32)
        assert got == out[0, len(ids) :].tolist()


def test_mixed_batch_equals_each_sequence_alone(tiny: tuple[str, Path, Any, Any]) -> None:
    """One forward pass holding a whole prompt, a prompt chunk after cached
    context, and two decode tokens: each row equals that sequence run alone."""
    _, _, _, loaded = tiny
    seqs = [_tokens(n, seed=100 + n) for n in (37, 70, 18, 51)]
    cached = [0, 40, 17, 50]  # tokens already in the cache before the mixed step
    tables = [_blocks(len(s), first=i, stride=4) for i, s in enumerate(seqs)]

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
        assert _rel(row, ref) < 1e-4


def test_decode_batch_equals_each_sequence_alone(tiny: tuple[str, Path, Any, Any]) -> None:
    _, _, _, loaded = tiny
    seqs = [_tokens(n, seed=200 + n) for n in (16, 33, 5)]
    tables = [_blocks(len(s), first=i, stride=3) for i, s in enumerate(seqs)]
    runner = llmcore.ModelRunner(loaded, num_blocks=16, block_size=BLOCK)
    runner.execute([llmcore.SequenceChunk(s[:-1], 0, t) for s, t in zip(seqs, tables, strict=True)])
    batch = runner.execute(
        [llmcore.SequenceChunk(s[-1:], len(s) - 1, t) for s, t in zip(seqs, tables, strict=True)]
    )
    for i, (s, t) in enumerate(zip(seqs, tables, strict=True)):
        single = llmcore.ModelRunner(loaded, num_blocks=16, block_size=BLOCK)
        ref = single.execute([llmcore.SequenceChunk(s, 0, t)])[0]
        assert _rel(batch[i], ref) < 1e-4


def test_config_json_round_trip(tiny: tuple[str, Path, Any, Any]) -> None:
    kind, folder, hf_model, loaded = tiny
    raw = json.loads((folder / "config.json").read_text())
    assert loaded.config.architecture == raw["architectures"][0]
    assert (
        loaded.config.head_dim == hf_model.config.hidden_size // hf_model.config.num_attention_heads
    )
    if kind == "llama3-tied":
        assert loaded.config.rope_scaling is not None
        assert loaded.config.rope_scaling["rope_type"] == "llama3"
        assert loaded.config.rope_theta == 500000.0
