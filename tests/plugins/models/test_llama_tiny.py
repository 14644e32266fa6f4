"""Tiny Llama / Llama-3 (tied, scaled rope) / Qwen2 / Mistral models built by
transformers: llmcore's forward pass over the paged KV cache against transformers,
through long prompts, chunked prefill, decode across block boundaries, and batches
of sequences of different lengths (the checks of `parity`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import llmcore
import ops
from tests.plugins.models import parity, tiny_models


@pytest.fixture(scope="module", params=sorted(tiny_models.KINDS))
def tiny(request: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any, Any]:
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    hf_model = tiny_models.build(kind, folder)
    loaded = llmcore.load_model(folder, dtype="float32")
    return kind, folder, hf_model, loaded


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
    parity.long_prompt_then_decode_across_blocks(hf_model, loaded)


@pytest.mark.parametrize("chunk", [1, 7, 16, 23, 64])
def test_chunked_prefill_matches_whole(tiny: tuple[str, Path, Any, Any], chunk: int) -> None:
    _, _, hf_model, loaded = tiny
    parity.chunked_prefill_matches_whole(hf_model, loaded, chunk)


@pytest.mark.slow  # transformers' generate loop as the reference
def test_greedy_generation_matches_transformers(tiny: tuple[str, Path, Any, Any]) -> None:
    _, _, hf_model, loaded = tiny
    parity.greedy_generation_matches_transformers(hf_model, loaded)


def test_mixed_batch_equals_each_sequence_alone(tiny: tuple[str, Path, Any, Any]) -> None:
    parity.mixed_batch_equals_each_sequence_alone(tiny[3])


def test_decode_batch_equals_each_sequence_alone(tiny: tuple[str, Path, Any, Any]) -> None:
    parity.decode_batch_equals_each_sequence_alone(tiny[3])


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


def test_rotary_and_the_cache_write_are_one_op_per_layer(
    tiny: tuple[str, Path, Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each attention layer calls `rotary_embedding_and_cache` once (one CUDA
    launch, one C call), never the two ops it fuses."""
    _, _, _, loaded = tiny
    fused, calls = ops.rotary_embedding_and_cache, []

    def counted(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        fused(*args, **kwargs)

    def refused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("rotary and the cache write run as one op")

    monkeypatch.setattr(ops, "rotary_embedding_and_cache", counted)
    monkeypatch.setattr(ops, "rotary_embedding", refused)
    monkeypatch.setattr(ops, "reshape_and_cache", refused)
    runner = llmcore.ModelRunner(loaded, num_blocks=4, block_size=16)
    runner.execute([llmcore.SequenceChunk(list(range(3, 12)), 0, [0])])
    assert len(calls) == loaded.config.num_hidden_layers
