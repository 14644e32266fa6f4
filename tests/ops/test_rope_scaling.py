"""Rope scaling types against transformers' own `ROPE_INIT_FUNCTIONS`: inverse
frequencies bit for bit and the attention factor (cos and sin scaling) for many
configs of linear, llama3, dynamic NTK, YaRN and LongRoPE, full and partial
rotary; the cos/sin table against transformers' rotary module. Dynamic NTK and
LongRoPE are compared in the regime where transformers' per-pass choice agrees
with llmcore's position-consistent one (`ops.rotary.rope_inv_freq`): a pass that
ends at the served length.

Then through a model: tiny Llamas with YaRN and with dynamic NTK scaling against
transformers (`tests.plugins.models.parity`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import llmcore
from ops.rotary import build_rope_cache, rope_attention_factor, rope_cache, rope_inv_freq
from tests.plugins.models import parity, tiny_models


def _hf(params: dict[str, Any], head_dim: int, max_pos: int, partial: float | None = None) -> Any:
    """A transformers config holding `params` as its rope parameters."""
    from transformers import LlamaConfig

    rope = dict(params)
    if partial is not None:
        rope["partial_rotary_factor"] = partial
    return LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters=rope,
    )


def _hf_rope(config: Any, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    kind = config.rope_parameters["rope_type"]
    return ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len=seq_len)  # type: ignore[no-any-return]


def _factors(n: int, seed: int, low: float, high: float) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)).tolist()


# (rope parameters, head_dim, max_position_embeddings, partial_rotary_factor)
STATIC_CASES: dict[str, tuple[dict[str, Any], int, int, float | None]] = {
    "linear": ({"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}, 64, 8192, None),
    "linear-partial": ({"rope_type": "linear", "factor": 2.5, "rope_theta": 5e5}, 80, 4096, 0.4),
    "llama3": (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_theta": 5e5,
        },
        128,
        131072,
        None,
    ),
    "yarn-qwen": (  # Qwen2.5 / Qwen3's recommended YaRN
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 32768,
            "rope_theta": 1e6,
        },
        128,
        131072,
        None,
    ),
    "yarn-no-truncate": (  # gpt-oss style: exact correction range
        {
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
            "rope_theta": 150000.0,
        },
        64,
        131072,
        None,
    ),
    "yarn-mscale": (  # DeepSeek style mscale / mscale_all_dim
        {
            "rope_type": "yarn",
            "factor": 40.0,
            "beta_fast": 24,
            "beta_slow": 2,
            "mscale": 0.707,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "rope_theta": 1e4,
        },
        64,
        163840,
        None,
    ),
    "yarn-attention-factor": (
        {
            "rope_type": "yarn",
            "factor": 2.0,
            "attention_factor": 0.875,
            "original_max_position_embeddings": 2048,
            "rope_theta": 1e4,
        },
        32,
        4096,
        0.5,
    ),
    "yarn-original-default": (  # original_max_position_embeddings from the config
        {"rope_type": "yarn", "factor": 3.0, "rope_theta": 1e4},
        64,
        2048,
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(STATIC_CASES))
def test_static_types_match_transformers(case: str) -> None:
    params, head_dim, max_pos, partial = STATIC_CASES[case]
    want, want_factor = _hf_rope(_hf(params, head_dim, max_pos, partial))
    rotary = int(head_dim * (partial or 1.0))
    got = rope_inv_freq(rotary, params["rope_theta"], params, max_position_embeddings=max_pos)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert rope_attention_factor(params, max_pos) == want_factor
    # the served length does not matter to them
    again = rope_inv_freq(
        rotary, params["rope_theta"], params, max_position_embeddings=max_pos, max_positions=7
    )
    assert torch.equal(again, want)


@pytest.mark.parametrize("factor", [2.0, 3.5])
@pytest.mark.parametrize("partial", [None, 0.5])
@pytest.mark.parametrize("served", [None, 2048, 3000, 8192])
def test_dynamic_ntk_matches_a_transformers_pass_of_the_served_length(
    factor: float, partial: float | None, served: int | None
) -> None:
    """transformers recomputes the NTK base from each pass's last position (never
    below max_position_embeddings); the table fixes it by the served length, so the
    two agree for a pass of exactly that length, and for every pass when the model
    serves no more than its max_position_embeddings (no scaling at all)."""
    params = {"rope_type": "dynamic", "factor": factor, "rope_theta": 1e4}
    head_dim, max_pos = 64, 2048
    config = _hf(params, head_dim, max_pos, partial)
    rotary = int(head_dim * (partial or 1.0))
    got = rope_inv_freq(rotary, 1e4, params, max_position_embeddings=max_pos, max_positions=served)
    want, want_factor = _hf_rope(config, seq_len=served or max_pos)
    assert torch.equal(got, want)
    assert rope_attention_factor(params, max_pos) == want_factor == 1.0
    if (served or max_pos) <= max_pos:
        unscaled = rope_inv_freq(rotary, 1e4)
        for seq_len in (1, 100, max_pos):  # every pass within the context: unscaled
            assert torch.equal(_hf_rope(config, seq_len=seq_len)[0], unscaled)
        assert torch.equal(got, unscaled)
    else:
        assert not torch.equal(_hf_rope(config, seq_len=max_pos)[0], got)


LONGROPE_CASES: dict[str, tuple[dict[str, Any], int, int, float | None]] = {
    # Phi-3-mini-128k / Phi-3.5-mini: 96-wide heads, 4k pre-training, 128k served
    "phi3.5-mini": (
        {
            "rope_type": "longrope",
            "short_factor": _factors(48, 1, 1.0, 1.2),
            "long_factor": _factors(48, 2, 1.0, 60.0),
            "original_max_position_embeddings": 4096,
            "rope_theta": 1e4,
        },
        96,
        131072,
        None,
    ),
    # Phi-4-mini: 128-wide heads, 0.75 of them rotated
    "phi4-mini": (
        {
            "rope_type": "longrope",
            "short_factor": _factors(48, 3, 1.0, 3.0),
            "long_factor": _factors(48, 4, 1.0, 40.0),
            "original_max_position_embeddings": 4096,
            "rope_theta": 1e4,
        },
        128,
        131072,
        0.75,
    ),
    "explicit-factor": (
        {
            "rope_type": "longrope",
            "factor": 16.0,
            "short_factor": _factors(16, 5, 0.5, 2.0),
            "long_factor": _factors(16, 6, 1.0, 16.0),
            "original_max_position_embeddings": 2048,
            "rope_theta": 5e5,
        },
        32,
        65536,
        None,
    ),
    "explicit-attention-factor": (
        {
            "rope_type": "longrope",
            "attention_factor": 1.3,
            "short_factor": _factors(16, 7, 1.0, 1.5),
            "long_factor": _factors(16, 8, 2.0, 8.0),
            "original_max_position_embeddings": 256,
            "rope_theta": 1e4,
        },
        32,
        4096,
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(LONGROPE_CASES))
def test_longrope_matches_transformers_where_its_pass_agrees(case: str) -> None:
    """Long factors when the served length passes original_max_position_embeddings
    (transformers: a pass that reaches past it), short ones when it does not (a pass
    within it); the attention factor in both."""
    params, head_dim, max_pos, partial = LONGROPE_CASES[case]
    config = _hf(params, head_dim, max_pos, partial)
    rotary = int(head_dim * (partial or 1.0))
    original = params["original_max_position_embeddings"]
    theta = params["rope_theta"]
    for served, hf_pass in ((None, original + 1), (max_pos, max_pos), (original, original)):
        got = rope_inv_freq(
            rotary, theta, params, max_position_embeddings=max_pos, max_positions=served
        )
        want, want_factor = _hf_rope(config, seq_len=hf_pass)
        assert torch.equal(got, want), served
        assert rope_attention_factor(params, max_pos) == want_factor
    short_pass = _hf_rope(config, seq_len=original)[0]
    long_table = rope_inv_freq(rotary, theta, params, max_position_embeddings=max_pos)
    assert not torch.equal(short_pass, long_table)  # where llmcore and transformers differ


def test_phi3_longrope_attention_factor_is_the_papers() -> None:
    params, _, max_pos, _ = LONGROPE_CASES["phi3.5-mini"]
    want = math.sqrt(1 + math.log(131072 / 4096) / math.log(4096))
    assert rope_attention_factor(params, max_pos) == pytest.approx(want, rel=1e-15)


@pytest.mark.parametrize("case", ["yarn-mscale", "phi4-mini"])
def test_cos_sin_table_equals_transformers_rotary_module(case: str) -> None:
    """`rope_cache` against transformers' own rotary module over a pass that agrees:
    cos and sin times the attention factor, partial rotary included."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    params, head_dim, max_pos, partial = {**STATIC_CASES, **LONGROPE_CASES}[case]
    config = _hf(params, head_dim, max_pos, partial)
    rotary = int(head_dim * (partial or 1.0))
    served = 5000  # past LongRoPE's original 4096: the long factors, as transformers
    table = rope_cache(rotary, params["rope_theta"], params, max_pos, max_positions=served)
    assert table.shape == (served, rotary)
    module = LlamaRotaryEmbedding(config)
    positions = torch.arange(served)[None]
    cos, sin = module(torch.zeros(1, dtype=torch.float32), positions)
    half = rotary // 2
    assert torch.equal(table[:, :half], cos[0, :, :half])
    assert torch.equal(table[:, half:], sin[0, :, :half])
    assert float(table[0, 0]) == pytest.approx(rope_attention_factor(params, max_pos))


def test_attention_factor_scales_cos_and_sin() -> None:
    inv_freq = rope_inv_freq(16, 1e4)
    plain, scaled = build_rope_cache(inv_freq, 9), build_rope_cache(inv_freq, 9, 1.25)
    assert torch.equal(scaled, plain * 1.25)


def test_bad_configs_raise_value_error_naming_the_problem() -> None:
    with pytest.raises(ValueError, match="unsupported rope scaling type 'ntk-by-parts'"):
        rope_inv_freq(64, 1e4, {"rope_type": "ntk-by-parts", "factor": 2.0})
    with pytest.raises(ValueError, match="'longrope' lacks the parameter 'long_factor'"):
        rope_inv_freq(
            8,
            1e4,
            {"rope_type": "longrope", "short_factor": [1.0] * 4},
            max_position_embeddings=64,
        )
    with pytest.raises(ValueError, match="long_factor has 3 entries"):
        rope_inv_freq(
            8,
            1e4,
            {"rope_type": "su", "short_factor": [1.0] * 4, "long_factor": [1.0] * 3},
            max_position_embeddings=64,
            max_positions=128,
        )
    with pytest.raises(ValueError, match="'dynamic' needs the model's max_position_embeddings"):
        rope_inv_freq(64, 1e4, {"rope_type": "dynamic", "factor": 2.0})


# ---- through a model --------------------------------------------------------------

LLAMA_KINDS: dict[str, dict[str, Any]] = {
    "llama-yarn": {
        "cls": "Llama",
        "config": {
            "max_position_embeddings": 256,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
                "beta_fast": 16.0,
                "beta_slow": 1.0,
                "rope_theta": 10000.0,
            },
        },
    },
    # every pass served stays within max_position_embeddings: transformers does not
    # rescale, nor does llmcore (see ops.rotary.rope_inv_freq)
    "llama-dynamic": {
        "cls": "Llama",
        "config": {
            "max_position_embeddings": 256,
            "rope_scaling": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
        },
    },
}


@pytest.fixture(scope="module", params=sorted(LLAMA_KINDS))
def scaled_llama(request: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    folder: Path = tmp_path_factory.mktemp(request.param)
    hf_model = tiny_models.build_spec(request.param, LLAMA_KINDS[request.param], folder)
    return hf_model, llmcore.load_model(folder, dtype="float32")


def test_scaled_llama_matches_transformers(scaled_llama: tuple[Any, Any]) -> None:
    hf_model, loaded = scaled_llama
    kind = loaded.config.rope_scaling["rope_type"]
    if kind == "yarn":  # YaRN's attention factor is in the table
        assert float(loaded.model.cos_sin_cache[0, 0]) == pytest.approx(0.1 * math.log(4) + 1)
    parity.long_prompt_then_decode_across_blocks(hf_model, loaded, prompt=90, total=120)
    parity.chunked_prefill_matches_whole(hf_model, loaded, chunk=23, n=70)


def test_gguf_yarn_metadata_names_the_original_context(tmp_path: Path) -> None:
    """llama.cpp writes YaRN as `rope.scaling.type/factor/original_context_length`:
    the config gets Hugging Face's `original_max_position_embeddings` from it."""
    import gguf
    import numpy as np

    from llmcore.weights.gguf_file import GGUFFile

    w = gguf.GGUFWriter(str(tmp_path / "yarn.gguf"), "llama")
    for add, value in (
        (w.add_context_length, 131072),
        (w.add_embedding_length, 64),
        (w.add_feed_forward_length, 128),
        (w.add_block_count, 1),
        (w.add_head_count, 4),
        (w.add_vocab_size, 10),
        (w.add_rope_scaling_factor, 4.0),
        (w.add_rope_scaling_orig_ctx_len, 32768),
    ):
        add(value)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    config = GGUFFile(tmp_path / "yarn.gguf").model_config("LlamaForCausalLM")
    assert config.rope_scaling == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32768,
    }
