"""Tiny Gemma 2 and Gemma 3 models built by transformers: llmcore's forward pass over
the paged KV cache against transformers (the checks of `parity`) through prompts well
past the sliding window, chunked prefill, decode across blocks and batches; that each
Gemma feature the models carry changes their logits (so the checks can fail); the
`(1 + w)` norm folded at load changes no bit; and config.json files read as
transformers reads them.

The models: random weights, norm weights drawn too (transformers starts them at 0,
where `1 + w` would hide a missing fold). "gemma2": attention soft cap 8 and final
cap 3 (both bite), window 24, GQA 4:2, sliding and global layers alternating.
"gemma3": q/k norms, layers sliding-sliding-global-sliding (`sliding_window_pattern`
3), window 32, `query_pre_attn_scalar` 32 (not head_dim), global rope 1e6 with linear
scaling 4 and local rope base 100, GQA 4:1.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import llmcore
from llmcore.engine.config import EngineConfig
from llmcore.engine.core import EngineCore
from llmcore.errors import CorruptModelFileError, UnsupportedArchitectureError
from llmcore.model_config import ModelConfig
from llmcore.sampling_params import SamplingParams
from ops import dispatch
from ops.cpu import _build
from ops.rotary import build_rope_cache
from plugins.models.gemma import (
    FULL,
    GEMMA3_TEXT_DEFAULTS,
    SLIDING,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
)
from tests.llmcore.engine.test_sliding_window_engine import _write_tokenizer as write_tokenizer
from tests.plugins.models import parity, tiny_models

SPECS: dict[str, dict[str, Any]] = {
    "gemma2": {
        "cls": "Gemma2",
        "config": {
            "head_dim": 16,
            "num_hidden_layers": 4,
            "sliding_window": 24,
            "attn_logit_softcapping": 8.0,
            "final_logit_softcapping": 3.0,
            "query_pre_attn_scalar": 16,  # head_dim: what llama.cpp's GGUF implies
        },
    },
    "gemma3": {
        "config_cls": "Gemma3TextConfig",
        "model_cls": "Gemma3ForCausalLM",
        "config": {
            "head_dim": 16,
            "num_hidden_layers": 4,
            "num_key_value_heads": 1,
            "sliding_window": 32,
            "sliding_window_pattern": 3,
            "query_pre_attn_scalar": 32,
            "rope_theta": 1e6,
            "rope_scaling": {"rope_type": "linear", "factor": 4.0},
            "rope_local_base_freq": 100.0,
        },
    },
    # for the GGUF round trip: only what llama.cpp's GGUF metadata can say (five
    # sliding layers to a global one, queries scaled by head_dim, local base 10000)
    "gemma3-gguf": {
        "config_cls": "Gemma3TextConfig",
        "model_cls": "Gemma3ForCausalLM",
        "config": {
            "head_dim": 16,
            "num_hidden_layers": 6,
            "sliding_window": 24,
            "query_pre_attn_scalar": 16,
            "rope_theta": 50000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0},
            "final_logit_softcapping": 4.0,
        },
    },
}


def build(kind: str, folder: Path) -> Any:
    """Build and save the tiny model `kind` with random norm weights; the HF model."""
    hf_model = tiny_models.build_spec(kind, SPECS[kind], folder)
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    hf_model.save_pretrained(folder)
    return hf_model


@pytest.fixture(scope="module", params=["gemma2", "gemma3"])
def tiny(request: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any, Any]:
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    hf_model = build(kind, folder)
    return kind, folder, hf_model, llmcore.load_model(folder, dtype="float32")


def test_layers_read_as_transformers_builds_them(tiny: tuple[str, Path, Any, Any]) -> None:
    kind, _, hf_model, loaded = tiny
    model, c = loaded.model, hf_model.config
    assert loaded.config.architecture == f"{kind.capitalize()}ForCausalLM"
    assert SLIDING in c.layer_types and FULL in c.layer_types
    windows = [c.sliding_window if t == SLIDING else None for t in c.layer_types]
    assert model.layer_windows == windows
    assert [layer.window for layer in model.layers] == windows
    assert model.scale == hf_model.model.layers[0].self_attn.scaling
    assert model.lm_head is model.embed_tokens  # tied
    rotary = hf_model.model.rotary_emb
    for kind_ in (SLIDING, FULL):
        inv_freq = getattr(rotary, f"{kind_}_inv_freq", None)
        if inv_freq is None:  # Gemma 2: one table
            inv_freq = rotary.inv_freq
        want = build_rope_cache(inv_freq.float(), c.max_position_embeddings)
        assert torch.equal(model.rope_tables[kind_], want)
    if kind == "gemma3":
        assert not torch.equal(model.rope_tables[SLIDING], model.rope_tables[FULL])


def test_long_prompt_then_decode_across_blocks(tiny: tuple[str, Path, Any, Any]) -> None:
    _, _, hf_model, loaded = tiny
    parity.long_prompt_then_decode_across_blocks(hf_model, loaded)  # 100 + 50: past windows


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


def test_engine_keeps_only_the_window_in_sliding_groups(tiny: tuple[str, Path, Any, Any]) -> None:
    """The engine gives sliding and global layers KV cache groups of their own: the
    sliding group of a long request holds about a window of blocks, the global one
    all, and the tokens are those of a runner that keeps every block."""
    _, folder, hf_model, loaded = tiny
    write_tokenizer(folder)
    config = EngineConfig(block_size=parity.BLOCK, kv_cache_memory=8 << 20)
    core = EngineCore(loaded, llmcore.load_tokenizer(folder), config)
    window = hf_model.config.sliding_window
    assert [g.window for g in core.statistics().kv_groups] == [None, window]
    prompt, n = parity.tokens(40, seed=11), 60
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    core.add(core.make_requests(prompt, params, "long"))
    got: list[int] = []
    while core.has_work():
        for out in core.step():
            got += out.outputs[0].token_ids
        used = {g.window: g.num_used_blocks for g in core.statistics().kv_groups}
        if core.has_work():
            assert used[window] <= -(-window // parity.BLOCK) + 1
            assert used[None] >= (len(prompt) + len(got)) // parity.BLOCK
    table = parity.blocks(len(prompt) + n)
    runner = llmcore.ModelRunner(loaded, num_blocks=len(table) + 1, block_size=parity.BLOCK)
    assert got == llmcore.greedy_generate(runner, prompt, n)


def _last_logits(loaded: Any, ids: list[int]) -> torch.Tensor:
    table = parity.blocks(len(ids))
    runner = llmcore.ModelRunner(loaded, num_blocks=len(table), block_size=parity.BLOCK)
    return runner.execute([llmcore.SequenceChunk(ids, 0, table)])[0]


def test_each_feature_changes_the_logits(tiny: tuple[str, Path, Any, Any]) -> None:
    """Without each Gemma feature the model carries, the logits of a prompt past the
    window leave transformers' by far more than the parity tolerance."""
    kind, folder, hf_model, _ = tiny
    ids = parity.tokens(100, seed=5)
    want = parity.hf_logits(hf_model, ids)[-1]

    def off(change: Any) -> float:
        loaded = llmcore.load_model(folder, dtype="float32")
        change(loaded.model)
        return parity.rel(_last_logits(loaded, ids), want)

    def no_windows(m: Any) -> None:
        for layer in m.layers:
            layer.window = None

    def one_rope(m: Any) -> None:
        for layer in m.layers:
            layer.rope = m.rope_tables[FULL]

    def no_qk_norms(m: Any) -> None:
        for layer in m.layers:
            layer.q_norm = layer.k_norm = None

    def no_normalizer(m: Any) -> None:
        m.normalizer = torch.ones_like(m.normalizer)

    changes = [no_windows, no_normalizer]
    if kind == "gemma2":
        changes += [
            lambda m: setattr(m, "gemma", dataclasses.replace(m.gemma, attn_soft_cap=None)),
            lambda m: setattr(m, "gemma", dataclasses.replace(m.gemma, final_soft_cap=None)),
        ]
    else:
        changes += [one_rope, no_qk_norms]
    assert off(lambda m: None) < 1e-4
    for change in changes:
        assert off(change) > 1e-2, change


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_folded_norm_is_bit_exact(
    tiny: tuple[str, Path, Any, Any], dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemma's RMSNorm with `1 + w` formed at load gives transformers' bits (the torch
    reference; the C kernel sums the squares in another order)."""
    _, _, hf_model, loaded = tiny
    hf_norm = hf_model.model.layers[0].post_feedforward_layernorm
    x = (torch.randn(5, hf_norm.weight.shape[0]) * 3).to(dtype)
    monkeypatch.setattr(_build, "library", lambda: None)
    dispatch.clear_caches()
    try:
        got = loaded.model._norm(x, loaded.model.layers[0].post_ff_norm)
    finally:
        dispatch.clear_caches()
    with torch.no_grad():
        want = hf_norm(x)
    assert got.dtype == dtype and torch.equal(got, want)


# ---- config.json files ---------------------------------------------------------------

# In the shape of the published config.json files (the keys that matter here).
GEMMA2_2B = {
    "architectures": ["Gemma2ForCausalLM"],
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "max_position_embeddings": 8192,
    "model_type": "gemma2",
    "num_attention_heads": 8,
    "num_hidden_layers": 26,
    "num_key_value_heads": 4,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "vocab_size": 256000,
}
GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"],
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "intermediate_size": 6912,
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 26,
    "num_key_value_heads": 1,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "vocab_size": 262144,
}
# The 4B's text model, rope scaled for its global layers.
GEMMA3_4B_TEXT = {
    **GEMMA3_1B,
    "hidden_size": 2560,
    "intermediate_size": 10240,
    "num_hidden_layers": 34,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    "sliding_window": 1024,
}


def _hf_config(raw: dict[str, Any]) -> Any:
    import transformers

    cls = transformers.Gemma2Config if raw["model_type"] == "gemma2" else None
    cls = cls or transformers.Gemma3TextConfig
    return cls(**{k: v for k, v in raw.items() if k != "architectures"})


@pytest.mark.parametrize(
    ("raw", "plugin"),
    [
        (GEMMA2_2B, Gemma2ForCausalLM),
        (GEMMA3_1B, Gemma3ForCausalLM),
        (GEMMA3_4B_TEXT, Gemma3ForCausalLM),
    ],
    ids=["gemma-2-2b", "gemma-3-1b", "gemma-3-4b-text"],
)
def test_published_configs_read_as_transformers_reads_them(
    raw: dict[str, Any], plugin: Any
) -> None:
    hf = _hf_config(raw)
    s = plugin.settings(ModelConfig.from_hf(raw))
    assert list(s.layer_types) == hf.layer_types
    assert s.sliding_window == hf.sliding_window
    assert s.query_pre_attn_scalar == hf.query_pre_attn_scalar
    assert s.final_soft_cap == hf.final_logit_softcapping
    assert s.attn_soft_cap == (hf.attn_logit_softcapping if plugin is Gemma2ForCausalLM else None)
    for kind in (SLIDING, FULL):
        params = hf.rope_parameters.get(kind, hf.rope_parameters)
        base, scaling = s.rope[kind]
        assert base == params["rope_theta"]
        if params["rope_type"] == "default":
            assert scaling is None
        else:
            assert scaling is not None and scaling["rope_type"] == params["rope_type"]
            assert scaling["factor"] == params["factor"]
    # the same config as transformers 5 saves it (layer_types, rope_parameters per kind)
    saved = hf.to_dict()
    saved.pop("sliding_window_pattern", None)
    saved.pop("rope_local_base_freq", None)
    saved["architectures"] = raw["architectures"]
    assert plugin.settings(ModelConfig.from_hf(saved)) == s


def test_gemma3_pattern_of_the_1b() -> None:
    s = Gemma3ForCausalLM.settings(ModelConfig.from_hf(GEMMA3_1B))
    assert [i for i, t in enumerate(s.layer_types) if t == FULL] == [5, 11, 17, 23]
    assert s.rope == {FULL: (1e6, None), SLIDING: (1e4, None)}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"hidden_activation": "gelu"}, "hidden_activation 'gelu'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
        ({"layer_types": ["sliding_attention"] * 3}, "layer_types must name 26 layers"),
        ({"layer_types": ["chunked_attention"] * 26}, "layer_types must name 26 layers"),
        ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ],
)
def test_configs_it_cannot_serve_are_refused(change: dict[str, Any], match: str) -> None:
    with pytest.raises(UnsupportedArchitectureError, match=match):
        Gemma3ForCausalLM.settings(ModelConfig.from_hf({**GEMMA3_1B, **change}))


def test_gemma3_attention_cap_is_ignored_as_transformers_ignores_it() -> None:
    s = Gemma3ForCausalLM.settings(
        ModelConfig.from_hf({**GEMMA3_1B, "attn_logit_softcapping": 20.0})
    )
    assert s.attn_soft_cap is None


# ---- Gemma3ForConditionalGeneration, served as text -------------------------------------


def test_multimodal_checkpoint_serves_its_language_model(tmp_path: Path) -> None:
    """A tiny Gemma3ForConditionalGeneration saved by transformers (weights under
    `language_model.`, a SigLIP tower beside them): the text logits are transformers'."""
    import transformers

    text = {
        **tiny_models._common(),
        **SPECS["gemma3"]["config"],
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
    }
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    vision |= {"num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    config = transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4
    )
    torch.manual_seed(0)
    hf_model = transformers.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    hf_model.save_pretrained(tmp_path)
    loaded = llmcore.load_model(tmp_path, dtype="float32")
    assert loaded.config.architecture == "Gemma3ForConditionalGeneration"
    assert loaded.config.vocab_size == tiny_models.VOCAB
    assert loaded.model.layer_windows == [32, 32, None, 32]
    ids = parity.tokens(80, seed=9)
    want = parity.hf_logits(hf_model, ids)
    table = parity.blocks(len(ids))
    runner = llmcore.ModelRunner(loaded, num_blocks=len(table), block_size=parity.BLOCK)
    got = runner.execute([llmcore.SequenceChunk(ids[:70], 0, table)])[0]
    assert parity.rel(got, want[69]) < 1e-4
    for pos in range(70, 80):
        got = runner.execute([llmcore.SequenceChunk([ids[pos]], pos, table)])[0]
        assert parity.rel(got, want[pos]) < 1e-4


# The 4B's config.json: its text_config names only what differs from the defaults.
GEMMA3_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "eos_token_id": [1, 106],
    "model_type": "gemma3",
    "text_config": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "model_type": "gemma3_text",
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "vision_config": {"model_type": "siglip_vision_model"},
}


def test_multimodal_config_reads_as_transformers_reads_it() -> None:
    import transformers

    hf = transformers.Gemma3Config(**GEMMA3_4B).text_config
    for key, value in GEMMA3_TEXT_DEFAULTS.items():  # the defaults are transformers'
        if key not in ("sliding_window_pattern", "rope_theta", "rope_local_base_freq"):
            assert getattr(transformers.Gemma3TextConfig(), key) == value, key
    flat = Gemma3ForConditionalGeneration.adapt_hf_config(GEMMA3_4B)
    config = ModelConfig.from_hf(flat)
    assert config.architecture == "Gemma3ForConditionalGeneration"
    assert config.eos_token_ids == [1, 106]
    for field in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads"):
        assert getattr(config, field) == getattr(hf, field), field
    assert (config.head_dim, config.max_position_embeddings) == (hf.head_dim, 131072)
    s = Gemma3ForConditionalGeneration.settings(config)
    assert list(s.layer_types) == hf.layer_types and s.sliding_window == 1024
    assert s.rope == {
        FULL: (1e6, {"factor": 8.0, "rope_type": "linear", "rope_theta": 1e6}),
        SLIDING: (1e4, None),
    }
    assert hf.rope_parameters[FULL]["factor"] == 8.0
    assert hf.rope_parameters[SLIDING]["rope_theta"] == 1e4


def test_vision_weights_are_skipped_and_text_weights_renamed() -> None:
    config = ModelConfig.from_hf(Gemma3ForConditionalGeneration.adapt_hf_config(GEMMA3_4B))
    model = Gemma3ForConditionalGeneration.__new__(Gemma3ForConditionalGeneration)
    model.config = config
    norm = torch.zeros(2560)
    names = [
        "vision_tower.vision_model.post_layernorm.weight",
        "multi_modal_projector.mm_soft_emb_norm.weight",
        "model.vision_tower.vision_model.post_layernorm.weight",
        "language_model.model.norm.weight",  # as the released files (and transformers 5.25)
        "model.language_model.norm.weight",  # transformers' module layout
        "language_model.lm_head.weight",
    ]
    out = [name for name, _ in model._checked((n, norm) for n in names[:5])]
    assert out == ["model.norm.weight", "model.norm.weight"]
    with pytest.raises(CorruptModelFileError, match=r"'language_model\.lm_head\.weight' has shape"):
        list(model._checked([(names[5], norm)]))
