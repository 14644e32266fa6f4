"""`ProcessEngine` on SmolLM2-135M-Instruct (float32), the engine core in its own
process: its outputs equal the in-process engine's (greedy, n > 1, stop strings,
logprobs, prompt logprobs, a seeded sample, structured output, embeddings), aborts
free every block and never end a request that reuses the id, refusals keep their
class, a shutdown leaves no child, a killed core fails
the streams in flight within seconds, and a core whose API process goes away exits.

One engine serves the module's first tests (on one event loop: a `ProcessEngine`
binds to the loop of its first use); the fault tests start their own."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import torch

import llmcore
from llmcore.engine import ipc
from llmcore.engine.async_engine import AsyncEngine
from llmcore.engine.config import EngineConfig
from llmcore.engine.core import EngineCore
from llmcore.engine.core_client import ProcessEngine
from llmcore.engine.core_launch import launch_core
from llmcore.errors import ContextLengthExceededError, EngineDeadError, InvalidRequestError
from llmcore.outputs import RequestOutput, extend_output
from llmcore.pooling import PoolingParams
from llmcore.sampling_params import SamplingParams
from llmcore.structured_outputs import StructuredOutputsParams
from tests.llmcore.engine.engine_process_checks import kill_core_mid_stream

pytestmark = pytest.mark.slow  # SmolLM2, in this process and in core processes

OPTIONS: dict[str, Any] = {"block_size": 16, "kv_cache_memory": 96 << 20}


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def engine(runner: asyncio.Runner, smollm2_path: Path) -> Iterator[ProcessEngine]:
    engine = ProcessEngine.load(smollm2_path, dtype="float32", **OPTIONS)
    yield engine
    runner.run(engine.aclose())


@pytest.fixture(scope="module")
def reference(runner: asyncio.Runner, smollm2: llmcore.LoadedModel) -> Iterator[AsyncEngine]:
    tokenizer = llmcore.load_tokenizer(smollm2.path)
    engine = AsyncEngine(EngineCore(smollm2, tokenizer, EngineConfig(**OPTIONS)))
    yield engine
    runner.run(engine.aclose())


async def collect(engine: Any, prompt: list[int], params: SamplingParams, rid: str
                  ) -> list[RequestOutput]:  # fmt: skip
    return [out async for out in engine.generate(prompt, params, rid)]


def whole(deltas: list[RequestOutput]) -> RequestOutput:
    """A stream's deltas as one output: where one delta ends depends on timing (a
    reader that fell behind gets what waited merged), what they add up to does not."""
    total = copy.deepcopy(deltas[0])
    for delta in deltas[1:]:
        extend_output(total, copy.deepcopy(delta))
    total.outputs.sort(key=lambda c: c.index)
    return total


def same_streams(ours: list[list[RequestOutput]], theirs: list[list[RequestOutput]]) -> bool:
    return [whole(o) for o in ours] == [whole(t) for t in theirs]


async def all_blocks_free(engine: ProcessEngine, total: int, within: float) -> None:
    """Wait until the core runs nothing and every KV block is free (aborts land)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        stats = await engine.fetch_statistics()
        if stats.num_running == 0 and stats.num_kv_blocks_free == total:
            return
        await asyncio.sleep(0.05)
    assert (stats.num_running, stats.num_kv_blocks_free) == (0, total)


def cases(engine: ProcessEngine) -> list[tuple[list[int], SamplingParams]]:
    encode = engine.tokenizer.encode
    greedy = {"temperature": 0.0, "max_tokens": 12}
    return [
        (encode("Once upon a time, in a small village,"), SamplingParams(**greedy)),
        (encode("List three colors:"), SamplingParams(**greedy, n=3)),
        (encode("The capital of France is"), SamplingParams(**greedy, stop=["answer is"])),
        (encode("Water boils at"), SamplingParams(**greedy, logprobs=3, prompt_logprobs=2)),
        (
            encode("A short poem about the sea:"),
            SamplingParams(temperature=0.8, seed=7, max_tokens=8, n=2),
        ),
        (
            encode("Is the sky blue? Answer:"),
            SamplingParams(
                temperature=0.0,
                max_tokens=8,
                structured_outputs=StructuredOutputsParams(choice=[" yes", " no"]),
            ),
        ),
    ]


def test_outputs_equal_the_in_process_engine(
    runner: asyncio.Runner, engine: ProcessEngine, reference: AsyncEngine
) -> None:
    """One request at a time the two engines run the same batches, so every delta
    (text, ids, finish and stop reasons, logprobs) must be equal; all at once the
    batches differ in shape, and float32 rounding may flip one greedy near-tie."""
    work = cases(engine)

    async def one_at_a_time(eng: Any) -> list[list[RequestOutput]]:
        return [await collect(eng, p, params, f"c{i}") for i, (p, params) in enumerate(work)]

    ours, theirs = runner.run(one_at_a_time(engine)), runner.run(one_at_a_time(reference))
    assert same_streams(ours, theirs)
    stop = theirs[2][-1].outputs[-1]
    assert (stop.finish_reason, stop.stop_reason) == ("stop", "answer is")  # not vacuous
    assert theirs[3][-1].prompt_logprobs is not None and theirs[3][0].outputs[0].logprobs
    assert "".join(c.text for o in theirs[5] for c in o.outputs) in (" yes", " no")

    async def all_at_once() -> list[list[RequestOutput]]:
        return list(await asyncio.gather(
            *(collect(engine, p, params, f"b{i}") for i, (p, params) in enumerate(work))
        ))  # fmt: skip

    batched = runner.run(all_at_once())

    def ids(outs: list[RequestOutput]) -> list[list[int]]:
        n = max(c.index for o in outs for c in o.outputs) + 1
        return [[t for o in outs for c in o.outputs if c.index == i for t in c.token_ids]
                for i in range(n)]  # fmt: skip

    differ = [i for i in range(len(work)) if ids(batched[i]) != ids(theirs[i])]
    assert len(differ) <= 1, differ


def test_text_made_in_the_api_process_equals_the_in_process_engine(
    runner: asyncio.Runner, engine: ProcessEngine, reference: AsyncEngine
) -> None:
    """The core process sends ids only and the API process detokenizes: stop strings
    (kept or not, one completion of n ending early, the stop string completed by a
    request's last allowed token), stop tokens (hidden or shown), special tokens
    shown and the held-back tail must give the deltas the in-process core gives."""
    encode = engine.tokenizer.encode
    comma = encode(",", add_special_tokens=False)
    assert len(comma) == 1
    greedy = {"temperature": 0.0, "max_tokens": 24}
    sampled = {"temperature": 1.0, "seed": 3, "max_tokens": 24}
    work = [
        (encode("Once upon a time"), SamplingParams(**greedy, stop_token_ids=comma)),
        (
            encode("Once upon a time"),
            SamplingParams(**greedy, stop_token_ids=comma, include_stop_str_in_output=True),
        ),
        (encode("Name a fruit:"), SamplingParams(**sampled, n=4, stop=[" a", "e"])),
        (
            encode("Name a fruit:"),
            SamplingParams(**sampled, n=3, stop=["an", " "], include_stop_str_in_output=True),
        ),
        (
            encode("Say hello."),
            SamplingParams(**greedy, skip_special_tokens=False, stop=["<|im_end|>x"]),
        ),
    ]

    async def one_at_a_time(eng: Any) -> list[list[RequestOutput]]:
        return [await collect(eng, p, params, f"t{i}") for i, (p, params) in enumerate(work)]

    ours, theirs = runner.run(one_at_a_time(engine)), runner.run(one_at_a_time(reference))
    assert same_streams(ours, theirs)
    finals = [c for outs in theirs for o in outs for c in o.outputs if c.finished]
    reasons = {type(c.stop_reason) for c in finals if c.finish_reason == "stop"}
    assert {int, str} <= reasons  # stop tokens and stop strings both ended some
    lengths = {len(c.token_ids) for c in whole(theirs[2]).outputs}
    assert len(lengths) > 1  # one of the n completions ended before another


def test_aborts_free_every_block(runner: asyncio.Runner, engine: ProcessEngine) -> None:
    async def scenario() -> None:
        total = engine.statistics().num_kv_blocks
        params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
        prompt = engine.tokenizer.encode("Tell me a long story about a dragon.")
        streams = [engine.generate([*prompt, i], params, f"long{i}") for i in range(4)]
        for stream in streams:
            await anext(stream)
        stats = await engine.fetch_statistics()
        assert stats.num_running == 4 and stats.num_kv_blocks_free < total
        for stream in streams[:3]:
            await stream.aclose()

        async def consume() -> None:
            async for _ in streams[3]:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        task.cancel()  # cancelled from outside, mid-stream
        await asyncio.gather(task, return_exceptions=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = await engine.fetch_statistics()
            if stats.num_running == stats.num_waiting == 0:
                break
            await asyncio.sleep(0.05)
        assert (stats.num_running, stats.num_waiting) == (0, 0)
        assert stats.num_kv_blocks_free == total
        assert engine.statistics().num_kv_blocks_free == total  # the last step's, too

    runner.run(scenario())


def test_an_id_reused_right_after_an_abort_gets_its_own_outputs(
    runner: asyncio.Runner, engine: ProcessEngine, reference: AsyncEngine
) -> None:
    """The aborted request's "abort" delta comes a step later; it must not end the
    new request that reuses the id (both engines run requests under unique ids)."""

    async def scenario(eng: Any) -> None:
        prompt = engine.tokenizer.encode("Tell me about the moon.")
        for _ in range(3):
            old = eng.generate(prompt, SamplingParams(max_tokens=400), "again")
            await anext(old)
            await old.aclose()
            params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
            outs = await collect(eng, prompt, params, "again")
            assert all(o.request_id == "again" for o in outs)
            assert len([t for o in outs for c in o.outputs for t in c.token_ids]) == 3
            assert outs[-1].outputs[-1].finish_reason == "length"

    runner.run(scenario(engine))
    runner.run(scenario(reference))


def test_refusals_keep_their_class(runner: asyncio.Runner, engine: ProcessEngine) -> None:
    async def scenario() -> None:
        with pytest.raises(ContextLengthExceededError):
            await collect(engine, [1] * (engine.info.max_model_len + 1), SamplingParams(), "x")
        with pytest.raises(InvalidRequestError, match="temperature") as bad:
            await collect(engine, [1, 2], SamplingParams(temperature=-1.0), "y")
        assert bad.value.param == "temperature"
        with pytest.raises(InvalidRequestError, match="not for embeddings"):
            await engine.encode([1, 2], PoolingParams(), "z")
        await engine.check_health()
        assert await engine.reset_prefix_cache() is True

    runner.run(scenario())


def test_an_overlapping_core_process_equals_the_in_process_engine(
    smollm2_path: Path, smollm2: llmcore.LoadedModel
) -> None:
    """The core process as it runs on CUDA: steps scheduled ahead (async scheduling,
    forced here), ids only; the same deltas as the in-process engine, stop strings
    and n > 1 included."""

    async def scenario() -> None:
        engine = await ProcessEngine.from_pretrained(
            smollm2_path, dtype="float32", async_scheduling=True, **OPTIONS
        )
        tokenizer = llmcore.load_tokenizer(smollm2.path)
        reference = AsyncEngine(EngineCore(smollm2, tokenizer, EngineConfig(**OPTIONS)))
        work = cases(engine)[:3]  # greedy; n=3; a stop string
        for i, (prompt, params) in enumerate(work):
            ours = await collect(engine, prompt, params, f"o{i}")
            assert same_streams([ours], [await collect(reference, prompt, params, f"o{i}")])
        await engine.aclose()
        await reference.aclose()

    asyncio.run(scenario())


def test_embeddings_equal_the_in_process_engine(minilm_dir: Path) -> None:
    """The encode path: pooled vectors cross as float32 bytes, unchanged."""

    async def scenario() -> None:
        ours = await ProcessEngine.from_pretrained(minilm_dir)
        theirs = await AsyncEngine.from_pretrained(minilm_dir)
        assert ours.info.task == "embed" and ours.info.max_model_len == theirs.info.max_model_len
        texts = ["A cat sat on the mat.", "Paris is in France.", "llamas"]
        for i, text in enumerate(texts):
            ids = ours.tokenizer.encode(text)
            params = PoolingParams(normalize=i != 1)
            a = await ours.encode(ids, params, f"e{i}")
            b = await theirs.encode(ids, params, f"e{i}")
            assert a.prompt_token_ids == b.prompt_token_ids == ids
            assert torch.equal(a.data, b.data)
        with pytest.raises(InvalidRequestError):
            await collect(ours, [1, 2], SamplingParams(), "g")
        await ours.aclose()
        await theirs.aclose()

    asyncio.run(scenario())


def test_aclose_leaves_no_child(runner: asyncio.Runner, engine: ProcessEngine) -> None:
    """(Closes the module's engine: keep it the last test that uses it.)"""

    async def scenario() -> None:
        prompt = engine.tokenizer.encode("Count to one hundred:")
        stream = engine.generate(prompt, SamplingParams(max_tokens=300, ignore_eos=True), "s")
        await anext(stream)
        await engine.aclose()
        with pytest.raises(EngineDeadError, match="closed"):
            async for _ in stream:
                pass

    pid = engine.process.pid
    runner.run(scenario())
    assert engine.process.returncode == 0  # it exited when asked, and was reaped
    assert not Path(f"/proc/{pid}").exists()
    assert engine._sock.fileno() == -1  # closed


def test_a_killed_core_fails_streams_in_flight(smollm2_path: Path) -> None:
    async def scenario() -> None:
        engine = await ProcessEngine.from_pretrained(smollm2_path, dtype="float32", **OPTIONS)
        prompts = [engine.tokenizer.encode(f"Story number {i}:") for i in range(3)]
        params = SamplingParams(max_tokens=1000, ignore_eos=True)
        await kill_core_mid_stream(engine, prompts, params, within=5.0)

    asyncio.run(scenario())


def test_the_core_exits_when_the_api_process_goes(smollm2_path: Path) -> None:
    """The API process's end of the socket closing (as it does when that process
    dies, even by SIGKILL) makes the core exit on its own."""
    start = ipc.Start(str(smollm2_path), None, "float32", "cpu", None,
                      dict(OPTIONS), logging.WARNING)  # fmt: skip
    process, sock, ready = launch_core(start)
    assert ready.info.pid == process.pid and ready.info.task == "generate"
    sock.close()
    assert process.wait(timeout=15) == 0


def test_two_api_processes_share_one_core(smollm2_path: Path, smollm2: llmcore.LoadedModel) -> None:
    """`--api-server-count`'s engine side, both API ends in this process: a core
    started for two clients and one attached on the other socket. Requests under
    the same caller ids on both, all at once, each get their own outputs; a client
    that closes mid-stream has its requests aborted and every block freed, the
    core serving on; statistics reach a client that sent nothing; the owner's
    close is seen by the attached one."""

    async def scenario() -> None:
        first = await ProcessEngine.from_pretrained(
            smollm2_path, dtype="float32", clients=2, **OPTIONS
        )
        (other_end,) = first.take_client_sockets()
        second = await asyncio.to_thread(ProcessEngine.attach, other_end)
        assert second.process is None and second.info == first.info
        tokenizer = llmcore.load_tokenizer(smollm2.path)
        reference = AsyncEngine(EngineCore(smollm2, tokenizer, EngineConfig(**OPTIONS)))
        params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
        starts = ["The capital of France is", "Water boils at", "Once upon a time,",
                  "List three colors:", "The largest planet is", "def fibonacci(n):",
                  "My favourite food is", "Dear Sir or Madam,"]  # fmt: skip
        prompts = [first.tokenizer.encode(start) for start in starts]
        expected = [await collect(reference, p, params, f"r{i}") for i, p in enumerate(prompts)]
        # the same caller ids r0..r3 on both clients, at once
        engines = [first] * 4 + [second] * 4
        got = await asyncio.gather(*(
            collect(e, p, params, f"r{i % 4}")
            for i, (e, p) in enumerate(zip(engines, prompts, strict=True))
        ))  # fmt: skip
        assert all(o.request_id == f"r{i % 4}" for i, outs in enumerate(got) for o in outs)
        texts = [whole(outs).outputs[0].text for outs in got]
        differ = [i for i, outs in enumerate(expected) if whole(outs).outputs[0].text != texts[i]]
        assert len(differ) <= 1, differ  # a batch's rounding may flip one near-tie
        assert len(set(texts)) == len(texts)  # not one stream's tokens in another

        steps = (await first.fetch_statistics()).num_steps
        await collect(first, prompts[0], params, "only-first")
        assert second.statistics().num_steps > steps  # its statistics stay current

        total = first.statistics().num_kv_blocks
        long = SamplingParams(max_tokens=2000, ignore_eos=True)  # a minute or more, unaborted
        streams = [second.generate(p, long, f"long{i}") for i, p in enumerate(prompts[:3])]
        for stream in streams:
            await anext(stream)
        assert (await first.fetch_statistics()).num_running == 3
        await second.aclose()  # closes its connection: the core aborts its requests
        with pytest.raises(EngineDeadError, match="closed"):
            async for _ in streams[0]:
                pass
        await all_blocks_free(first, total, within=15)
        outs = await collect(first, prompts[1], params, "after")
        assert whole(outs).outputs[0].text == whole(expected[1]).outputs[0].text
        await first.check_health()

        await first.aclose()
        assert first.process is not None and first.process.returncode == 0
        await reference.aclose()

    asyncio.run(scenario())


def test_an_attached_client_sees_the_core_go(smollm2_path: Path) -> None:
    """The core's owner closes it: the attached API process's streams and health
    fail with EngineDeadError, and new requests are refused."""

    async def scenario() -> None:
        first = await ProcessEngine.from_pretrained(
            smollm2_path, dtype="float32", clients=3, **OPTIONS
        )
        ends = first.take_client_sockets()
        assert len(ends) == 2
        second = await asyncio.to_thread(ProcessEngine.attach, ends[0])
        ends[1].close()  # an API process that never came: the core serves on
        await second.check_health()
        prompt = second.tokenizer.encode("Count to one hundred:")
        stream = second.generate(prompt, SamplingParams(max_tokens=1000, ignore_eos=True), "s")
        await anext(stream)
        await first.aclose()
        with pytest.raises(EngineDeadError):
            async for _ in stream:
                pass
        with pytest.raises(EngineDeadError):
            await second.check_health()
        with pytest.raises(EngineDeadError):
            await collect(second, prompt, SamplingParams(max_tokens=2), "t")
        await second.aclose()

    asyncio.run(scenario())


def test_an_api_process_that_stops_reading_stalls_only_itself(smollm2_path: Path) -> None:
    """Another API process that is alive but stops reading must not stall the core
    for the others: its first output (prompt logprobs, 20 alternatives for ~1500
    prompt tokens: larger than a socket buffer) waits on its own sender thread
    while the first process's request runs to its end; when it goes, its request
    is aborted and every block is free again."""

    async def scenario() -> None:
        first = await ProcessEngine.from_pretrained(
            smollm2_path, dtype="float32", clients=2, **OPTIONS
        )
        try:
            await asyncio.wait_for(with_a_stuck_client(first), 90)
        except BaseException:
            assert first.process is not None
            first.process.kill()  # a core stalled in a write never exits on its own
            raise
        await first.aclose()

    async def with_a_stuck_client(first: ProcessEngine) -> None:
        (stuck,) = first.take_client_sockets()  # never read from
        prompt = first.tokenizer.encode(" ".join(["word", "river"] * 700))
        assert 1300 < len(prompt) < 1800
        heavy = SamplingParams(max_tokens=300, ignore_eos=True, prompt_logprobs=20, logprobs=20)
        ipc.send_frame(stuck, ipc.Add("stuck#1.0", prompt, msgspec.Raw(ipc.encode_params(heavy))))
        deadline = time.monotonic() + 60
        while (await first.fetch_statistics()).num_running == 0:  # its prefill has begun
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
        hello = first.tokenizer.encode("Hello")
        outs = await collect(first, hello, params, "live")
        assert len(whole(outs).outputs[0].token_ids) == 40
        total = first.statistics().num_kv_blocks
        stuck.close()
        await all_blocks_free(first, total, within=30)

    asyncio.run(scenario())
