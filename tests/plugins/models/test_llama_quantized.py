"""Quantized llama weights on the CPU: a tiny Llama written as a GGUF in Q4_1, Q4_0
and Q8_0 (q/k/v of two types, so the qkv matmul runs as parts) is loaded with its
blocks as stored; the same model's float folder is loaded with `quantization="int8"`.

Checked: the weights stay quantized; logits stay close to the float model's (to the
error of 4- or 8-bit weights and int8 activations); the one-call decode step
(`ops.fused_decode`) gives the per-op path's logits bit for bit, over decode steps
across block boundaries and batches of sequences of different lengths; explicit
`dtype="float32"` still dequantizes."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import gguf
import gguf.quants
import numpy as np
import pytest
import torch

import llmcore
import ops
import plugins.models.llama
from ops.fused_decode import DecoderLayerWeights
from ops.quant import QuantLinear, QuantType, QuantWeight, kernels_support
from tests.plugins.models import tiny_models

BLOCK = 16
T = gguf.GGMLQuantizationType
# GGUF name part -> (HF module, type written)
LAYER_PARTS = {
    "attn_q": ("self_attn.q_proj", T.Q4_1),
    "attn_k": ("self_attn.k_proj", T.Q4_1),
    "attn_v": ("self_attn.v_proj", T.Q8_0),
    "attn_output": ("self_attn.o_proj", T.Q4_1),
    "ffn_gate": ("mlp.gate_proj", T.Q4_0),
    "ffn_up": ("mlp.up_proj", T.Q4_0),
    "ffn_down": ("mlp.down_proj", T.Q4_1),
}

needs_kernels = pytest.mark.skipif(
    not all(kernels_support(QuantType(int(t))) for t in (T.Q4_0, T.Q4_1, T.Q8_0)),
    reason="the quantized CPU kernels are not built here",
)


def _permute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert-time q/k row permutation (neox -> GPT-J rope order)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(hf: Any, path: Path) -> Path:
    c = hf.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)  # the "llama" kind's rope_theta
    writer.add_vocab_size(c.vocab_size)
    sd = {k: v.float().numpy() for k, v in hf.state_dict().items()}

    def put(name: str, data: np.ndarray, qtype: T) -> None:
        if qtype == T.F32:
            writer.add_tensor(name, data.astype(np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    put("token_embd.weight", sd["model.embed_tokens.weight"], T.Q8_0)
    put("output_norm.weight", sd["model.norm.weight"], T.F32)
    put("output.weight", sd["lm_head.weight"], T.Q8_0)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], T.F32)
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], T.F32)
        for part, (module, qtype) in LAYER_PARTS.items():
            w = sd[p + module + ".weight"]
            if part in ("attn_q", "attn_k"):
                heads = c.num_attention_heads if part == "attn_q" else c.num_key_value_heads
                w = _permute_qk(w, heads)
            put(f"blk.{i}.{part}.weight", w, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    folder = tmp_path_factory.mktemp("tiny-llama")
    hf = tiny_models.build("llama", folder)
    return folder, _write_gguf(hf, folder / "tiny.gguf"), hf


def _hf_weights(folder: Path) -> Any:
    from llmcore.weights import hf_folder

    return hf_folder.iter_tensors(folder, torch.float32)


def _tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, tiny_models.VOCAB, (n,), generator=g).tolist()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _decode_logits(
    loaded: Any,
    prompts: list[list[int]],
    steps: int,
    feed: list[int] | None = None,
    kv_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Prefill each prompt, then `steps` decode steps of every sequence together
    (feeding argmax tokens, or `feed[i]` to every sequence at step i); the logits of
    the prefill and of every decode step. `kv_dtype`: KV caches of that dtype
    instead of the model's."""
    runner = llmcore.ModelRunner(loaded, num_blocks=64, block_size=BLOCK)
    if kv_dtype is not None:
        runner.kv_caches = [
            (torch.zeros_like(k, dtype=kv_dtype), torch.zeros_like(v, dtype=kv_dtype))
            for k, v in runner.kv_caches
        ]
    tables, lens, out = [], [], []
    first = 0
    chunks = []
    for ids in prompts:
        n = -(-(len(ids) + steps) // BLOCK)
        tables.append(list(range(first, first + n)))
        first += n
        chunks.append(llmcore.SequenceChunk(ids, 0, tables[-1]))
        lens.append(len(ids))
    logits = runner.execute(chunks)
    out.append(logits.clone())
    for i in range(steps):
        tokens = logits.argmax(dim=-1).tolist() if feed is None else [feed[i]] * len(prompts)
        chunks = [
            llmcore.SequenceChunk([t], n, table)
            for t, n, table in zip(tokens, lens, tables, strict=True)
        ]
        logits = runner.execute(chunks)
        out.append(logits.clone())
        lens = [n + 1 for n in lens]
    return out


@needs_kernels
def test_gguf_blocks_stay_as_stored(tiny_files: tuple[Path, Path, Any]) -> None:
    _, path, _ = tiny_files
    loaded = llmcore.load_model(path)
    model = loaded.model
    assert loaded.dtype == torch.float32
    assert isinstance(model.embed_tokens, QuantWeight) and model.embed_tokens.qtype == T.Q8_0
    assert isinstance(model.lm_head_mm, QuantLinear)
    layer = model.layers[0]
    qkv_types = [p.weight.qtype for p in layer.qkv_mm.parts]
    assert sorted(qkv_types) == sorted([T.Q4_1, T.Q4_1, T.Q8_0]) or qkv_types == [T.Q4_1, T.Q8_0]
    assert [p.weight.qtype for p in layer.gate_up_mm.parts] == [T.Q4_0]
    assert model.decoder is not None
    dense = llmcore.load_model(path, dtype="float32")
    assert isinstance(dense.model.embed_tokens, torch.Tensor)
    assert dense.model.decoder is None


@needs_kernels
def test_quantized_logits_follow_the_float_model(tiny_files: tuple[Path, Path, Any]) -> None:
    folder, path, _ = tiny_files
    ids, feed = _tokens(40, seed=3), _tokens(6, seed=4)  # the same tokens fed to both
    got = _decode_logits(llmcore.load_model(path), [ids], steps=6, feed=feed)
    want = _decode_logits(llmcore.load_model(path, dtype="float32"), [ids], 6, feed)
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) < 0.08  # int8 activations against float32 on the same weights
    # The kernels' own error (int8 activations) is well below what storing the
    # weights in 4 bits costs this random model.
    hf = _decode_logits(llmcore.load_model(folder, dtype="float32"), [ids], steps=0)[0]
    assert _rel(got[0], want[0]) < _rel(want[0], hf) / 4


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_models.build("qwen2", folder)  # q/k/v biases, GQA 4:1
    return folder


@needs_kernels
@pytest.mark.parametrize("source", ["gguf", "int8", "int8-qwen2", "bf16", "f32"])
def test_one_call_decode_equals_the_per_op_path(
    tiny_files: tuple[Path, Path, Any], tiny_qwen2: Path, source: str
) -> None:
    folder, path, _ = tiny_files
    if source == "gguf":
        loaded = llmcore.load_model(path)
    elif source == "int8":
        loaded = llmcore.load_model(folder, quantization="int8")
    elif source == "bf16":
        loaded = llmcore.load_model(folder, dtype="bfloat16")
    elif source == "f32":  # plain float32 rows through the same kernels
        loaded = llmcore.load_model(folder, dtype="float32")
        loaded.model.set_quantization("f32")
        loaded.model.load_weights(_hf_weights(folder))
    else:
        loaded = llmcore.load_model(tiny_qwen2, quantization="int8")
    assert loaded.model.decoder is not None
    prompts = [_tokens(n, seed=n) for n in (5, 17, 33, 16)]
    fused = _decode_logits(loaded, prompts, steps=20)  # crosses block boundaries
    loaded.model.decoder = None
    per_op = _decode_logits(loaded, prompts, steps=20)
    for f, p in zip(fused, per_op, strict=True):
        assert torch.equal(f, p)


@needs_kernels
@pytest.mark.parametrize("kv_dtype", [torch.float16, torch.bfloat16])
def test_one_call_decode_with_a_16_bit_cache_equals_the_per_op_path(
    tiny_files: tuple[Path, Path, Any], kv_dtype: torch.dtype
) -> None:
    """Issue 19: float16 / bfloat16 KV caches under float32 activations, the one-call
    decode step bit-identical to the per-op path; close to a float32 cache."""
    _, path, _ = tiny_files
    loaded = llmcore.load_model(path)
    decoder = loaded.model.decoder
    assert decoder is not None
    prompts = [_tokens(n, seed=n) for n in (5, 17, 33, 16)]
    fused = _decode_logits(loaded, prompts, steps=20, kv_dtype=kv_dtype)
    assert decoder.bound_to is not None and decoder.bound_to.dtype == kv_dtype  # it ran
    shape = (4, BLOCK, decoder.shape.num_kv_heads, decoder.shape.head_dim)
    dtypes = [kv_dtype] * len(loaded.model.layers)
    dtypes[-1] = torch.float32
    mixed = [(torch.zeros(shape, dtype=d), torch.zeros(shape, dtype=d)) for d in dtypes]
    with pytest.raises(ValueError, match="one dtype"):
        decoder.bind(mixed)
    loaded.model.decoder = None
    per_op = _decode_logits(loaded, prompts, steps=20, kv_dtype=kv_dtype)
    for f, p in zip(fused, per_op, strict=True):
        assert torch.equal(f, p)
    # Against a float32 cache, on the dense float model (int8 activations would
    # amplify the cache's rounding where it flips an activation's).
    dense = llmcore.load_model(path, dtype="float32")
    half, full = (_decode_logits(dense, prompts, 0, kv_dtype=d)[0] for d in (kv_dtype, None))
    assert not torch.equal(half, full)  # the prefill's attention read 16-bit values
    assert _rel(half, full) < (2e-3 if kv_dtype == torch.float16 else 2e-2)


@needs_kernels
@pytest.mark.parametrize("kv_dtype", [None, torch.float16])
def test_one_call_decode_with_window_and_cap_equals_the_per_op_path(
    tiny_files: tuple[Path, Path, Any], monkeypatch: pytest.MonkeyPatch, kv_dtype: Any
) -> None:
    """The decode stack's per-layer sliding window and soft cap (a Mistral- or
    Gemma-like layer) against the per-op path given the same options, through
    prompts and decode steps past the window."""
    _, path, _ = tiny_files
    loaded = llmcore.load_model(path)
    options = {"sliding_window": 24, "soft_cap": 5.0}
    prompts = [_tokens(n, seed=n) for n in (5, 17, 33, 40)]
    plain = _decode_logits(loaded, prompts, steps=12, kv_dtype=kv_dtype)
    monkeypatch.setattr(
        plugins.models.llama,
        "DecoderLayerWeights",
        functools.partial(DecoderLayerWeights, **options),
    )
    for name in ("paged_attention_decode", "paged_attention_prefill"):
        monkeypatch.setattr(ops, name, functools.partial(getattr(ops, name), **options))
    loaded.model.decoder = loaded.model._decoder()
    assert loaded.model.decoder is not None
    fused = _decode_logits(loaded, prompts, steps=12, kv_dtype=kv_dtype)
    loaded.model.decoder = None
    per_op = _decode_logits(loaded, prompts, steps=12, kv_dtype=kv_dtype)
    for f, p in zip(fused, per_op, strict=True):
        assert torch.equal(f, p)
    assert not torch.allclose(fused[-1], plain[-1], atol=1e-3)  # the options changed it


@needs_kernels
def test_int8_weights_follow_the_float_model(tiny_files: tuple[Path, Path, Any]) -> None:
    folder, _, _ = tiny_files
    loaded = llmcore.load_model(folder, quantization="int8")
    layer = loaded.model.layers[0]
    assert all(p.weight.qtype == QuantType.I8_ROW for p in layer.qkv_mm.parts)
    ids, feed = _tokens(30, seed=5), _tokens(4, seed=6)
    got = _decode_logits(loaded, [ids], steps=4, feed=feed)
    want = _decode_logits(llmcore.load_model(folder, dtype="float32"), [ids], 4, feed)
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) < 0.15  # per-row int8 weights and per-token int8 activations


@needs_kernels
def test_bf16_weights_follow_the_float_model(tiny_files: tuple[Path, Path, Any]) -> None:
    folder, _, _ = tiny_files
    loaded = llmcore.load_model(folder, dtype="bfloat16")
    assert loaded.dtype == torch.float32  # activations and KV cache
    assert all(p.weight.qtype == QuantType.BF16 for p in loaded.model.layers[0].qkv_mm.parts)
    assert isinstance(loaded.model.embed_tokens, QuantWeight)
    ids, feed = _tokens(30, seed=7), _tokens(4, seed=8)
    got = _decode_logits(loaded, [ids], steps=4, feed=feed)
    want = _decode_logits(llmcore.load_model(folder, dtype="float32"), [ids], 4, feed)
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) < 0.03  # bfloat16 weights and activations, float32 sums


def test_unknown_quantization_is_a_load_error(tiny_files: tuple[Path, Path, Any]) -> None:
    folder, _, _ = tiny_files
    with pytest.raises(llmcore.errors.ModelLoadError, match="quantization 'fp4'"):
        llmcore.load_model(folder, quantization="fp4")
