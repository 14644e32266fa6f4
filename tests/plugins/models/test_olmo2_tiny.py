"""A tiny OLMo 2 (GQA 4:2, norm weights other than ones) built by transformers
against llmcore (`parity`): post-norms and whole-projection q/k norms through long
prompts, chunked prefill, decode across blocks, mixed and decode batches, greedy
generation. GGUF: the same weights written as llama.cpp's converter writes an
olmo2 file load to identical logits; a file whose tensors contradict its metadata
names the tensor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

import llmcore
from tests.plugins.models import parity, tiny_models
from tests.plugins.models.test_phi3_tiny import (
    _perturb_norms,
    assert_same_logits,
    gguf_writer,
    write_tensors,
)

SPEC = {"cls": "Olmo2", "config": {"rope_theta": 500000.0}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    folder = tmp_path_factory.mktemp("olmo2")
    hf_model = tiny_models.build_spec("olmo2", SPEC, folder)
    _perturb_norms(hf_model)  # q_norm, k_norm and the post-norms
    hf_model.save_pretrained(folder)
    return folder, hf_model, llmcore.load_model(folder, dtype="float32")


def test_loads_as_olmo2(tiny: tuple[Path, Any, Any]) -> None:
    _, _, loaded = tiny
    assert type(loaded.model).__name__ == "Olmo2ForCausalLM"
    assert loaded.model.num_kv_heads == 2 and loaded.model.layer_windows == [None] * 3
    assert loaded.model.layers[0].q_norm.shape == (64,)
    assert loaded.model.layers[0].k_norm.shape == (32,)


def test_long_prompt_then_decode_across_blocks(tiny: tuple[Path, Any, Any]) -> None:
    _, hf_model, loaded = tiny
    parity.long_prompt_then_decode_across_blocks(hf_model, loaded)


@pytest.mark.parametrize("chunk", [7, 23])
def test_chunked_prefill_matches_whole(tiny: tuple[Path, Any, Any], chunk: int) -> None:
    _, hf_model, loaded = tiny
    parity.chunked_prefill_matches_whole(hf_model, loaded, chunk)


@pytest.mark.slow  # transformers' generate loop as the reference
def test_greedy_generation_matches_transformers(tiny: tuple[Path, Any, Any]) -> None:
    _, hf_model, loaded = tiny
    parity.greedy_generation_matches_transformers(hf_model, loaded)


def test_mixed_batch_equals_each_sequence_alone(tiny: tuple[Path, Any, Any]) -> None:
    parity.mixed_batch_equals_each_sequence_alone(tiny[2])


def test_decode_batch_equals_each_sequence_alone(tiny: tuple[Path, Any, Any]) -> None:
    parity.decode_batch_equals_each_sequence_alone(tiny[2])


def test_int8_weights_run_the_per_op_path(tiny: tuple[Path, Any, Any]) -> None:
    folder, hf_model, _ = tiny
    loaded = llmcore.load_model(folder, quantization="int8")
    assert loaded.model.decoder is None  # not Llama's layer: no one-call decode step
    ids = parity.tokens(40, seed=5)
    runner = llmcore.ModelRunner(loaded, num_blocks=4, block_size=parity.BLOCK)
    got = runner.execute([llmcore.SequenceChunk(ids, 0, [0, 1, 2])])[0]
    assert parity.rel(got, parity.hf_logits(hf_model, ids)[-1]) < 0.15


# ---- GGUF ---------------------------------------------------------------------------


def write_olmo2_gguf(hf_model: Any, path: Path, drop_k_norm_rows: int = 0) -> Path:
    """The model as llama.cpp's converter writes an olmo2 file (q/k unpermuted);
    `drop_k_norm_rows` shortens layer 1's k_norm (a file that contradicts itself)."""
    w = gguf_writer(hf_model, path, "olmo2")

    def put(name: str, data: np.ndarray, matrix: bool) -> None:
        if name == "blk.1.attn_k_norm.weight" and drop_k_norm_rows:
            data = data[:-drop_k_norm_rows]
        w.add_tensor(name, data)

    write_tensors(w, hf_model, gguf.MODEL_ARCH.OLMO2, put)
    return path


def test_gguf_loads_to_the_folders_logits(tiny: tuple[Path, Any, Any], tmp_path: Path) -> None:
    _, hf_model, from_folder = tiny
    loaded = llmcore.load_model(write_olmo2_gguf(hf_model, tmp_path / "olmo2.gguf"))
    assert loaded.config.architecture == "Olmo2ForCausalLM"
    assert_same_logits(loaded, from_folder, parity.tokens(70, seed=41), prompt=60)


def test_gguf_whose_tensors_contradict_its_metadata_names_the_tensor(
    tiny: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    _, hf_model, _ = tiny
    path = write_olmo2_gguf(hf_model, tmp_path / "lying.gguf", drop_k_norm_rows=4)
    with pytest.raises(
        llmcore.errors.CorruptModelFileError,
        match=r"'blk\.1\.attn_k_norm\.weight' has shape \[28\].* implies \[32\]",
    ):
        llmcore.load_model(path)
