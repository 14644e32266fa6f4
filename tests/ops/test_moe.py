"""`ops.fused_moe` (SwiGLU experts) and `ops.moe.select_experts` (softmax routing).

Three implementations against each other: the C kernel (`ops.cpu.moe`, float32 and
bfloat16 expert weights), the torch reference (tokens grouped by expert) and a
naive loop over every (token, slot) in float64. Shapes: 1 to 64 tokens, 1 to 16
experts, 1 to 4 slots, sizes that are not multiples of the kernel's 16 lanes,
experts nobody chose, an expert repeated within a token, strided `hidden`, int32 and
int64 ids, the OpenMP branch. A token's result does not depend on the other tokens
of the call (bit for bit in the kernel). Bad ids and shapes are errors; the dispatch
picks the kernel for float32 and bfloat16 weights and the reference elsewhere (and
with the kernels off).
"""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch
import torch.nn.functional as F

import ops
import ops.cpu as cpu
from ops import dispatch
from ops.cpu import moe as cpu_moe
from ops.moe import select_experts
from tests.ops.cpu_paths import torch_path

REFERENCE = ops.fused_moe.reference
needs_kernels = pytest.mark.skipif(cpu.library() is None, reason="CPU kernels not built")


def _naive(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
) -> torch.Tensor:
    """One (token, slot) at a time, in float64."""
    T, H = hidden.shape
    out = torch.zeros(T, H, dtype=torch.float64)
    for t in range(T):
        x = hidden[t].double()
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gate, up = (w13[e].double() @ x).chunk(2)
            out[t] += float(weights[t, j]) * (w2[e].double() @ (F.silu(gate) * up))
    return out


def _case(
    T: int, H: int, E: int, inter: int, k: int, seed: int, repeat: bool = False
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g)
    w13 = torch.randn(E, 2 * inter, H, generator=g) / H**0.5
    w2 = torch.randn(E, H, inter, generator=g) / inter**0.5
    if repeat:  # ids drawn with replacement: an expert may fill two slots of a token
        ids = torch.randint(0, E, (T, k), generator=g)
    else:
        ids = torch.rand(T, E, generator=g).argsort(dim=-1)[:, :k] % E
    weights = torch.rand(T, k, generator=g) + 0.1
    return hidden, w13, w2, weights / weights.sum(-1, keepdim=True), ids


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 2e-6) -> None:
    scale = want.abs().max().item() + 1e-30
    assert (got.double() - want.double()).abs().max().item() <= tol * scale


CASES = [
    # T, H, E, inter (I), k
    (1, 16, 1, 8, 1),
    (1, 37, 16, 17, 4),  # one token, fifteen idle experts... at least twelve
    (2, 64, 4, 32, 2),
    (3, 33, 5, 9, 3),
    (7, 40, 8, 24, 2),
    (16, 96, 16, 48, 4),
    (33, 23, 3, 31, 1),
    (64, 96, 8, 48, 4),  # the OpenMP branch
    (64, 17, 16, 5, 3),
]


@pytest.mark.parametrize(("T", "H", "E", "inter", "k"), CASES)
@pytest.mark.parametrize("repeat", [False, True])
def test_reference_and_kernel_match_the_naive_loop(
    T: int, H: int, E: int, inter: int, k: int, repeat: bool
) -> None:
    hidden, w13, w2, weights, ids = _case(T, H, E, inter, k, seed=T * 100 + E, repeat=repeat)
    want = _naive(hidden, w13, w2, weights, ids)
    _close(REFERENCE(hidden, w13, w2, weights, ids), want)
    if cpu.library() is not None:
        _close(cpu_moe.fused_moe(hidden, w13, w2, weights, ids), want)
        _close(cpu_moe.fused_moe(hidden, w13, w2, weights, ids.int()), want)


@needs_kernels
@pytest.mark.parametrize(("T", "H", "E", "inter", "k"), CASES[1:7])
def test_bf16_weights_kernel_matches_the_reference(
    T: int, H: int, E: int, inter: int, k: int
) -> None:
    hidden, w13, w2, weights, ids = _case(T, H, E, inter, k, seed=7 + T)
    w13, w2 = w13.bfloat16(), w2.bfloat16()
    want = _naive(hidden, w13.float(), w2.float(), weights, ids)  # bfloat16 -> float32 is exact
    got = ops.fused_moe(hidden, w13, w2, weights, ids)
    assert ops.fused_moe.select(hidden, w13, w2, weights, ids).backend is cpu_moe.BF16_WEIGHTS
    _close(got, want)
    _close(REFERENCE(hidden, w13, w2, weights, ids), want)


def test_idle_and_repeated_experts() -> None:
    hidden, w13, w2, _, _ = _case(4, 24, 6, 12, 3, seed=3)
    ids = torch.tensor([[5, 5, 5], [0, 5, 0], [5, 0, 0], [0, 0, 5]])  # experts 1..4 idle
    weights = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7], [1.0, 0.0, 0.0], [0.3, 0.3, 0.4]])
    want = _naive(hidden, w13, w2, weights, ids)
    _close(REFERENCE(hidden, w13, w2, weights, ids), want)
    if cpu.library() is not None:
        _close(cpu_moe.fused_moe(hidden, w13, w2, weights, ids), want)
    # a token whose slots all name one expert equals that expert with the summed weight
    alone = _naive(hidden[:1], w13, w2, torch.ones(1, 1), torch.tensor([[5]]))
    _close(ops.fused_moe(hidden[:1], w13, w2, weights[:1], ids[:1]), alone)


@pytest.mark.parametrize("bf16", [False, True])
def test_a_tokens_result_does_not_depend_on_the_batch(bf16: bool) -> None:
    hidden, w13, w2, weights, ids = _case(40, 80, 8, 40, 2, seed=11)
    if bf16:
        w13, w2 = w13.bfloat16(), w2.bfloat16()
    whole = ops.fused_moe(hidden, w13, w2, weights, ids)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    permuted = ops.fused_moe(hidden[perm], w13, w2, weights[perm], ids[perm])
    exact = cpu.library() is not None  # the kernel: bit for bit; the reference's matmuls
    for t in (0, 13, 39):  # may block their sums by row count
        alone = ops.fused_moe(hidden[t : t + 1], w13, w2, weights[t : t + 1], ids[t : t + 1])
        if exact:
            assert torch.equal(alone[0], whole[t])
        else:
            _close(alone[0], whole[t])
    if exact:
        assert torch.equal(permuted, whole[perm])
        half = ops.fused_moe(hidden[:20], w13, w2, weights[:20], ids[:20])
        assert torch.equal(half, whole[:20])


@needs_kernels
def test_strided_hidden_and_the_dispatch() -> None:
    hidden, w13, w2, weights, ids = _case(9, 48, 4, 16, 2, seed=5)
    wide = torch.randn(9, 80)
    wide[:, 16:64] = hidden
    strided = wide[:, 16:64]
    assert not strided.is_contiguous()
    assert ops.fused_moe.select(strided, w13, w2, weights, ids).backend is cpu.BACKEND
    assert torch.equal(
        ops.fused_moe(strided, w13, w2, weights, ids),
        cpu_moe.fused_moe(hidden, w13, w2, weights, ids),
    )
    # float64 and bfloat16 activations run the reference
    d = [t.double() for t in (hidden, w13, w2)]
    assert ops.fused_moe.select(d[0], d[1], d[2], weights, ids).fn is REFERENCE
    got = ops.fused_moe(d[0], d[1], d[2], weights, ids)
    assert got.dtype == torch.float64
    _close(got, _naive(hidden, w13, w2, weights, ids))
    b = hidden.bfloat16()
    assert ops.fused_moe.select(b, w13.bfloat16(), w2.bfloat16(), weights, ids).fn is REFERENCE


def test_empty_batches() -> None:
    _, w13, w2, _, _ = _case(1, 16, 3, 8, 1, seed=0)
    empty = ops.fused_moe(
        torch.empty(0, 16), w13, w2, torch.empty(0, 2), torch.empty(0, 2, dtype=torch.long)
    )
    assert empty.shape == (0, 16)
    assert REFERENCE(
        torch.empty(0, 16), w13, w2, torch.empty(0, 2), torch.empty(0, 2, dtype=torch.long)
    ).shape == (0, 16)


@pytest.mark.parametrize("bad", [-1, 3, 1000])
def test_an_id_outside_the_experts_is_an_error(bad: int) -> None:
    hidden, w13, w2, weights, ids = _case(5, 16, 3, 8, 2, seed=2)
    ids[3, 1] = bad
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        REFERENCE(hidden, w13, w2, weights, ids)
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        ops.fused_moe(hidden, w13, w2, weights, ids)


def test_shapes_that_do_not_fit_are_errors() -> None:
    hidden, w13, w2, weights, ids = _case(5, 16, 3, 8, 2, seed=2)
    cases = [
        (hidden[0], w13, w2, weights, ids, "hidden \\[T, H\\]"),
        (hidden, w13[:, :15], w2, weights, ids, "do not fit"),  # odd 2I
        (hidden, w13, w2[:, :, :7], weights, ids, "do not fit"),
        (hidden[:, :15], w13, w2, weights, ids, "do not fit"),
        (hidden, w13, w2, weights[:4], ids, "\\[T, k\\]"),
        (hidden, w13, w2, weights.double(), ids, "float32"),
        (hidden, w13, w2, weights, ids.float(), "integers"),
    ]
    for h, a, b, w, i, message in cases:
        with pytest.raises(ValueError, match=message):
            ops.fused_moe(h, a, b, w, i)


@pytest.mark.parametrize(("renormalize", "k"), list(itertools.product([False, True], [1, 2, 4])))
def test_select_experts_is_softmax_then_top_k(renormalize: bool, k: int) -> None:
    logits = torch.randn(6, 8, generator=torch.Generator().manual_seed(k))
    weights, ids = select_experts(logits, k, renormalize)
    assert weights.dtype == torch.float32 and ids.dtype == torch.int64
    probs = torch.softmax(logits.double(), dim=-1)
    for t in range(6):
        order = probs[t].argsort(descending=True)[:k]
        assert ids[t].tolist() == order.tolist()
        want = probs[t, order]
        if renormalize:
            want = want / want.sum()
        torch.testing.assert_close(weights[t].double(), want, rtol=1e-6, atol=1e-7)


def test_one_signature_and_the_kernels_off() -> None:
    op = ops.fused_moe
    assert dispatch.REGISTRY["fused_moe"] is op
    signature = inspect.signature(op.reference)
    assert inspect.signature(op) == signature and op.__doc__ == op.reference.__doc__
    assert [impl.backend for impl in op.kernels] == [cpu.BACKEND, cpu_moe.BF16_WEIGHTS]
    assert all(inspect.signature(impl.fn) == signature for impl in op.kernels)
    args = _case(3, 16, 2, 8, 1, seed=1)
    with torch_path():
        assert op.select(*args).fn is REFERENCE
        bf16 = (args[0], args[1].bfloat16(), args[2].bfloat16(), *args[3:])
        assert op.select(*bf16).fn is REFERENCE
