"""Tiny Qwen3 and Qwen3-MoE models built by transformers: llmcore's forward pass
over the paged KV cache against transformers (the checks of `parity`: long prompts
then decode across blocks, chunked prefill, greedy generation, mixed batches and
decode batches), float32 logits within 1e-4.

- qwen3: GQA 4:2 with head_dim 32 (q is 128 wide, the hidden size 64), q/k head
  norms, tied embeddings, rope_theta 1e6, a sliding window of 40 tokens in layers 1
  and 2 (`max_window_layers` 1) and full attention in layer 0;
- qwen3-moe: 8 experts, top-2, renormalised (`norm_topk_prob`), layer 1 a dense MLP
  (`mlp_only_layers`), GQA 4:1 with head_dim 48;
- qwen3-moe-step: 6 experts, top-3, not renormalised, `decoder_sparse_step` 2
  (layer 1 sparse, layers 0 and 2 dense), a sliding window of 24 tokens in every
  layer (Qwen3-MoE applies its window everywhere).

The prompts (up to 150 tokens) run well past the windows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import llmcore
from ops.quant import QuantType, QuantWeight, kernels_support
from plugins.models.qwen3 import Qwen3ForCausalLM, Qwen3MoeForCausalLM
from tests.plugins.models import parity, tiny_models

SPECS: dict[str, dict[str, Any]] = {
    "qwen3": {
        "cls": "Qwen3",
        "config": {
            "head_dim": 32,
            "tie_word_embeddings": True,
            "rope_theta": 1000000.0,
            "use_sliding_window": True,
            "sliding_window": 40,
            "max_window_layers": 1,
        },
    },
    "qwen3-moe": {
        "cls": "Qwen3Moe",
        "config": {
            "num_key_value_heads": 1,
            "head_dim": 48,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 48,
            "norm_topk_prob": True,
            "mlp_only_layers": [1],
        },
    },
    "qwen3-moe-step": {
        "cls": "Qwen3Moe",
        "config": {
            "num_experts": 6,
            "num_experts_per_tok": 3,
            "moe_intermediate_size": 40,
            "norm_topk_prob": False,
            "decoder_sparse_step": 2,
            "use_sliding_window": True,
            "sliding_window": 24,
        },
    },
}
SPARSE = {"qwen3": set(), "qwen3-moe": {0, 2}, "qwen3-moe-step": {1}}
WINDOWS = {"qwen3": [None, 40, 40], "qwen3-moe": [None] * 3, "qwen3-moe-step": [24] * 3}


@pytest.fixture(scope="module", params=sorted(SPECS))
def tiny(request: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any, Any]:
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    hf_model = tiny_models.build_spec(kind, SPECS[kind], folder)
    loaded = llmcore.load_model(folder, dtype="float32")
    return kind, folder, hf_model, loaded


def test_the_model_is_what_the_case_claims(tiny: tuple[str, Path, Any, Any]) -> None:
    kind, _, hf_model, loaded = tiny
    model = loaded.model
    assert loaded.config.architecture == type(hf_model).__name__
    assert type(model) is (Qwen3ForCausalLM if kind == "qwen3" else Qwen3MoeForCausalLM)
    c = hf_model.config
    assert model.head_dim == (
        getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    )
    assert model.decoder is None  # the per-op path
    assert model.layer_windows == WINDOWS[kind]
    assert [layer.window for layer in model.layers] == WINDOWS[kind]
    hf_windows = [layer.self_attn.sliding_window for layer in hf_model.model.layers]
    assert hf_windows == WINDOWS[kind]
    sparse = {i for i, layer in enumerate(model.layers) if getattr(layer, "moe", None)}
    assert sparse == SPARSE[kind]
    for i, hf_layer in enumerate(hf_model.model.layers):
        assert (i in sparse) == hasattr(hf_layer.mlp, "experts")
        assert bool(model.layers[i].gate_up_mm.parts) == (i not in sparse)
    if kind == "qwen3":
        assert model.num_heads * model.head_dim != loaded.config.hidden_size
        assert model.lm_head is model.embed_tokens
    else:
        moe = model.layers[min(sparse)].moe
        c = hf_model.config
        assert moe.w13.shape == (c.num_experts, 2 * c.moe_intermediate_size, c.hidden_size)
        assert (moe.top_k, moe.renormalize) == (c.num_experts_per_tok, c.norm_topk_prob)


def _chunked(chunk: int) -> Callable[[Any, Any], None]:
    return functools.partial(parity.chunked_prefill_matches_whole, chunk=chunk)


CHECKS: dict[str, Callable[[Any, Any], None]] = {
    "long prompt then decode across blocks": parity.long_prompt_then_decode_across_blocks,
    **{f"prefill in chunks of {n}": _chunked(n) for n in (1, 7, 16, 23, 64)},
    "mixed batch": lambda _, loaded: parity.mixed_batch_equals_each_sequence_alone(loaded),
    "decode batch": lambda _, loaded: parity.decode_batch_equals_each_sequence_alone(loaded),
}


@pytest.mark.parametrize("check", list(CHECKS))
def test_parity_with_transformers(tiny: tuple[str, Path, Any, Any], check: str) -> None:
    CHECKS[check](tiny[2], tiny[3])


@pytest.mark.slow  # transformers' generate loop as the reference
def test_greedy_generation_matches_transformers(tiny: tuple[str, Path, Any, Any]) -> None:
    parity.greedy_generation_matches_transformers(tiny[2], tiny[3])


def _prefill_and_decode(loaded: Any, ids: list[int], steps: int = 6) -> torch.Tensor:
    runner = llmcore.ModelRunner(loaded, num_blocks=8, block_size=parity.BLOCK)
    table, prompt = parity.blocks(len(ids)), len(ids) - steps
    rows = [runner.execute([llmcore.SequenceChunk(ids[:prompt], 0, table)])[0]]
    for pos in range(prompt, len(ids)):
        rows.append(runner.execute([llmcore.SequenceChunk([ids[pos]], pos, table)])[0])
    return torch.stack(rows)


@pytest.mark.skipif(
    not (kernels_support(QuantType.BF16) and kernels_support(QuantType.I8_ROW)),
    reason="the quantized CPU kernels are not built here",
)
@pytest.mark.parametrize(("weights", "tol"), [("bfloat16", 0.03), ("int8", 0.15)])
def test_weight_formats_follow_the_float_model(
    tiny: tuple[str, Path, Any, Any], weights: str, tol: float
) -> None:
    """`--dtype bfloat16` on the CPU: bfloat16 matmul weights and experts (the MoE
    kernel multiplies them as stored); `--quantization int8`: int8 matmul weights,
    float32 experts."""
    _, folder, _, loaded = tiny
    if weights == "bfloat16":
        other = llmcore.load_model(folder, dtype="bfloat16")
    else:
        other = llmcore.load_model(folder, quantization="int8")
    assert other.dtype == torch.float32
    layer = other.model.layers[0]
    assert all(isinstance(p.weight, QuantWeight) for p in layer.qkv_mm.parts)
    for moe in (lay.moe for lay in other.model.layers if lay.moe is not None):
        assert (
            moe.w13.dtype
            == moe.w2.dtype
            == (torch.bfloat16 if weights == "bfloat16" else torch.float32)
        )
    ids = parity.tokens(40, seed=8)
    assert parity.rel(_prefill_and_decode(other, ids), _prefill_and_decode(loaded, ids)) < tol
