"""Mixture-of-experts feed-forward: routing (`select_experts`) and the experts
(`fused_moe`), with their torch references and dispatch.

`fused_moe(hidden, w13, w2, topk_weights, topk_ids)` runs each token through the
experts its router chose and sums their outputs, weighted:

    out[t] = sum_j topk_weights[t, j] * expert_{topk_ids[t, j]}(hidden[t])
    expert_e(x) = w2[e] @ (silu(gate) * up),  gate, up = split(w13[e] @ x)

- `hidden` `[T, H]`: the tokens (any float dtype; the result has it);
- `w13` `[E, 2I, H]`: per expert, the gate rows then the up rows (transformers'
  `gate_up_proj`, llama.cpp's `ffn_gate_exps` then `ffn_up_exps` along the rows);
- `w2` `[E, H, I]`: per expert, the down projection;
- `topk_weights` `[T, k]` float32 and `topk_ids` `[T, k]` (any integer dtype, each in
  `0..E-1`): the router's choice, k experts per token. An id may repeat within a
  token (each slot counts), and experts nobody chose cost nothing.

The slots are summed in slot order in float32, then cast to `hidden`'s dtype.
Routing is not part of the op, so families that route differently share it:
`select_experts` is the softmax -> top-k (-> renormalised) routing of Qwen2/3-MoE,
Mixtral and OLMoE; a family with another scoring (sigmoid, grouped top-k, bias
terms) computes its own `topk_weights`/`topk_ids`, and one with shared experts adds
their output outside. Experts are SwiGLU (silu-gated) only.

Implementations: the torch reference groups the (token, slot) pairs by expert
(a stable argsort) and runs two matmuls per expert that has tokens; the C kernel
(`ops.cpu.moe`) takes float32 activations with float32 or bfloat16 expert weights
(the pairs grouped by expert, OpenMP threads over (expert, column block) items, a
token's result independent of the other tokens of the call). Other placements
(CUDA, float64, ...) run the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ops import cpu
from ops.cpu import moe as cpu_moe
from ops.dispatch import Impl, Op


def select_experts(router_logits: Tensor, top_k: int, renormalize: bool) -> tuple[Tensor, Tensor]:
    """Softmax routing: `router_logits` `[T, E]` -> `(topk_weights [T, top_k] float32,
    topk_ids [T, top_k] int64)`, the `top_k` largest probabilities of the float32
    softmax and their experts (largest first), divided by their sum when
    `renormalize` (Qwen3-MoE's `norm_topk_prob`, always in Mixtral)."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def _fused_moe(
    hidden: Tensor, w13: Tensor, w2: Tensor, topk_weights: Tensor, topk_ids: Tensor
) -> Tensor:
    """SwiGLU experts: `hidden` `[T, H]`, `w13` `[E, 2I, H]` (gate rows, then up rows),
    `w2` `[E, H, I]`, `topk_weights` `[T, k]` float32, `topk_ids` `[T, k]`; returns
    `[T, H]`: each token's k expert outputs weighted and summed (see the module)."""
    (T, H), num_experts, k = hidden.shape, w13.shape[0], topk_ids.shape[1]
    flat = topk_ids.reshape(-1).long()
    if flat.numel() and not bool(((flat >= 0) & (flat < num_experts)).all()):
        raise ValueError(f"fused_moe: topk_ids hold an expert id outside 0..{num_experts - 1}")
    order = torch.argsort(flat, stable=True)  # the (token, slot) pairs grouped by expert
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    grouped = hidden[order // k]
    rows = hidden.new_empty(T * k, H)
    start = 0
    for e, n in enumerate(counts):
        if not n:
            continue
        x = grouped[start : start + n]
        gate, up = (x @ w13[e].to(x.dtype).T).chunk(2, dim=-1)
        rows[order[start : start + n]] = (F.silu(gate) * up) @ w2[e].to(x.dtype).T
        start += n
    weighted = rows.view(T, k, H).float() * topk_weights.unsqueeze(-1)
    return weighted.sum(dim=1).to(hidden.dtype)


def _validate(
    hidden: Tensor, w13: Tensor, w2: Tensor, topk_weights: Tensor, topk_ids: Tensor
) -> None:
    if hidden.dim() != 2 or w13.dim() != 3 or w2.dim() != 3:
        raise ValueError(
            f"fused_moe: hidden [T, H], w13 [E, 2I, H] and w2 [E, H, I] expected, got "
            f"{tuple(hidden.shape)}, {tuple(w13.shape)}, {tuple(w2.shape)}"
        )
    (T, H), (E, two_i, w13_h) = hidden.shape, w13.shape
    if two_i % 2 or w13_h != H or tuple(w2.shape) != (E, H, two_i // 2):
        raise ValueError(
            f"fused_moe: w13 {tuple(w13.shape)} and w2 {tuple(w2.shape)} do not fit "
            f"hidden size {H} (w13 [E, 2I, H] with gate rows then up rows, w2 [E, H, I])"
        )
    if topk_ids.dim() != 2 or topk_ids.shape[0] != T or topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"fused_moe: topk_weights {tuple(topk_weights.shape)} and topk_ids "
            f"{tuple(topk_ids.shape)} must both be [T, k] with T = {T}"
        )
    if topk_weights.dtype != torch.float32 or topk_ids.is_floating_point():
        raise ValueError(
            f"fused_moe: topk_weights float32 and topk_ids integers expected, got "
            f"{topk_weights.dtype} and {topk_ids.dtype}"
        )
    devices = {t.device for t in (hidden, w13, w2, topk_weights, topk_ids)}
    if len(devices) != 1:
        raise ValueError(f"fused_moe: every tensor on one device, got {sorted(map(str, devices))}")


fused_moe = Op(
    "fused_moe",
    _fused_moe,
    on=lambda hidden, w13, w2, topk_weights, topk_ids: (hidden, w13, w2, topk_weights),
    validate=_validate,
    kernels=[
        Impl(cpu.BACKEND, cpu_moe.fused_moe),
        Impl(cpu_moe.BF16_WEIGHTS, cpu_moe.fused_moe),
    ],
)
