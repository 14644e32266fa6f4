"""Sampler: every sampling parameter acts, logprobs are raw, seeds are batch-invariant."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcore.engine.logprobs import logprobs_of
from llmcore.engine.sampler import Sampler, SamplingRow
from llmcore.sampling_params import SamplingParams

V = 8
# Chi-square critical value at p = 0.001 for V - 1 = 7 degrees of freedom.
CHI2_CRITICAL_7DF = 24.32


def row(
    params: SamplingParams | None = None,
    *,
    prompt: Sequence[int] = (),
    output: Sequence[int] = (),
    generator: torch.Generator | None = None,
    stop: Sequence[int] = (),
    bad_words: list[list[int]] | None = None,
) -> SamplingRow:
    return SamplingRow(
        params=params or SamplingParams(),
        prompt_token_ids=list(prompt),
        output_token_ids=list(output),
        generator=generator,
        stop_token_ids=frozenset(stop),
        bad_words_token_ids=bad_words or [],
    )


def greedy(**kwargs: object) -> SamplingParams:
    return SamplingParams(temperature=0.0, **kwargs)  # type: ignore[arg-type]


def pick(logits: Sequence[float], r: SamplingRow, seed: int = 0) -> int:
    t = torch.tensor([logits], dtype=torch.float32)
    return Sampler(t.shape[1], seed=seed)(t, [r]).token_ids[0]


def draws(logits: Sequence[float], params: SamplingParams, n: int = 4000, **kw: object) -> Counter:
    """Sample `n` rows of the same logits and parameters in one call (shared generator)."""
    t = torch.tensor([logits], dtype=torch.float32).expand(n, -1).contiguous()
    rows = [row(params, **kw) for _ in range(n)]  # type: ignore[arg-type]
    return Counter(Sampler(t.shape[1], seed=1234)(t, rows).token_ids)


def log_of(probs: Sequence[float]) -> list[float]:
    return [math.log(p) if p > 0 else -math.inf for p in probs]


def chi_square(counts: Counter, probs: torch.Tensor) -> float:
    n = sum(counts.values())
    return sum((counts.get(i, 0) - n * p) ** 2 / (n * p) for i, p in enumerate(probs.tolist()))


PEAKED = log_of([0.5, 0.3, 0.15, 0.05])  # a four-token distribution with known masses


# ---- greedy and temperature ---------------------------------------------------------------


def test_greedy_takes_the_argmax_of_every_row() -> None:
    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(0))
    out = Sampler(100)(logits, [row(greedy()) for _ in range(6)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.logprobs == [None] * 6


def test_tiny_temperature_is_greedy() -> None:
    logits = [0.0, 1.0, 0.99, 0.5]
    assert Counter({1: 500}) == draws(logits, SamplingParams(temperature=1e-7), n=500)


def test_mixed_batch_keeps_greedy_rows_greedy() -> None:
    logits = torch.tensor([[0.0, 0.1, 0.2, 0.3]] * 200)
    rows = [row(greedy()) if i % 2 else row() for i in range(200)]
    tokens = Sampler(4, seed=0)(logits, rows).token_ids
    assert all(t == 3 for t in tokens[1::2])
    assert len(set(tokens[0::2])) == 4  # the random rows really are random


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_samples_follow_softmax_of_logits_over_temperature(temperature: float) -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2])
    counts = draws(logits.tolist(), SamplingParams(temperature=temperature), n=20000)
    expected = (logits / temperature).softmax(-1)
    assert chi_square(counts, expected) < CHI2_CRITICAL_7DF


def test_low_temperature_concentrates_and_high_temperature_flattens() -> None:
    logits = [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    cold = draws(logits, SamplingParams(temperature=0.05), n=2000)
    hot = draws(logits, SamplingParams(temperature=50.0), n=8000)
    assert cold[0] == 2000
    assert all(abs(hot[i] / 8000 - 1 / 8) < 0.02 for i in range(8))


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_also_shapes_top_k_survivors(temperature: float) -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2])
    counts = draws(logits.tolist(), SamplingParams(temperature=temperature, top_k=5), n=20000)
    kept = logits.masked_fill(logits < logits.topk(5).values[-1], -math.inf)
    expected = (kept / temperature).softmax(-1)
    assert set(counts) == set(expected.nonzero().view(-1).tolist())
    assert chi_square(counts, expected.clamp_min(1e-12)) < CHI2_CRITICAL_7DF


def test_top_p_applies_after_temperature() -> None:
    assert set(draws(PEAKED, SamplingParams(top_p=0.7))) == {0, 1}
    assert set(draws(PEAKED, SamplingParams(top_p=0.7, temperature=3.0))) == {0, 1, 2}


def test_top_p_measures_mass_after_min_p() -> None:
    # Without min_p, 0.5 + 0.3 < 0.83 keeps token 2; once min_p drops token 3 the kept
    # mass renormalises to (0.5 + 0.3) / 0.95 >= 0.83 and token 2 goes too.
    assert set(draws(PEAKED, SamplingParams(top_p=0.83))) == {0, 1, 2}
    assert set(draws(PEAKED, SamplingParams(top_p=0.83, min_p=0.2))) == {0, 1}


# ---- filters ------------------------------------------------------------------------------


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    counts = draws(PEAKED, SamplingParams(top_p=0.7))
    assert set(counts) == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3
    assert abs(counts[0] / 4000 - 0.5 / 0.8) < 0.03  # renormalised over the kept set


def test_top_p_always_keeps_the_best_token() -> None:
    assert set(draws(PEAKED, SamplingParams(top_p=0.01), n=500)) == {0}


def test_top_p_over_a_flat_large_vocabulary_sorts_beyond_the_first_guess() -> None:
    vocab = 5000  # the nucleus of 0.5 holds ~2500 tokens: more than the first candidates
    logits = torch.linspace(1.0, 0.0, vocab)
    counts = draws(logits.tolist(), SamplingParams(top_p=0.5), n=2000)
    probs = logits.double().softmax(-1)
    nucleus = int((probs.cumsum(-1) - probs < 0.5).sum())
    assert max(counts) < nucleus
    assert max(counts) > nucleus * 0.9


def test_top_k_keeps_the_k_best() -> None:
    logits = torch.randn(V, generator=torch.Generator().manual_seed(1)).tolist()
    counts = draws(logits, SamplingParams(top_k=3))
    best = sorted(range(V), key=lambda i: -logits[i])[:3]
    assert set(counts) == set(best)


def test_top_k_keeps_every_token_tied_with_the_kth() -> None:
    assert set(draws([3.0, 2.0, 2.0, 2.0, 0.0, 0.0], SamplingParams(top_k=2))) == {0, 1, 2, 3}
    counts = draws([0.0] * 600, SamplingParams(top_k=1), n=2000)  # ties beyond any window
    assert len(counts) > 500


def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability() -> None:
    assert set(draws(PEAKED, SamplingParams(min_p=0.2))) == {0, 1, 2}  # 0.05 < 0.2 * 0.5
    assert set(draws(PEAKED, SamplingParams(min_p=0.7))) == {0}  # 0.3 < 0.7 * 0.5


def test_min_p_applies_after_temperature() -> None:
    # At temperature 3 the probabilities flatten: 0.05 is no longer below 0.2 x the top.
    assert 3 in draws(PEAKED, SamplingParams(min_p=0.2, temperature=3.0))


# ---- penalties (each flips the greedy argmax) -----------------------------------------------

TWO_CLOSE = [1.0, 0.8, 0.0, 0.0]


def test_presence_penalty_subtracts_once_per_present_token() -> None:
    assert pick(TWO_CLOSE, row(greedy(presence_penalty=0.3), output=[0])) == 1
    assert pick(TWO_CLOSE, row(greedy(presence_penalty=0.1), output=[0, 0, 0])) == 0
    assert pick(TWO_CLOSE, row(greedy(presence_penalty=2.0), prompt=[0])) == 0  # output only


def test_frequency_penalty_subtracts_per_occurrence() -> None:
    assert pick(TWO_CLOSE, row(greedy(frequency_penalty=0.1), output=[0])) == 0
    assert pick(TWO_CLOSE, row(greedy(frequency_penalty=0.1), output=[0, 2, 0, 0])) == 1
    assert pick(TWO_CLOSE, row(greedy(frequency_penalty=2.0), prompt=[0, 0])) == 0  # output only
    assert pick([0.0, -0.1], row(greedy(frequency_penalty=-0.5), output=[1])) == 1  # negative


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    p = greedy(repetition_penalty=1.5)
    assert pick([2.0, 1.5, 0.0], row(p, prompt=[0])) == 1  # 2 / 1.5 < 1.5, seen in the prompt
    assert pick([2.0, 1.5, 0.0], row(p, output=[0])) == 1  # ... or in the output
    assert pick([2.0, 1.5, 0.0], row(p, output=[2])) == 0  # unseen tokens are untouched
    assert pick([-1.0, -1.2, -5.0], row(p, output=[0])) == 1  # -1 * 1.5 < -1.2
    assert pick([1.0, 1.5], row(greedy(repetition_penalty=0.5), output=[0])) == 0  # < 1 favours


def test_penalties_touch_only_their_rows() -> None:
    logits = torch.tensor([TWO_CLOSE] * 3)
    rows = [row(greedy(), output=[0]), row(greedy(presence_penalty=1.0), output=[0]), row(greedy())]
    assert Sampler(4)(logits, rows).token_ids == [0, 1, 0]


# ---- logit bias, allowed ids, bad words, min_tokens ---------------------------------------------


def test_logit_bias_is_added() -> None:
    assert pick(TWO_CLOSE, row(greedy(logit_bias={3: 5.0}))) == 3
    assert pick(TWO_CLOSE, row(greedy(logit_bias={0: -100.0}))) == 1
    assert set(draws(PEAKED, SamplingParams(logit_bias={0: -100.0, 1: -100.0}))) == {2, 3}


def test_allowed_token_ids_mask_everything_else() -> None:
    assert pick(TWO_CLOSE, row(greedy(allowed_token_ids=[2, 3]))) in (2, 3)
    assert pick([0.0, 5.0, 1.0, 0.5], row(greedy(allowed_token_ids=[2, 3]))) == 2
    assert set(draws(PEAKED, SamplingParams(allowed_token_ids=[2, 3]))) == {2, 3}


def test_allowed_token_ids_in_a_mixed_batch() -> None:
    logits = torch.tensor([TWO_CLOSE] * 2)
    rows = [row(greedy()), row(greedy(allowed_token_ids=[3]))]
    assert Sampler(4)(logits, rows).token_ids == [0, 3]


def test_single_token_bad_word_is_always_banned() -> None:
    assert pick(TWO_CLOSE, row(greedy(), bad_words=[[0]])) == 1
    assert set(draws(PEAKED, SamplingParams(), bad_words=[[0], [1]])) == {2, 3}


def test_multi_token_bad_word_bans_its_last_token_after_its_prefix() -> None:
    word = [[2, 3, 0]]
    assert pick(TWO_CLOSE, row(greedy(), output=[1, 2, 3], bad_words=word)) == 1
    assert pick(TWO_CLOSE, row(greedy(), output=[2, 3, 1], bad_words=word)) == 0  # no prefix
    assert pick(TWO_CLOSE, row(greedy(), output=[3], bad_words=word)) == 0  # prefix too short
    assert pick(TWO_CLOSE, row(greedy(), output=[], bad_words=word)) == 0


def test_min_tokens_bans_stop_tokens_until_reached() -> None:
    eos = 0
    p = greedy(min_tokens=2)
    assert pick(TWO_CLOSE, row(p, output=[], stop=[eos])) == 1
    assert pick(TWO_CLOSE, row(p, output=[3], stop=[eos])) == 1
    assert pick(TWO_CLOSE, row(p, output=[3, 3], stop=[eos])) == 0
    assert pick(TWO_CLOSE, row(greedy(), output=[], stop=[eos])) == 0  # min_tokens=0: allowed


def test_min_tokens_bans_every_stop_token_id() -> None:
    p = greedy(min_tokens=1, stop_token_ids=[1])
    assert pick(TWO_CLOSE, row(p, stop=[0, 1])) in (2, 3)  # EOS and the user's stop id


# ---- seeds and batch invariance -------------------------------------------------------------


def seeded_tokens(seed: int, steps: int = 10, vocab: int = 50) -> list[int]:
    logits = torch.zeros(1, vocab)
    generator = torch.Generator().manual_seed(seed)
    sampler = Sampler(vocab)  # an unseeded shared generator: must not matter
    return [sampler(logits, [row(generator=generator)]).token_ids[0] for _ in range(steps)]


def test_same_seed_same_tokens_different_seed_different_tokens() -> None:
    assert seeded_tokens(7) == seeded_tokens(7)
    assert seeded_tokens(7) != seeded_tokens(8)


def test_shared_generator_seed_makes_unseeded_rows_reproducible() -> None:
    logits = torch.zeros(16, 50)
    rows = [row() for _ in range(16)]
    assert (
        Sampler(50, seed=3)(logits, rows).token_ids == Sampler(50, seed=3)(logits, rows).token_ids
    )
    assert (
        Sampler(50, seed=3)(logits, rows).token_ids != Sampler(50, seed=4)(logits, rows).token_ids
    )


def other_rows(count: int) -> list[tuple[SamplingParams, torch.Generator | None]]:
    kinds: list[tuple[SamplingParams, torch.Generator | None]] = []
    for i in range(count):
        generator = torch.Generator().manual_seed(100 + i) if i % 4 == 0 else None
        params = [
            SamplingParams(),
            greedy(),
            SamplingParams(top_p=0.8, temperature=0.7),
            SamplingParams(top_k=5, presence_penalty=0.5),
        ][i % 4]
        kinds.append((params, generator))
    return kinds


def test_seeded_row_is_batch_invariant() -> None:
    vocab, steps = 300, 20
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=100, frequency_penalty=0.2)
    logits_of = torch.Generator().manual_seed(0)
    step_logits = [torch.randn(17, vocab, generator=logits_of) * 2 for _ in range(steps)]

    def run(position: int | None) -> list[int]:
        sampler, generator = Sampler(vocab), torch.Generator().manual_seed(42)
        others, out = other_rows(16), list[int]()
        for logits in step_logits:
            mine = row(params, prompt=[1, 2], output=out, generator=generator)
            if position is None:
                batch, t = [mine], logits[:1]
            else:
                batch = [row(p, generator=g) for p, g in others]
                batch.insert(position, mine)
                t = torch.cat([logits[1:][:position], logits[:1], logits[1:][position:]])
            out = [*out, sampler(t, batch).token_ids[position or 0]]
        return out

    alone = run(None)
    assert len(set(alone)) > 5
    for position in (0, 7, 16):
        assert run(position) == alone


def reference_token(logits: torch.Tensor, p: SamplingParams, uniforms: torch.Tensor) -> int:
    """The filters applied in float64 by sorting the whole vocabulary, then the race."""
    x = logits.double()
    if p.min_p > 0:  # prob < min_p * max prob at the row's temperature
        x = x.masked_fill(x < x.max() + p.temperature * math.log(p.min_p), -math.inf)
    x = x / p.temperature
    if 0 < p.top_k < x.numel():
        x = x.masked_fill(x < x.sort(descending=True).values[p.top_k - 1], -math.inf)
    if p.top_p < 1:
        probs = x.softmax(-1)
        ordered = probs.sort(descending=True).values
        before = ordered.cumsum(0) - ordered
        x = x.masked_fill(probs < ordered[int((before < p.top_p).sum()) - 1], -math.inf)
    return int((x.softmax(-1) / -uniforms.double().log()).argmax())


def test_sampling_equals_a_full_vocabulary_reference_with_the_same_noise() -> None:
    """The candidate-window race picks exactly what sorting the whole vocabulary would."""
    rng = random.Random(0)
    for case in range(150):
        vocab = rng.choice([50, 300, 3000, 6000])
        logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(case))
        logits[1] *= rng.choice([0.5, 2.0, 5.0])
        p = SamplingParams(
            temperature=rng.choice([0.3, 1.0, 1.7]),
            top_k=rng.choice([0, 0, 1, 5, 50, 400]),
            top_p=rng.choice([1.0, 0.5, 0.9, 0.99]),
            min_p=rng.choice([0.0, 0.0, 0.05]),
        )
        neighbours = [SamplingParams(top_k=rng.choice([0, 3, 700]), top_p=0.8) for _ in range(3)]
        batch = [row(n) for n in neighbours]
        batch.insert(1, row(p, generator=torch.Generator().manual_seed(case)))
        got = Sampler(vocab, seed=0)(logits, batch).token_ids[1]
        uniforms = torch.empty(vocab).uniform_(generator=torch.Generator().manual_seed(case))
        assert got == reference_token(logits[1], p, uniforms), (case, p)


# ---- distribution sanity over random logits -------------------------------------------------

logit_lists = st.lists(
    st.floats(min_value=-8, max_value=8, allow_nan=False, width=32), min_size=2, max_size=40
)


@settings(max_examples=40, deadline=None)
@given(logits=logit_lists, data=st.data())
def test_top_k_never_samples_outside_the_k_best(logits: list[float], data: st.DataObject) -> None:
    k = data.draw(st.integers(min_value=1, max_value=len(logits)))
    counts = draws(logits, SamplingParams(top_k=k), n=300)
    kth = sorted(logits, reverse=True)[k - 1]
    assert all(logits[t] >= kth for t in counts)


@settings(max_examples=40, deadline=None)
@given(logits=logit_lists, data=st.data())
def test_top_p_never_samples_outside_the_nucleus(logits: list[float], data: st.DataObject) -> None:
    top_p = data.draw(st.floats(min_value=0.05, max_value=0.99))
    top_k = data.draw(st.sampled_from([0, 1, 3, 10]))
    counts = draws(logits, SamplingParams(top_p=top_p, top_k=top_k), n=300)
    t = torch.tensor(logits, dtype=torch.float64)
    if 0 < top_k < len(logits):
        t = t.masked_fill(t < t.topk(top_k).values[-1], -math.inf)
    probs = t.softmax(-1)
    for token in counts:
        assert probs[token] > 0
        mass_above = float(probs[probs > probs[token]].sum())  # ties may fall either way
        assert mass_above < top_p + 1e-5


# ---- logprobs --------------------------------------------------------------------------------


def test_logprobs_are_of_the_raw_distribution_with_ranks_and_sorted_top_k() -> None:
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(5))
    before = logits.clone()
    rows = [
        row(SamplingParams(logprobs=5, temperature=0.3, top_k=4, presence_penalty=1.0), output=[1]),
        row(greedy(logprobs=0, logit_bias={7: 100.0})),
        row(SamplingParams(top_p=0.5)),
    ]
    out = Sampler(20, seed=0)(logits, rows)
    assert torch.equal(logits, before)  # the caller's logits are never modified
    raw = before.log_softmax(-1)
    first, second, third = out.logprobs
    assert third is None
    assert first is not None and second is not None
    assert second.token_id == out.token_ids[1] == 7  # the bias acted ...
    assert second.logprob == pytest.approx(float(raw[1, 7]))  # ... but not on the logprob
    assert second.rank == int((raw[1] >= raw[1, 7]).sum()) and second.top == []
    assert first.token_id == out.token_ids[0]
    assert first.logprob == pytest.approx(float(raw[0, first.token_id]))
    order = raw[0].argsort(descending=True).tolist()
    assert first.rank == order.index(first.token_id) + 1
    assert [t for t, _ in first.top] == order[:5]
    assert [lp for _, lp in first.top] == pytest.approx(raw[0, order[:5]].tolist())


def test_logprobs_of_scores_given_tokens_and_clamps_k() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 3.0, 0.0]])
    first, second = logprobs_of(logits, torch.tensor([0, 1]), k=10)
    raw = logits.log_softmax(-1)
    assert (first.token_id, first.rank) == (0, 3)
    assert first.logprob == pytest.approx(float(raw[0, 0]))
    assert [t for t, _ in first.top] == [2, 1, 0]
    assert second.rank == 2  # a tie counts the tokens with logprob >= this one's (vLLM)


# ---- shapes ------------------------------------------------------------------------------------


def test_padded_vocabulary_columns_are_never_sampled() -> None:
    logits = torch.cat([torch.zeros(500, 4), torch.full((500, 2), 50.0)], dim=1)
    out = Sampler(4, seed=0)(logits, [row() if i % 2 else row(greedy()) for i in range(500)])
    assert set(out.token_ids) <= {0, 1, 2, 3}


def test_non_float32_logits_are_accepted() -> None:
    logits = torch.tensor([TWO_CLOSE], dtype=torch.bfloat16)
    assert Sampler(4)(logits, [row(greedy(presence_penalty=1.0), output=[0])]).token_ids == [1]


# ---- launched, not read ------------------------------------------------------------------


def test_sampling_with_logprobs_reads_nothing_back_until_the_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`sample()` launches greedy and plain random rows, logprobs included, without
    reading a tensor on the host (on a GPU, a read waits for the step: async
    scheduling would lose its overlap); `result()` then gives what calling the
    sampler gives."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 40, generator=gen)
    rows = [
        row(greedy(logprobs=3)),
        row(SamplingParams(temperature=0.8), generator=torch.Generator().manual_seed(1)),
        row(greedy()),
        row(
            SamplingParams(temperature=1.2, logprobs=0), generator=torch.Generator().manual_seed(2)
        ),
        row(greedy(logprobs=1)),
    ]
    want = Sampler(40, seed=3)(logits, rows)
    for r in rows:  # the seeded rows again from their start
        if r.generator is not None:
            r.generator.manual_seed(1 if r.params.logprobs is None else 2)

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tensor was read on the host inside sample()")

    with monkeypatch.context() as patch:
        for name in ("tolist", "item", "__bool__", "__int__", "__float__"):
            patch.setattr(torch.Tensor, name, no_read)
        pending = Sampler(40, seed=3).sample(logits, rows)
    got = pending.result()
    assert got.token_ids == want.token_ids
    assert got.logprobs == want.logprobs
    assert [lp is not None for lp in got.logprobs] == [True, False, False, True, True]
    assert [len(lp.top) for lp in got.logprobs if lp is not None] == [3, 0, 1]


def _mixed_rows(vocab: int) -> list[SamplingRow]:
    """Every kind of row a step may hold: greedy, plain random, temperature, top_k,
    top_p (a nucleus wider than the first window too), both, min_p, seeded, with
    logit bias, penalties, bad words and min_tokens, some with logprobs."""
    seeded = [torch.Generator().manual_seed(s) for s in range(4)]
    penalized = SamplingParams(
        temperature=0.8, top_k=10, presence_penalty=0.5, frequency_penalty=0.3,
        repetition_penalty=1.2,
    )  # fmt: skip
    return [
        row(greedy(logprobs=2)),
        row(SamplingParams(temperature=0.7, top_p=0.9)),
        row(SamplingParams(top_k=5, logprobs=1)),
        *(row(SamplingParams(temperature=1.3, top_p=0.999)) for _ in range(4)),  # > 256 tokens
        row(SamplingParams(top_k=40, top_p=0.8, temperature=0.5), generator=seeded[0]),
        row(SamplingParams(min_p=0.05, temperature=0.9), generator=seeded[1]),
        row(SamplingParams(top_p=0.5, logit_bias={3: 5.0, 7: -100.0})),
        row(penalized, prompt=[1, 2, 3], output=[4, 4, 5]),
        row(SamplingParams(top_p=0.95, min_tokens=4), output=[9], stop=[0, 1]),
        row(SamplingParams(top_k=vocab - 1), bad_words=[[4, 6]], output=[4], generator=seeded[2]),
        row(SamplingParams()),
        row(greedy(top_p=0.3)),
        row(SamplingParams(top_p=0.9, temperature=0.6), generator=seeded[3]),
    ]


def test_narrow_rows_give_the_same_tokens_over_the_whole_vocabulary() -> None:
    """Racing top_k/top_p rows over the whole sorted vocabulary (as on a GPU: no
    window to widen, so nothing read back) picks what the widening windows pick,
    for the same noise (the rows with a wide nucleus have ~20% of their mass
    beyond the first 256-token window: a race cut there differs within a few
    draws)."""
    vocab = 3000
    logits = torch.randn(16, vocab, generator=torch.Generator().manual_seed(5)) * 3
    every = list(range(16))
    top_k_only = [i for i, r in enumerate(_mixed_rows(vocab)) if 0 < r.params.top_k < vocab
                  and r.params.top_p == 1.0 and r.params.temperature > 0]  # fmt: skip
    with_top_p = [i for i, r in enumerate(_mixed_rows(vocab)) if r.params.top_p < 1.0
                  and r.params.temperature > 0]  # fmt: skip
    assert len(top_k_only) >= 2 and len(with_top_p) >= 6
    for subset in (every, top_k_only, with_top_p):
        for seed in range(10):
            results = []
            for windows in (True, False):
                sampler = Sampler(vocab, seed=seed)
                sampler.narrow_windows = windows
                rows = [_mixed_rows(vocab)[i] for i in subset]
                results.append(sampler(logits[subset], rows).token_ids)
            assert results[0] == results[1], (subset, seed)


def test_sampling_without_windows_reads_nothing_back_until_the_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `narrow_windows` off, every kind of row (top_k, top_p, min_p, penalties,
    bias, bad words, min_tokens, seeds, logprobs) launches without a host read
    inside `sample()`, and gives the tokens of the windowed path."""
    vocab = 3000
    logits = torch.randn(16, vocab, generator=torch.Generator().manual_seed(6)) * 3
    want = Sampler(vocab, seed=9)(logits, _mixed_rows(vocab))

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tensor was read on the host inside sample()")

    sampler = Sampler(vocab, seed=9)
    sampler.narrow_windows = False
    rows = _mixed_rows(vocab)
    with monkeypatch.context() as patch:
        for name in ("tolist", "item", "__bool__", "__int__", "__float__"):
            patch.setattr(torch.Tensor, name, no_read)
        pending = sampler.sample(logits, rows)
    got = pending.result()
    assert got.token_ids == want.token_ids
    assert got.logprobs == want.logprobs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_sampling_launches_without_waiting_for_the_gpu() -> None:
    """On a GPU, `sample()` for every kind of row (penalties, bias, bad words and
    min_tokens included) makes no synchronizing CUDA call: the parameters and row
    indices reach the device by non-blocking copies, and top_k/top_p rows race
    over the whole vocabulary (torch's sync debug mode set to fail on one)."""
    vocab = 3000
    logits = (torch.randn(16, vocab, generator=torch.Generator().manual_seed(6)) * 3).cuda()
    sampler = Sampler(vocab, seed=9)
    rows = _mixed_rows(vocab)
    for r in rows:  # per-request generators live on the logits' device
        if r.generator is not None:
            r.generator = torch.Generator(device="cuda").manual_seed(1)
    sampler.sample(logits, rows).result()  # warm: the shared generator is made on first use
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = sampler.sample(logits, rows)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    out = pending.result()
    assert len(out.token_ids) == len(rows)
    assert all(0 <= t < vocab for t in out.token_ids)
