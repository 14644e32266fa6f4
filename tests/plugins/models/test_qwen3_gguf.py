"""Qwen3 and Qwen3-MoE from GGUF files written as llama.cpp's converter writes them
(`qwen3` / `qwen3moe`: q/k rows not permuted, `attn_q_norm`/`attn_k_norm`, experts
stacked into 3-D `ffn_{gate,up,down}_exps` or `ffn_gate_up_exps`, the router as
`ffn_gate_inp`, `{arch}.expert_count` / `.expert_used_count` /
`.expert_feed_forward_length`), from tiny transformers models' weights.

Checked: float32 files give the logits of the same model's Hugging Face folder;
a Q8_0 Qwen3 keeps its attention and MLP blocks as stored (the per-op path) and
follows the float model; Q8_0 experts are dequantized at load; a file whose tensors
do not fit its metadata is refused with an error naming the tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import gguf.quants
import numpy as np
import pytest
import torch

import llmcore
from ops.quant import QuantType, QuantWeight, kernels_support
from tests.plugins.models import parity, tiny_models

T = gguf.GGMLQuantizationType
LAYER_PARTS = {  # GGUF name part -> Hugging Face module, in every layer
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
DENSE_PARTS = {"ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
SPECS: dict[str, dict[str, Any]] = {
    "qwen3": {  # tied embeddings: no output.weight
        "cls": "Qwen3",
        "config": {"head_dim": 32, "tie_word_embeddings": True, "rope_theta": 1000000.0},
    },
    "qwen3moe": {  # llama.cpp's qwen3moe: every layer sparse, top-k renormalised
        "cls": "Qwen3Moe",
        "config": {
            "head_dim": 32,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "norm_topk_prob": True,
            "rope_theta": 1000000.0,
        },
    },
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    out = {}
    for arch, spec in SPECS.items():
        folder = tmp_path_factory.mktemp(arch)
        out[arch] = (folder, tiny_models.build_spec(arch, spec, folder))
    return out


def _write_gguf(
    hf: Any,
    arch: str,
    path: Path,
    qtype: T = T.F32,
    fuse_gate_up: bool = False,
    metadata: dict[str, int | None] | None = None,
) -> Path:
    """`hf`'s weights as llama.cpp's converter writes them; matrices (experts too) in
    `qtype`, norms float32. `metadata` overrides integer `{arch}.*` keys (None: drops
    the key)."""
    c = hf.config
    moe = arch == "qwen3moe"
    ints: dict[str, int | None] = {
        "block_count": c.num_hidden_layers,
        "context_length": c.max_position_embeddings,
        "embedding_length": c.hidden_size,
        "feed_forward_length": c.intermediate_size,
        "attention.head_count": c.num_attention_heads,
        "attention.head_count_kv": c.num_key_value_heads,
        "attention.key_length": c.head_dim,
        "attention.value_length": c.head_dim,
        "vocab_size": c.vocab_size,
    }
    if moe:
        ints["expert_count"] = c.num_experts
        ints["expert_used_count"] = c.num_experts_per_tok
        ints["expert_feed_forward_length"] = c.moe_intermediate_size
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in {**ints, **(metadata or {})}.items():
        if value is not None:
            writer.add_uint32(f"{arch}.{key}", value)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    sd = {k: v.float().numpy() for k, v in hf.state_dict().items()}

    def put(name: str, data: np.ndarray, kind: T = T.F32) -> None:
        if kind == T.F32 or data.ndim == 1:
            writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)

    put("token_embd.weight", sd["model.embed_tokens.weight"], qtype)
    put("output_norm.weight", sd["model.norm.weight"])
    if not c.tie_word_embeddings:
        put("output.weight", sd["lm_head.weight"], qtype)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        for part, module in LAYER_PARTS.items():
            put(f"blk.{i}.{part}.weight", sd[p + module + ".weight"], qtype)
        if not moe:
            for part, module in DENSE_PARTS.items():
                put(f"blk.{i}.{part}.weight", sd[p + module + ".weight"], qtype)
            continue
        put(f"blk.{i}.ffn_gate_inp.weight", sd[p + "mlp.gate.weight"])  # the router
        gate_up = sd[p + "mlp.experts.gate_up_proj"]  # [E, 2I, H]: gate rows, then up rows
        gate, up = np.split(gate_up, 2, axis=1)
        if fuse_gate_up:  # the converter's --fuse-gate-up-exps
            put(f"blk.{i}.ffn_gate_up_exps.weight", gate_up, qtype)
        else:
            put(f"blk.{i}.ffn_gate_exps.weight", gate, qtype)
            put(f"blk.{i}.ffn_up_exps.weight", up, qtype)
        put(f"blk.{i}.ffn_down_exps.weight", sd[p + "mlp.experts.down_proj"], qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _logits(loaded: Any, ids: list[int], steps: int = 20) -> torch.Tensor:
    """A prompt over two blocks, then decode steps of the same tokens: every row."""
    runner = llmcore.ModelRunner(loaded, num_blocks=8, block_size=parity.BLOCK)
    table = parity.blocks(len(ids) + 1)
    prompt = len(ids) - steps
    rows = [runner.execute([llmcore.SequenceChunk(ids[:prompt], 0, table)])[0]]
    for pos in range(prompt, len(ids)):
        rows.append(runner.execute([llmcore.SequenceChunk([ids[pos]], pos, table)])[0])
    return torch.stack(rows)


@pytest.mark.parametrize(
    ("arch", "fuse"), [("qwen3", False), ("qwen3moe", False), ("qwen3moe", True)]
)
def test_float_gguf_equals_the_hf_folder(
    models: dict[str, tuple[Path, Any]], tmp_path: Path, arch: str, fuse: bool
) -> None:
    folder, hf = models[arch]
    path = _write_gguf(hf, arch, tmp_path / f"{arch}.gguf", fuse_gate_up=fuse)
    loaded = llmcore.load_model(path, dtype="float32")
    assert loaded.config.architecture == type(hf).__name__
    assert loaded.config.head_dim == 32 and loaded.config.tie_word_embeddings == (arch == "qwen3")
    if arch == "qwen3moe":
        model = loaded.model
        assert model.sparse_layers == frozenset(range(3)) and model.renormalize
        assert (model.num_experts, model.top_k, model.moe_intermediate_size) == (4, 2, 32)
    ids = parity.tokens(50, seed=9)
    got = _logits(loaded, ids)
    want = _logits(llmcore.load_model(folder, dtype="float32"), ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    expected = parity.hf_logits(hf, ids)[len(ids) - 21 :]
    assert parity.rel(got, expected) < 1e-4


needs_q8 = pytest.mark.skipif(
    not kernels_support(QuantType(int(T.Q8_0))), reason="the quantized CPU kernels are not built"
)


@needs_q8
def test_q8_0_qwen3_keeps_its_blocks(models: dict[str, tuple[Path, Any]], tmp_path: Path) -> None:
    folder, hf = models["qwen3"]
    loaded = llmcore.load_model(_write_gguf(hf, "qwen3", tmp_path / "q8.gguf", T.Q8_0))
    layer = loaded.model.layers[0]
    matmuls = (layer.qkv_mm, layer.o_mm, layer.gate_up_mm, layer.down_mm)
    assert all(isinstance(p.weight, QuantWeight) for mm in matmuls for p in mm.parts)
    assert loaded.model.decoder is None  # q/k norms: the per-op path, quantized matmuls
    ids = parity.tokens(40, seed=4)
    got = _logits(loaded, ids, steps=8)
    want = _logits(llmcore.load_model(folder, dtype="float32"), ids, steps=8)
    assert parity.rel(got, want) < 0.05  # 8-bit weights and int8 activations


def test_q8_0_experts_are_dequantized(models: dict[str, tuple[Path, Any]], tmp_path: Path) -> None:
    folder, hf = models["qwen3moe"]
    path = _write_gguf(hf, "qwen3moe", tmp_path / "q8.gguf", T.Q8_0)
    loaded = llmcore.load_model(path)
    moe = loaded.model.layers[1].moe
    assert moe.w13.dtype == torch.float32 and moe.w2.dtype == torch.float32
    ids = parity.tokens(40, seed=5)
    got = _logits(loaded, ids, steps=8)
    want = _logits(llmcore.load_model(folder, dtype="float32"), ids, steps=8)
    assert parity.rel(got, want) < 0.05


@pytest.mark.parametrize(
    ("arch", "metadata", "tensor"),
    [
        ("qwen3", {"attention.key_length": 16}, "blk.0.attn_q.weight"),
        ("qwen3moe", {"expert_feed_forward_length": 48}, "blk.0.ffn_gate_exps.weight"),
        ("qwen3moe", {"expert_count": 8}, "blk.0.ffn_gate_inp.weight"),
    ],
)
def test_tensors_that_do_not_fit_the_metadata_are_named(
    models: dict[str, tuple[Path, Any]],
    tmp_path: Path,
    arch: str,
    metadata: dict[str, int],
    tensor: str,
) -> None:
    _, hf = models[arch]
    path = _write_gguf(hf, arch, tmp_path / "bad.gguf", metadata=metadata)
    with pytest.raises(llmcore.errors.ModelLoadError, match=tensor.replace(".", r"\.")):
        llmcore.load_model(path, dtype="float32")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"expert_count": None}, r"lacks the key 'qwen3moe\.expert_count'"),
        ({"expert_used_count": None}, r"lacks the key 'qwen3moe\.expert_used_count'"),
        ({"expert_gating_func": 2}, r"expert_gating_func 2"),  # sigmoid routing
    ],
)
def test_expert_metadata_missing_or_not_supported_is_named(
    models: dict[str, tuple[Path, Any]],
    tmp_path: Path,
    metadata: dict[str, int | None],
    message: str,
) -> None:
    path = _write_gguf(models["qwen3moe"][1], "qwen3moe", tmp_path / "x.gguf", metadata=metadata)
    with pytest.raises(llmcore.errors.ModelLoadError, match=message):
        llmcore.load_model(path, dtype="float32")
