"""Tiny Phi-3 models built by transformers against llmcore (`parity`): one with
LongRoPE, partial rotary (0.75, as Phi-4-mini) and tied embeddings whose
`original_max_position_embeddings` (64) the tests cross, one with a 24-token
sliding window. LongRoPE is checked where transformers' per-pass factor choice
agrees with llmcore's (long factors for every position, as the model serves more
than 64 tokens): sequences past 64 tokens in one pass, or generations whose prompt
is past it; and where they differ (a short sequence), that llmcore rotates it as
transformers rotates it inside a long pass.

GGUF: the same weights written as llama.cpp's converter writes a phi3 file (fused
`attn_qkv` and `ffn_up`, rope factor tensors, `phi3.rope.*` metadata) load to
identical logits; a file whose tensors contradict its metadata names the tensor.
Quantized, the one-call decode step equals the per-op path bit for bit."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import gguf
import gguf.quants
import numpy as np
import pytest
import torch

import llmcore
from llmcore.model_config import ModelConfig
from ops.quant import QuantType, kernels_support
from ops.rotary import rope_attention_factor, rope_cache, rope_inv_freq
from plugins.models.phi3 import Phi3ForCausalLM, rotary_dim, served_window
from tests.plugins.models import parity, tiny_models

ORIGINAL = 64
ROTARY = 12  # 0.75 of the 16-wide heads


def _factors(seed: int, low: float, high: float) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(ROTARY // 2, generator=g)).tolist()


KINDS: dict[str, dict[str, Any]] = {
    "phi3-longrope": {
        "cls": "Phi3",
        "config": {
            "max_position_embeddings": 512,
            "original_max_position_embeddings": ORIGINAL,
            "partial_rotary_factor": 0.75,
            "tie_word_embeddings": True,
            "rope_scaling": {
                "rope_type": "longrope",
                "short_factor": _factors(1, 1.0, 1.5),
                "long_factor": _factors(2, 2.0, 12.0),
            },
        },
    },
    "phi3-window": {"cls": "Phi3", "config": {"sliding_window": 24}},
}


def _perturb_norms(model: Any) -> None:
    """Norm weights other than ones, so that a norm used in the wrong place shows."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))


def build(kind: str, folder: Path) -> Any:
    hf_model = tiny_models.build_spec(kind, KINDS[kind], folder)
    _perturb_norms(hf_model)
    hf_model.save_pretrained(folder)
    return hf_model


@pytest.fixture(scope="module", params=sorted(KINDS))
def tiny(request: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any, Any]:
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    hf_model = build(kind, folder)
    return kind, folder, hf_model, llmcore.load_model(folder, dtype="float32")


def test_config_is_read_as_transformers_reads_it(tiny: tuple[str, Path, Any, Any]) -> None:
    kind, _, hf_model, loaded = tiny
    model = loaded.model
    assert type(model).__name__ == "Phi3ForCausalLM"
    if kind == "phi3-longrope":
        assert model.rotary_dim == ROTARY and model.cos_sin_cache.shape == (512, ROTARY)
        assert loaded.config.rope_scaling["original_max_position_embeddings"] == ORIGINAL
        assert model.lm_head is model.embed_tokens
        assert model.layer_windows == [None] * 3
        assert model.decoder is None  # float weights: the per-op path
        scale = math.sqrt(1 + math.log(512 / ORIGINAL) / math.log(ORIGINAL))
        assert hf_model.model.rotary_emb.attention_scaling == pytest.approx(scale)
        assert float(model.cos_sin_cache[0, 0]) == pytest.approx(scale)
    else:
        assert model.rotary_dim == 16 and model.layer_windows == [24] * 3
        assert all(layer.window == 24 for layer in model.layers)


def test_long_prompt_then_decode_across_blocks(tiny: tuple[str, Path, Any, Any]) -> None:
    _, _, hf_model, loaded = tiny
    parity.long_prompt_then_decode_across_blocks(hf_model, loaded)


@pytest.mark.parametrize("chunk", [7, 23])
def test_chunked_prefill_matches_whole(tiny: tuple[str, Path, Any, Any], chunk: int) -> None:
    _, _, hf_model, loaded = tiny
    parity.chunked_prefill_matches_whole(hf_model, loaded, chunk)


@pytest.mark.slow  # transformers' generate loop as the reference
def test_greedy_generation_matches_transformers(tiny: tuple[str, Path, Any, Any]) -> None:
    kind, _, hf_model, loaded = tiny
    # LoadedModel.max_model_len still caps a windowed model at its window (from
    # before attention took windows); the model itself attends through the window.
    loaded = dataclasses.replace(
        loaded, config=dataclasses.replace(loaded.config, sliding_window=None)
    )
    # LongRoPE: prompts past original_max_position_embeddings, so that transformers
    # uses the long factors from the first pass on, as llmcore does
    cases = ((5, 70), (7, 90)) if kind == "phi3-longrope" else ((5, 3), (6, 40), (7, 77))
    parity.greedy_generation_matches_transformers(hf_model, loaded, cases=cases)


def test_mixed_batch_equals_each_sequence_alone(tiny: tuple[str, Path, Any, Any]) -> None:
    parity.mixed_batch_equals_each_sequence_alone(tiny[3])


def test_decode_batch_equals_each_sequence_alone(tiny: tuple[str, Path, Any, Any]) -> None:
    parity.decode_batch_equals_each_sequence_alone(tiny[3])


def test_short_sequence_is_rotated_with_the_long_factors(
    tiny: tuple[str, Path, Any, Any],
) -> None:
    """Where llmcore and transformers differ: a sequence within
    original_max_position_embeddings. transformers rotates it with the short factors
    when it is the whole pass; llmcore always with the long ones, as transformers
    does for the same tokens at the start of a longer pass."""
    kind, _, hf_model, loaded = tiny
    if kind != "phi3-longrope":
        pytest.skip("LongRoPE only")
    ids = parity.tokens(100, seed=11)
    runner = llmcore.ModelRunner(loaded, num_blocks=4, block_size=parity.BLOCK)
    got = runner.execute([llmcore.SequenceChunk(ids[:30], 0, [0, 1])])[0]
    in_long_pass = parity.hf_logits(hf_model, ids)[29]
    alone = parity.hf_logits(hf_model, ids[:30])[29]
    assert parity.rel(got, in_long_pass) < 1e-4
    assert parity.rel(got, alone) > 1e-2


# ---- GGUF ---------------------------------------------------------------------------

T = gguf.GGMLQuantizationType


def gguf_writer(
    hf_model: Any, path: Path, arch: str, head_count_kv: int | None = None
) -> gguf.GGUFWriter:
    """A writer holding the metadata llama.cpp's converter writes for any text model
    (`head_count_kv` overrides the model's, to make the file lie)."""
    c = hf_model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(head_count_kv or c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_vocab_size(c.vocab_size)
    return w


def write_tensors(w: gguf.GGUFWriter, hf_model: Any, arch: gguf.MODEL_ARCH, put: Any) -> None:
    """Every weight of `hf_model` under the GGUF name llama.cpp's tensor map gives
    it, through `put(name, array, is_matrix)`, then the file is written."""
    names = gguf.get_tensor_name_map(arch, hf_model.config.num_hidden_layers)
    for key, value in hf_model.state_dict().items():
        if key == "lm_head.weight" and hf_model.config.tie_word_embeddings:
            continue
        name = names.get_name(key.removesuffix(".weight"))
        assert name is not None, key
        data = np.ascontiguousarray(value.float().numpy())
        put(name + ".weight", data, data.ndim == 2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_phi3_gguf(
    hf_model: Any, path: Path, qtype: T = T.F32, head_count_kv: int | None = None
) -> Path:
    """The model as llama.cpp's convert_hf_to_gguf.py writes a phi3 file (matrices
    in `qtype`; fused `attn_qkv` and `ffn_up` as the checkpoint has them)."""
    c = hf_model.config
    rope = c.rope_parameters
    w = gguf_writer(hf_model, path, "phi3", head_count_kv)
    original = rope.get("original_max_position_embeddings", c.original_max_position_embeddings)
    w.add_rope_scaling_orig_ctx_len(original)
    head_dim = c.hidden_size // c.num_attention_heads
    w.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
    w.add_sliding_window(c.sliding_window or 0)

    def put(name: str, data: np.ndarray, matrix: bool = False) -> None:
        if matrix and qtype != T.F32:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, data.astype(np.float32))

    if rope.get("long_factor"):
        scale = c.max_position_embeddings / original
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
        put("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
        put("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    write_tensors(w, hf_model, gguf.MODEL_ARCH.PHI3, put)
    return path


def prompt_then_decode_logits(loaded: Any, ids: list[int], prompt: int) -> list[torch.Tensor]:
    """A prompt's logits, then those of decode steps over the rest of `ids`."""
    table = list(range(-(-len(ids) // parity.BLOCK)))
    runner = llmcore.ModelRunner(loaded, num_blocks=len(table), block_size=parity.BLOCK)
    out = [runner.execute([llmcore.SequenceChunk(ids[:prompt], 0, table)])[0]]
    for pos in range(prompt, len(ids)):
        out.append(runner.execute([llmcore.SequenceChunk([ids[pos]], pos, table)])[0])
    return out


def assert_same_logits(a: Any, b: Any, ids: list[int], prompt: int) -> None:
    """Two loaded models give bit-identical logits over a prompt and decode steps."""
    logits = zip(
        prompt_then_decode_logits(a, ids, prompt),
        prompt_then_decode_logits(b, ids, prompt),
        strict=True,
    )
    for got, want in logits:
        assert torch.equal(got, want)


def test_gguf_loads_to_the_folders_logits(tiny: tuple[str, Path, Any, Any], tmp_path: Path) -> None:
    kind, _, hf_model, from_folder = tiny
    path = write_phi3_gguf(hf_model, tmp_path / f"{kind}.gguf")
    loaded = llmcore.load_model(path)
    assert loaded.config.architecture == "Phi3ForCausalLM"
    assert loaded.model.rotary_dim == from_folder.model.rotary_dim
    assert loaded.model.layer_windows == from_folder.model.layer_windows
    assert torch.equal(loaded.model.cos_sin_cache, from_folder.model.cos_sin_cache)
    assert_same_logits(loaded, from_folder, parity.tokens(90, seed=21), prompt=70)


def test_gguf_whose_tensors_contradict_its_metadata_names_the_tensor(
    tiny: tuple[str, Path, Any, Any], tmp_path: Path
) -> None:
    _, _, hf_model, _ = tiny
    path = write_phi3_gguf(hf_model, tmp_path / "lying.gguf", head_count_kv=1)
    with pytest.raises(
        llmcore.errors.CorruptModelFileError,
        match=r"'blk\.0\.attn_qkv\.weight' has shape \[128, 64\]",
    ):
        llmcore.load_model(path)


needs_kernels = pytest.mark.skipif(
    not all(kernels_support(QuantType(int(t))) for t in (T.Q8_0, QuantType.I8_ROW)),
    reason="the quantized CPU kernels are not built here",
)


@needs_kernels
@pytest.mark.parametrize("source", ["int8", "gguf-q8_0"])
def test_one_call_decode_equals_the_per_op_path(
    tiny: tuple[str, Path, Any, Any], tmp_path: Path, source: str
) -> None:
    """Quantized Phi-3 keeps Llama's one-call decode step (partial rotary and the
    LongRoPE attention factor are in the table it takes) unless it has a window."""
    kind, folder, hf_model, _ = tiny
    if source == "int8":
        loaded = llmcore.load_model(folder, quantization="int8")
    else:
        loaded = llmcore.load_model(write_phi3_gguf(hf_model, tmp_path / "q.gguf", T.Q8_0))
    if kind == "phi3-window":
        assert loaded.model.decoder is None
        return
    assert loaded.model.decoder is not None
    ids = parity.tokens(90, seed=31)
    fused = prompt_then_decode_logits(loaded, ids, 70)
    loaded.model.decoder = None
    for f, p in zip(fused, prompt_then_decode_logits(loaded, ids, 70), strict=True):
        assert torch.equal(f, p)


def test_legacy_phi3_config_json_is_read_as_transformers_reads_it() -> None:
    """Phi-3.5-mini's own config.json (transformers 4 layout): `rope_scaling` with
    `type` and the factor lists, `original_max_position_embeddings` at the top;
    Phi-4-mini's top-level `partial_rotary_factor`."""
    from transformers import Phi3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    raw = {
        "architectures": ["Phi3ForCausalLM"],
        "vocab_size": 32064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "partial_rotary_factor": 0.75,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "longrope",
            "short_factor": _factors(3, 1.0, 3.0) * 8,
            "long_factor": _factors(4, 1.0, 40.0) * 8,
        },
        "sliding_window": 262144,
    }
    config = ModelConfig.from_hf(raw)
    assert config.rope_scaling is not None
    assert config.rope_scaling["original_max_position_embeddings"] == 4096
    assert rotary_dim(config) == 96 and served_window(config) is None
    hf = Phi3Config(**{k: v for k, v in raw.items() if k != "architectures"})
    want, want_factor = ROPE_INIT_FUNCTIONS["longrope"](hf, "cpu", seq_len=4097)
    got = rope_inv_freq(
        rotary_dim(config),
        config.rope_theta,
        config.rope_scaling,
        max_position_embeddings=config.max_position_embeddings,
    )
    assert torch.equal(got, want)
    assert rope_attention_factor(config.rope_scaling, 131072) == want_factor
    # an old "yarn"-typed Phi-3 config is LongRoPE to transformers (Phi3Config)
    yarn_typed = {**raw, "rope_scaling": {**raw["rope_scaling"], "type": "yarn"}}
    model = Phi3ForCausalLM(ModelConfig.from_hf(yarn_typed), torch.float32, torch.device("cpu"))
    long_table = rope_cache(96, 1e4, config.rope_scaling, 131072)
    assert torch.equal(model.cos_sin_cache, long_table)
