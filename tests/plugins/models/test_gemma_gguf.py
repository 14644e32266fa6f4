"""Gemma 2 and Gemma 3 from GGUF: the tiny transformers-built models of
`test_gemma_tiny`, written with the `gguf` package as llama.cpp's convert_hf_to_gguf.py
writes them (the `gemma2`/`gemma3` architectures, every `*norm.weight` stored as
`1 + w`, q/k rows as they are, no `output.weight` for tied embeddings, the soft caps,
window and rope bases in metadata), load to the same model as the Hugging Face folder:
the same settings, bit-identical logits in float32, transformers' logits through a
prompt past the window; Q8_0 blocks run as stored; a tensor that contradicts the
metadata is named in the error."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gguf
import gguf.quants
import numpy as np
import pytest
import torch

import llmcore
from llmcore.errors import CorruptModelFileError
from llmcore.model_config import ModelConfig
from ops.quant import QuantType, QuantWeight, kernels_support
from plugins.models.gemma import Gemma2ForCausalLM, Gemma3ForCausalLM
from tests.plugins.models import parity
from tests.plugins.models.test_gemma_tiny import build

T = gguf.GGMLQuantizationType
# llama.cpp's names (gguf-py's tensor map) of the layer tensors, written out here so
# that a wrong table in the plugin fails these tests
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_feedforward_layernorm": "post_ffw_norm",
}
KINDS = {"gemma2": "gemma2", "gemma3-gguf": "gemma3"}  # tiny model -> GGUF architecture


def _gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    _, _, index, rest = name.split(".", 3)
    return f"blk.{index}.{LAYER_NAMES[rest.removesuffix('.weight')]}.weight"


def write_gguf(hf_model: Any, path: Path, arch: str, matrices: T = T.F32, **override: Any) -> Path:
    """`hf_model` as llama.cpp converts it; `matrices`: the type of 2-D tensors;
    `override`: metadata values instead of the config's (head_count, ...)."""
    c = hf_model.config
    meta = {
        "head_count": c.num_attention_heads,
        "head_count_kv": c.num_key_value_heads,
        "feed_forward_length": c.intermediate_size,
        **override,
    }
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(meta["feed_forward_length"])
    w.add_head_count(meta["head_count"])
    w.add_head_count_kv(meta["head_count_kv"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_vocab_size(c.vocab_size)
    w.add_sliding_window(c.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        w.add_final_logit_softcapping(c.final_logit_softcapping)
    else:
        full = c.rope_parameters["full_attention"]
        w.add_rope_freq_base(full["rope_theta"])
        if full["rope_type"] == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(full["factor"])
        if c.final_logit_softcapping:
            w.add_final_logit_softcapping(c.final_logit_softcapping)
    for name, tensor in hf_model.state_dict().items():
        if name == "lm_head.weight":  # tied: llama.cpp writes no output.weight
            continue
        data = tensor.float().numpy()
        if name.endswith("norm.weight"):
            data = data + np.float32(1.0)  # Gemma's RMSNorm multiplies by (1 + w)
        if data.ndim == 2 and matrices != T.F32:
            w.add_tensor(_gguf_name(name), gguf.quants.quantize(data, matrices), raw_dtype=matrices)
        else:
            w.add_tensor(_gguf_name(name), data.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module", params=sorted(KINDS))
def tiny(request: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path, Any]:
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    hf_model = build(kind, folder)
    return kind, folder, write_gguf(hf_model, folder / "tiny.gguf", KINDS[kind]), hf_model


def test_gguf_reads_to_the_folders_settings(tiny: tuple[str, Path, Path, Any]) -> None:
    _, folder, path, _ = tiny
    from_gguf = llmcore.load_model(path, dtype="float32")
    from_folder = llmcore.load_model(folder, dtype="float32")
    assert type(from_gguf.model) is type(from_folder.model)
    assert from_gguf.model.gemma.norms_include_one
    assert from_gguf.model.gemma == dataclasses.replace(
        from_folder.model.gemma, norms_include_one=True
    )
    assert from_gguf.model.layer_windows == from_folder.model.layer_windows
    assert from_gguf.model.scale == from_folder.model.scale
    assert from_gguf.model.lm_head is from_gguf.model.embed_tokens


def test_gguf_logits_equal_the_folders(tiny: tuple[str, Path, Path, Any]) -> None:
    _, folder, path, hf_model = tiny
    ids = parity.tokens(96, seed=3)  # a prefill past the window, then decode steps
    table = parity.blocks(len(ids))
    got = []
    for loaded in (llmcore.load_model(path, dtype="float32"), llmcore.load_model(folder)):
        runner = llmcore.ModelRunner(loaded, num_blocks=len(table), block_size=parity.BLOCK)
        logits = [runner.execute([llmcore.SequenceChunk(ids[:90], 0, table)])]
        for pos in range(90, len(ids)):
            logits.append(runner.execute([llmcore.SequenceChunk([ids[pos]], pos, table)]))
        got.append(torch.cat(logits))
    assert torch.equal(got[0], got[1])
    want = parity.hf_logits(hf_model, ids)[89:]
    for row, ref in zip(got[0], want, strict=True):
        assert parity.rel(row, ref) < 1e-4


@pytest.mark.skipif(not kernels_support(QuantType.Q8_0), reason="no Q8_0 CPU kernel here")
def test_q8_0_blocks_run_as_stored(tiny: tuple[str, Path, Path, Any], tmp_path: Path) -> None:
    kind, _, _, hf_model = tiny
    path = write_gguf(hf_model, tmp_path / "q8.gguf", KINDS[kind], matrices=T.Q8_0)
    loaded = llmcore.load_model(path)
    assert isinstance(loaded.model.embed_tokens, QuantWeight)
    assert all(p.weight.qtype == T.Q8_0 for p in loaded.model.layers[0].qkv_mm.parts)
    ids = parity.tokens(80, seed=4)
    table = parity.blocks(len(ids))
    runner = llmcore.ModelRunner(loaded, num_blocks=len(table), block_size=parity.BLOCK)
    got = runner.execute([llmcore.SequenceChunk(ids, 0, table)])[0]
    assert parity.rel(got, parity.hf_logits(hf_model, ids)[-1]) < 0.05


@pytest.mark.parametrize(
    ("override", "tensor"),
    [
        ({"head_count": 8}, "blk.0.attn_q.weight"),
        ({"head_count_kv": 4}, "blk.0.attn_k.weight"),
        ({"feed_forward_length": 128}, "blk.0.ffn_gate.weight"),
    ],
)
def test_tensor_against_metadata_is_named(
    tiny: tuple[str, Path, Path, Any], tmp_path: Path, override: dict[str, int], tensor: str
) -> None:
    kind, _, _, hf_model = tiny
    path = write_gguf(hf_model, tmp_path / "bad.gguf", KINDS[kind], **override)
    with pytest.raises(CorruptModelFileError, match=rf"'{tensor}' has shape"):
        llmcore.load_model(path, dtype="float32")


def _gguf_config(arch: str, layers: int, **metadata: Any) -> ModelConfig:
    """A config as GGUFFile.model_config makes it: a 27B-like shape, metadata in raw."""
    return ModelConfig(
        architecture=arch,
        vocab_size=256000,
        hidden_size=4608,
        intermediate_size=36864,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=16,
        head_dim=128,
        max_position_embeddings=8192,
        raw={"general.architecture": arch, **metadata},
    )


def test_llama_cpp_defaults_where_a_gguf_says_nothing() -> None:
    # Gemma 2: window 4096, caps 50 and 30; the 27B (46 layers) scales queries by
    # hidden / heads (144), the others by head_dim
    for layers, scalar in ((46, 144), (42, 128)):
        config = Gemma2ForCausalLM.adapt_gguf_config(_gguf_config("gemma2", layers))
        s = Gemma2ForCausalLM.settings(config)
        assert (s.sliding_window, s.attn_soft_cap, s.final_soft_cap) == (4096, 50.0, 30.0)
        assert s.query_pre_attn_scalar == scalar
        assert s.layer_types[:2] == ("sliding_attention", "full_attention")
    # Gemma 3: a window is required; five sliding layers to a global one, local base 1e4
    with pytest.raises(CorruptModelFileError, match=r"gemma3\.attention\.sliding_window"):
        Gemma3ForCausalLM.adapt_gguf_config(_gguf_config("gemma3", 62))
    config = _gguf_config("gemma3", 62, **{"gemma3.attention.sliding_window": 1024})
    config = Gemma3ForCausalLM.adapt_gguf_config(dataclasses.replace(config, rope_theta=1e6))
    s = Gemma3ForCausalLM.settings(config)
    assert s.query_pre_attn_scalar == 144 and s.final_soft_cap is None
    assert [i for i, t in enumerate(s.layer_types) if t == "full_attention"][:2] == [5, 11]
    assert s.rope == {"full_attention": (1e6, None), "sliding_attention": (1e4, None)}
