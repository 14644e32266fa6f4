"""The engine on SmolLM2-135M-Instruct (float32): continuous batching is invisible
in the outputs (batch invariance, preemption), prefix caching computes shared
blocks once, aborts leak nothing, seeds are batch-invariant, and the request-level
sampling parameters (stops, lengths, logprobs) act."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
import torch

import llmcore
from llmcore.engine.async_engine import AsyncEngine
from llmcore.engine.config import EngineConfig
from llmcore.engine.core import EngineCore
from llmcore.errors import ContextLengthExceededError, InvalidRequestError
from llmcore.outputs import RequestOutput
from llmcore.sampling_params import SamplingParams
from llmcore.structured_outputs.params import StructuredOutputsParams
from llmcore.tokenization.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # SmolLM2 (the smollm2 fixture)

BLOCK = 16
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def tokenizer(smollm2: llmcore.LoadedModel) -> Tokenizer:
    return llmcore.load_tokenizer(smollm2.path)


def make_core(smollm2: llmcore.LoadedModel, tokenizer: Tokenizer, **options: Any) -> EngineCore:
    options.setdefault("kv_cache_memory", 96 << 20)
    return EngineCore(smollm2, tokenizer, EngineConfig(block_size=BLOCK, **options))


def run(core: EngineCore, prompts: list[list[int]], params: list[SamplingParams]) -> list[Any]:
    """Submit everything at once, step to completion; cumulative outputs by index."""
    results: dict[str, list[Any]] = {}
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        core.add(core.make_requests(prompt, p, f"r{i}"))
        results[f"r{i}"] = [{"text": "", "ids": [], "finish": None, "stop": None, "lp": []}
                            for _ in range(p.n)]  # fmt: skip
    while core.has_work():
        for out in core.step():
            for c in out.outputs:
                acc = results[out.request_id][c.index]
                acc["text"] += c.text
                acc["ids"] += c.token_ids
                acc["finish"], acc["stop"] = c.finish_reason, c.stop_reason
                acc["lp"] += c.logprobs or []
            if out.prompt_logprobs is not None:
                results[out.request_id][0]["prompt_lp"] = out.prompt_logprobs
    return [results[f"r{i}"] for i in range(len(prompts))]


def prompts_of(tokenizer: Tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    words = ("the river city night music code light winter garden stone letter morning "
             "ocean bridge story machine forest").split()  # fmt: skip
    out = []
    for i in range(n):
        text = f"Story {i}: " + " ".join(rng.choice(words) for _ in range(rng.randrange(3, 60)))
        out.append(tokenizer.encode(text))
    return out


# ---- overlapped steps ---------------------------------------------------------------------


NAME_JSON = StructuredOutputsParams(
    json={
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
)


@pytest.mark.parametrize(
    "mode", [{"overlap_steps": True}, {"async_scheduling": True}], ids=["overlapped", "async"]
)
def test_overlapped_steps_give_the_same_outputs(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer, mode: dict[str, bool]
) -> None:
    """`overlap_steps` (on for CUDA; forced here) builds a step's deltas after the
    next step's launch, and `async_scheduling` also schedules and launches the next
    step before the last one's tokens are known (they are read on the device): the
    same tokens, text, stops, logprobs and prompt logprobs, through chunked prefill
    and preemption (a small cache), n > 1 and seeds; rows that need their last token
    on the host (penalties, min_tokens) wait for it."""
    prompts = prompts_of(tokenizer, 12, seed=3)
    params = [
        GREEDY,
        SamplingParams(temperature=0.9, seed=5, max_tokens=20, n=3),
        SamplingParams(temperature=0.0, max_tokens=30, stop=[" the", "."]),
        SamplingParams(temperature=0.0, max_tokens=12, logprobs=2, prompt_logprobs=1),
        SamplingParams(temperature=0.0, max_tokens=16, min_tokens=8, stop_token_ids=[13]),
        SamplingParams(temperature=0.7, seed=9, max_tokens=40, presence_penalty=0.5),
    ] * 2
    options: dict[str, Any] = {"kv_cache_memory": 8 << 20, "max_num_batched_tokens": 64}
    plain = make_core(smollm2, tokenizer, **options)
    overlapped = make_core(smollm2, tokenizer, **mode, **options)
    assert not plain.overlap_steps and overlapped.overlap_steps
    assert overlapped.async_scheduling == mode.get("async_scheduling", False)
    in_flight_after_step = 0
    original = overlapped.step

    def counting_step() -> list[Any]:
        nonlocal in_flight_after_step
        outputs = original()
        in_flight_after_step += overlapped._in_flight is not None
        return outputs

    overlapped.step = counting_step  # type: ignore[method-assign]
    got, want = run(overlapped, prompts, params), run(plain, prompts, params)
    if overlapped.async_scheduling:
        # Scheduled ahead, a step may hold a row whose token turns out to end it, and
        # admits a request a step later: other batch shapes, so logprobs differ in
        # the last float bits (tokens, text and the rest are equal)
        assert _without_logprobs(got) == _without_logprobs(want)
        for g, w in zip(_logprobs_of(got), _logprobs_of(want), strict=True):
            assert (g.token_id, g.rank, [t for t, _ in g.top]) == (
                w.token_id,
                w.rank,
                [t for t, _ in w.top],
            )
            assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
    else:
        assert got == want
    assert in_flight_after_step > 50  # steps really were left in flight
    assert overlapped.statistics().num_preemptions > 0  # not vacuous: preemption ran
    assert overlapped.kv_cache.statistics().num_free_blocks == plain.kv_cache.num_free_blocks
    if overlapped.async_scheduling:
        assert overlapped._num_scheduled_ahead > 20  # steps really were scheduled ahead
    assert all(r.num_pending == 0 for r in overlapped.scheduler.requests.values())


@pytest.mark.parametrize(
    "needs",
    [
        SamplingParams(temperature=0.0, max_tokens=30, repetition_penalty=1.3),
        # prompt 2's greedy output is " code winter stone ...": " stone" may end
        # it from the third token on (a stale count would ban it there)
        SamplingParams(temperature=0.0, max_tokens=30, min_tokens=2, stop_token_ids=[5692]),
        # two-token words: whether the second is banned depends on the last token
        SamplingParams(
            temperature=0.0, max_tokens=30, bad_words=[" the ocean", " stone stone", " moon moon"]
        ),
        SamplingParams(temperature=0.0, max_tokens=40, structured_outputs=NAME_JSON),
    ],
    ids=["penalty", "min-tokens", "bad-words", "grammar"],
)
def test_async_scheduling_waits_for_a_token_a_row_needs_on_the_host(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer, needs: SamplingParams
) -> None:
    """A request that needs its last token on the host to sample the next, among
    greedy ones: the steps after its tokens wait for them (the greedy ones alone
    would run ahead), and the outputs are those of steps one at a time."""
    prompts = prompts_of(tokenizer, 6, seed=4)
    params = [needs, SamplingParams(temperature=0.0, max_tokens=12)] * 3
    plain = make_core(smollm2, tokenizer)
    ahead = make_core(smollm2, tokenizer, async_scheduling=True)
    got, want = run(ahead, prompts, params), run(plain, prompts, params)
    assert _without_logprobs(got) == _without_logprobs(want)
    if needs.structured_outputs is not None:
        assert all(json.loads(r[0]["text"])["age"] >= 0 for r in want[::2])


def _without_logprobs(results: list[Any]) -> list[Any]:
    return [[{k: v for k, v in c.items() if k not in ("lp", "prompt_lp")} for c in r]
            for r in results]  # fmt: skip


def _logprobs_of(results: list[Any]) -> list[Any]:
    """Every sampled and prompt logprob, in order (None for a prompt's first token)."""
    out = []
    for r in results:
        for c in r:
            out += c["lp"] + [p for p in c.get("prompt_lp", []) if p is not None]
    return out


# ---- batching ----------------------------------------------------------------------------


def test_batch_invariance_32_concurrent_greedy_requests(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    prompts = prompts_of(tokenizer, 32)
    assert len({len(p) for p in prompts}) > 10
    core = make_core(smollm2, tokenizer, kv_cache_memory=192 << 20, max_num_batched_tokens=512)
    batched = run(core, prompts, [GREEDY] * 32)
    assert core.statistics().num_steps < 32 * 24 / 4  # the requests really shared steps
    alone = [run(make_core(smollm2, tokenizer), [p], [GREEDY])[0] for p in prompts]
    differ = [i for i in range(32) if batched[i][0]["ids"] != alone[i][0]["ids"]]
    # float32 matmuls of different batch shapes round differently; a greedy near-tie may
    # flip. The issue allows 1 in 32 and asks for a report of which and why.
    assert len(differ) <= 1, f"{len(differ)} of 32 differ: {differ}"


def test_chunked_prefill_interleaves_and_matches(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    long_prompt = tokenizer.encode(" ".join(["word"] * 300))
    short = prompts_of(tokenizer, 3, seed=3)
    core = make_core(smollm2, tokenizer, max_num_batched_tokens=64)
    outs = run(core, [long_prompt, *short], [GREEDY] * 4)
    # 300+ prompt tokens at 64 per step: several steps, while the short ones decode
    assert core.statistics().num_steps >= len(long_prompt) // 64
    reference = make_core(smollm2, tokenizer, max_num_batched_tokens=4096)
    assert outs == run(reference, [long_prompt, *short], [GREEDY] * 4)


def test_without_chunked_prefill_the_context_fits_one_step(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    """A prompt longer than the step budget used to wait at the head of the queue
    forever (and everything behind it); now the context is capped at the budget."""
    core = make_core(smollm2, tokenizer, max_num_batched_tokens=64, enable_chunked_prefill=False)
    assert core.max_model_len == 64
    with pytest.raises(ContextLengthExceededError):
        core.make_requests([1] * 70, SamplingParams(max_tokens=1), "too-long")
    short = prompts_of(tokenizer, 3, seed=3)
    params = SamplingParams(temperature=0.0, max_tokens=64 - max(map(len, short)))
    outs = run(core, short, [params] * 3)
    assert all(o[0]["finish"] in ("stop", "length") for o in outs)


def test_prompt_logprobs_survive_a_preemption_mid_prefill(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    """The leader of a prompt_logprobs request preempted halfway through its chunked
    prefill is recomputed from position 0: its partial prompt logprobs start over
    instead of being appended to."""
    first = tokenizer.encode(" ".join(["river"] * 300))  # 19 of the 24 blocks
    scored = tokenizer.encode(" ".join(["garden stone"] * 100))  # needs 13 more
    params = [SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=1)]  # fmt: skip
    roomy = run(make_core(smollm2, tokenizer, max_num_batched_tokens=64), [first, scored], params)
    tight = make_core(
        smollm2, tokenizer, max_num_batched_tokens=64, kv_cache_memory=24 * BLOCK * 46080
    )
    outs = run(tight, [first, scored], params)
    assert tight.statistics().num_preemptions >= 1
    assert len(outs[1][0]["prompt_lp"]) == len(scored)
    assert outs == roomy


def test_prompt_logprobs_are_launched_not_read(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's prompt logprobs are computed at its launch without reading a tensor
    on the host (on a GPU a read waits for the step, and async scheduling loses its
    overlap) and taken when the step is finished: every prompt token scored,
    through a chunked prefill."""
    core = make_core(smollm2, tokenizer, max_num_batched_tokens=64)
    launch = core.output_processor.prompt_logprobs_chunk
    calls = 0

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tensor was read on the host at launch")

    def strict(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        with monkeypatch.context() as patch:
            for name in ("tolist", "item", "__bool__", "__int__", "__float__"):
                patch.setattr(torch.Tensor, name, no_read)
            return launch(*args)

    core.output_processor.prompt_logprobs_chunk = strict  # type: ignore[method-assign]
    prompt = tokenizer.encode(" ".join(["garden stone"] * 60))
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=2)
    (out,) = run(core, [prompt], [params])
    assert calls >= 2 and len(prompt) > 64  # chunked
    scored = out[0]["prompt_lp"]
    assert len(scored) == len(prompt) and scored[0] is None
    assert [lp.token_id for lp in scored[1:]] == prompt[1:]


def test_preemption_gives_identical_outputs(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    prompts = prompts_of(tokenizer, 12, seed=5)
    params = [SamplingParams(temperature=0.0, max_tokens=40)] * 12
    roomy = run(make_core(smollm2, tokenizer), prompts, params)
    # 24 blocks of 16 tokens cannot hold 12 sequences of up to ~100 tokens
    tight_core = make_core(smollm2, tokenizer, kv_cache_memory=24 * BLOCK * 46080)
    assert tight_core.runner.num_blocks == 24
    tight = run(tight_core, prompts, params)
    assert tight_core.statistics().num_preemptions > 0
    assert tight == roomy
    assert tight_core.statistics().num_kv_blocks_free == 24


# ---- prefix caching ----------------------------------------------------------------------


def test_prefix_cache_computes_only_the_unshared_tail(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    prefix = tokenizer.encode("You are a helpful assistant. " * 8)[: 3 * BLOCK]
    first = prefix + tokenizer.encode(" Tell me about rivers.", add_special_tokens=False)
    second = prefix + tokenizer.encode(" What is a volcano? Explain.", add_special_tokens=False)
    outputs = {}
    for caching in (True, False):
        core = make_core(smollm2, tokenizer, enable_prefix_caching=caching)
        run(core, [first], [GREEDY])
        before = core.statistics()
        outputs[caching] = run(core, [second], [GREEDY])
        after = core.statistics()
        computed = after.num_prompt_tokens_computed - before.num_prompt_tokens_computed
        if caching:
            assert after.prefix_cache_hits - before.prefix_cache_hits == 3 * BLOCK
            assert computed == len(second) - 3 * BLOCK
        else:
            assert computed == len(second)
    assert outputs[True] == outputs[False]


def test_n_greater_than_one_shares_the_prompt(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    prompt = tokenizer.encode("Write a short poem about the sea. " * 4)
    core = make_core(smollm2, tokenizer)
    params = SamplingParams(n=4, temperature=0.8, seed=11, max_tokens=12)
    [out] = run(core, [prompt], [params])
    stats = core.statistics()
    full_blocks = (len(prompt) - 1) // BLOCK
    assert stats.prefix_cache_hits == 3 * full_blocks * BLOCK
    assert stats.num_prompt_tokens_computed == len(prompt) + 3 * (len(prompt) - full_blocks * BLOCK)
    assert len(out) == 4 and len({tuple(c["ids"]) for c in out}) > 1  # different samples


# ---- seeds -------------------------------------------------------------------------------


def test_seeded_request_is_batch_invariant(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    prompt = tokenizer.encode("Once upon a time")
    seeded = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=24)
    alone = run(make_core(smollm2, tokenizer), [prompt], [seeded])[0][0]["ids"]
    others = prompts_of(tokenizer, 16, seed=9)
    other_params = [SamplingParams(temperature=0.9, max_tokens=24, seed=i if i % 2 else None)
                    for i in range(16)]  # fmt: skip
    batch = run(make_core(smollm2, tokenizer), [*others[:7], prompt, *others[7:]],
                [*other_params[:7], seeded, *other_params[7:]])  # fmt: skip
    assert batch[7][0]["ids"] == alone
    different_seed = SamplingParams(temperature=1.0, top_p=0.95, seed=99, max_tokens=24)
    assert run(make_core(smollm2, tokenizer), [prompt], [different_seed])[0][0]["ids"] != alone


# ---- request-level parameters ------------------------------------------------------------


def test_stop_strings_are_cut_and_reported(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    prompt = tokenizer.encode("The capital of France is")
    core = make_core(smollm2, tokenizer)
    free = run(core, [prompt], [SamplingParams(temperature=0, max_tokens=30)])[0][0]["text"]
    assert "answer" in free  # " Paris.\n\nThe answer is: ..."
    stopped, kept = run(core, [prompt, prompt], [
        SamplingParams(temperature=0, max_tokens=30, stop=["answer"]),
        SamplingParams(temperature=0, max_tokens=30, stop=["answer"],
                       include_stop_str_in_output=True),
    ])  # fmt: skip
    assert stopped[0]["text"] == free[: free.index("answer")]
    assert stopped[0]["finish"] == "stop" and stopped[0]["stop"] == "answer"
    assert kept[0]["text"] == free[: free.index("answer") + len("answer")]


def test_stop_token_ids_max_tokens_min_tokens_ignore_eos(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    prompt = tokenizer.encode("The capital of France is")
    core = make_core(smollm2, tokenizer)
    free = run(core, [prompt], [SamplingParams(temperature=0, max_tokens=40)])[0][0]
    assert free["finish"] == "stop" and free["ids"][-1] in core.eos_token_ids
    third = free["ids"][2]
    by_token, by_length, at_least, no_eos = run(core, [prompt] * 4, [
        SamplingParams(temperature=0, max_tokens=40, stop_token_ids=[third]),
        SamplingParams(temperature=0, max_tokens=5),
        SamplingParams(temperature=0, max_tokens=80, min_tokens=len(free["ids"]) + 5),
        SamplingParams(temperature=0, max_tokens=len(free["ids"]) + 6, ignore_eos=True),
    ])  # fmt: skip
    assert by_token[0]["ids"] == free["ids"][:3] and by_token[0]["stop"] == third
    assert by_length[0]["ids"] == free["ids"][:5] and by_length[0]["finish"] == "length"
    assert len(at_least[0]["ids"]) >= len(free["ids"]) + 5
    assert len(no_eos[0]["ids"]) == len(free["ids"]) + 6 and no_eos[0]["finish"] == "length"


def test_logprobs_and_prompt_logprobs_match_the_model(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    prompt = tokenizer.encode("The capital of France is")
    core = make_core(smollm2, tokenizer)
    [[out]] = run(core, [prompt], [SamplingParams(temperature=0, max_tokens=4, logprobs=3,
                                                  prompt_logprobs=2)])  # fmt: skip
    runner = llmcore.ModelRunner(smollm2, num_blocks=8)
    full = prompt + out["ids"]
    chunk = llmcore.SequenceChunk(full, 0, list(range(8)), all_logits=True)
    logprobs = torch.log_softmax(runner.execute_detailed([chunk]).all[0], -1)
    for i, lp in enumerate(out["lp"]):
        row = logprobs[len(prompt) - 1 + i]
        assert lp.token_id == out["ids"][i] and lp.rank == 1  # greedy picks rank 1
        assert lp.logprob == pytest.approx(float(row[lp.token_id]), abs=1e-4)
        assert [t for t, _ in lp.top] == row.topk(3).indices.tolist()
    plp = out["prompt_lp"]
    assert plp[0] is None and len(plp) == len(prompt)
    for pos in range(1, len(prompt)):
        assert plp[pos].token_id == prompt[pos]
        assert plp[pos].logprob == pytest.approx(float(logprobs[pos - 1, prompt[pos]]), abs=1e-4)
        assert len(plp[pos].top) == 2


def test_invalid_requests_are_refused_naming_the_field(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    core = make_core(smollm2, tokenizer, max_model_len=256)
    message = r"256.*250 prompt tokens.*max_tokens \(16\)"
    with pytest.raises(ContextLengthExceededError, match=message):
        core.make_requests([1] * 250, SamplingParams(max_tokens=16), "x")
    with pytest.raises(InvalidRequestError) as info:
        core.make_requests([1, 2], SamplingParams(temperature=-1), "x")
    assert info.value.param == "temperature"
    with pytest.raises(InvalidRequestError, match="logit_bias"):
        core.make_requests([1, 2], SamplingParams(logit_bias={10**6: 1.0}), "x")
    with pytest.raises(InvalidRequestError, match="prompt"):
        core.make_requests([], SamplingParams(), "x")


# ---- the asyncio front -------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    [{}, {"overlap_steps": True}, {"async_scheduling": True}],
    ids=["steps", "overlapped-steps", "async-scheduling"],
)
def test_async_abort_leaks_no_blocks(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer, mode: dict[str, bool]
) -> None:
    async def scenario() -> None:
        core = make_core(smollm2, tokenizer, kv_cache_memory=256 << 20, **mode)
        engine = AsyncEngine(core)
        total = engine.statistics().num_kv_blocks
        rng = random.Random(0)
        prompts = prompts_of(tokenizer, 200, seed=1)

        async def consume(i: int) -> None:
            stop_after = rng.randrange(0, 6)
            params = SamplingParams(temperature=0.7, seed=i, max_tokens=50)
            seen = 0
            stream = engine.generate(prompts[i], params, f"a{i}")
            try:
                async for _ in stream:
                    seen += 1
                    if seen > stop_after:
                        break
            finally:
                await stream.aclose()

        tasks = [asyncio.create_task(consume(i)) for i in range(200)]
        await asyncio.sleep(0)
        for t in tasks[::7]:  # some are cancelled from outside, before or while streaming
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(100):
            stats = engine.statistics()
            if stats.num_running == 0 and stats.num_waiting == 0:
                break
            await asyncio.sleep(0.05)
        assert (stats.num_running, stats.num_waiting) == (0, 0)
        assert stats.num_kv_blocks_free == total
        prompt = tokenizer.encode("The capital of France is")
        outs: list[RequestOutput] = [o async for o in engine.generate(prompt, GREEDY, "after")]
        text = "".join(c.text for o in outs for c in o.outputs)
        assert text.startswith(" Paris")
        await engine.check_health()
        await engine.aclose()

    asyncio.run(scenario())


def test_a_stream_interval_sends_fewer_larger_deltas(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    """`stream_interval=4` (vLLM's --stream-interval): the first delta at once,
    then at least 4 tokens a delta until the last; the same tokens and text."""

    async def deltas(interval: int) -> list[RequestOutput]:
        engine = AsyncEngine(make_core(smollm2, tokenizer, stream_interval=interval))
        prompt = tokenizer.encode("Write a short story about a lighthouse.")
        params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
        outs = [o async for o in engine.generate(prompt, params, "s")]
        await engine.aclose()
        return outs

    every, grouped = asyncio.run(deltas(1)), asyncio.run(deltas(4))
    sizes = [len(o.outputs[0].token_ids) for o in grouped]
    assert sizes[0] == 1 and all(n >= 4 for n in sizes[1:-1]) and sum(sizes) == 30
    assert len(grouped) <= 9  # 1, then 29 tokens by 4 or more
    assert "".join(o.outputs[0].text for o in grouped) == "".join(o.outputs[0].text for o in every)
    assert [t for o in grouped for t in o.outputs[0].token_ids] == [
        t for o in every for t in o.outputs[0].token_ids
    ]


def test_dead_step_loop_fails_waiting_requests(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    async def scenario() -> None:
        core = make_core(smollm2, tokenizer)
        engine = AsyncEngine(core)

        def broken_step() -> list[RequestOutput]:
            raise RuntimeError("simulated kernel failure")

        core.step = broken_step  # type: ignore[method-assign]
        with pytest.raises(llmcore.errors.EngineDeadError, match="simulated kernel failure"):
            async for _ in engine.generate([1, 2, 3], GREEDY, "doomed"):
                pass
        with pytest.raises(llmcore.errors.EngineDeadError):
            await engine.check_health()
        with pytest.raises(llmcore.errors.EngineDeadError):
            async for _ in engine.generate([1, 2, 3], GREEDY, "next"):
                pass
        await engine.aclose()

    asyncio.run(scenario())


def test_engines_share_one_step_thread_until_the_last_closes(
    smollm2: llmcore.LoadedModel, tokenizer: Tokenizer
) -> None:
    """All torch work of all engines runs on one thread (two stepping threads cost
    a JSON-lines batch 0.78x of offline against 0.93x on one); closing one engine
    leaves the other serving."""

    async def scenario() -> None:
        first = AsyncEngine(make_core(smollm2, tokenizer))
        second = AsyncEngine(make_core(smollm2, tokenizer))
        assert first._executor is second._executor
        await first.aclose()
        await first.aclose()  # twice is harmless
        outs = [o async for o in second.generate([1, 2, 3], GREEDY, "after")]
        assert outs[-1].finished
        thread = second._executor
        await second.aclose()
        third = AsyncEngine(make_core(smollm2, tokenizer))
        assert third._executor is not thread  # the last close shut the thread down
        await third.aclose()

    asyncio.run(scenario())


def test_llm_offline_api(smollm2: llmcore.LoadedModel) -> None:
    llm = llmcore.LLM(smollm2.path, kv_cache_memory=64 << 20)
    outs = llm.generate(["The capital of France is", [1, 2, 3]], SamplingParams(temperature=0))
    assert len(outs) == 2 and outs[0].outputs[0].text.startswith(" Paris")
    assert outs[0].prompt_token_ids == llm.tokenizer.encode("The capital of France is")
    assert len(outs[1].outputs[0].token_ids) == 16  # default max_tokens
    # vLLM's prompt dicts: the same outputs as the text and the ids they name
    as_dicts = llm.generate(
        [{"prompt": "The capital of France is"}, {"prompt_token_ids": [1, 2, 3]}],
        SamplingParams(temperature=0),
    )
    assert [o.outputs[0].token_ids for o in as_dicts] == [o.outputs[0].token_ids for o in outs]
    with pytest.raises(InvalidRequestError, match="prompt_token_ids"):
        llm.generate({"text": "no"})
    [chat] = llm.chat([{"role": "user", "content": "What is 2+2?"}],
                      SamplingParams(temperature=0, max_tokens=30))  # fmt: skip
    assert "4" in chat.outputs[0].text and chat.outputs[0].finish_reason in ("stop", "length")
