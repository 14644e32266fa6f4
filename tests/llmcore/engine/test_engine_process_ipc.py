"""The engine-core process's wire (llmcore/engine/ipc.py) and `ProcessEngine`'s
side of it, without a model: frames and errors round-trip, prompt logprobs cross
once, and against a FAKE core process (tests/llmcore/engine/fake_core.py, no
model) the reader demultiplexes batched step outputs into the right streams,
refusals and step-loop failures arrive as llmcore's errors, aborts reach the
core, a killed core fails every stream at once, and `aclose` fails what is in
flight and reaps the child."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import msgspec
import pytest
import torch

from llmcore.engine import ipc
from llmcore.engine.core import EngineStatistics
from llmcore.engine.core_client import ProcessEngine
from llmcore.engine.core_launch import launch_core
from llmcore.errors import ContextLengthExceededError, EngineDeadError, InvalidRequestError
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.sampling_params import SamplingParams
from llmcore.tokenization.tokenizer import Tokenizer, load_tokenizer
from tests.llmcore.engine.engine_process_checks import kill_core_mid_stream

FAKE = "tests.llmcore.engine.fake_core"


# ---- the codec ---------------------------------------------------------------------------


def test_frames_round_trip_and_eof_is_clean_only_between_frames() -> None:
    a, b = socket.socketpair()
    with a, b:
        ipc.send_frame(a, ipc.Abort("r1"))
        ipc.send_frame(a, ipc.Control(7, "statistics"))
        assert ipc.TO_CORE.decode(ipc.recv_frame(b) or b"") == ipc.Abort("r1")
        assert ipc.TO_CORE.decode(ipc.recv_frame(b) or b"") == ipc.Control(7, "statistics")
        frame = ipc.encode_frame(ipc.Abort("cut"))
        a.sendall(frame[:-2])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError):
            ipc.recv_frame(b)
    c, d = socket.socketpair()
    with c, d:
        c.close()
        assert ipc.recv_frame(d) is None


def test_errors_cross_as_their_class() -> None:
    def cross(exc: BaseException) -> Exception:
        wire = ipc.wire_error(exc)
        return ipc.rebuild_error(msgspec.msgpack.decode(msgspec.msgpack.encode(wire),
                                                        type=ipc.WireError))  # fmt: skip

    bad = cross(InvalidRequestError("temperature: must be >= 0", param="temperature"))
    assert type(bad) is InvalidRequestError and bad.param == "temperature"
    assert bad.message == "temperature: must be >= 0"
    assert type(cross(ContextLengthExceededError("too long"))) is ContextLengthExceededError
    assert type(cross(ValueError("kv_cache_memory"))) is ValueError
    odd = cross(KeyError("x"))
    assert type(odd) is RuntimeError and "KeyError" in str(odd)
    try:
        msgspec.msgpack.decode(msgspec.msgpack.encode({"n": "2"}), type=SamplingParams)
    except msgspec.ValidationError as exc:
        assert type(cross(exc)) is InvalidRequestError


def test_outputs_cross_with_prompt_logprobs_once() -> None:
    sent = ipc.PromptLogprobsSent()
    plp: list[Logprob | None] = [None, Logprob(5, -1.0, 2, [(6, -0.5)])]
    c = CompletionOutput(0, "hi", [7], None, None, [Logprob(7, -0.1, 1, [(7, -0.1)])])
    first = sent.wire_output(RequestOutput("r", [4, 5], [c], prompt_logprobs=plp))
    later = sent.wire_output(RequestOutput("r", [4, 5], [c], finished=True, prompt_logprobs=plp))
    again = sent.wire_output(RequestOutput("r", [4, 5], [c], prompt_logprobs=plp))  # id reused
    assert first.prompt_logprobs == plp and later.prompt_logprobs is None
    assert again.prompt_logprobs == plp
    frame = ipc.encode_frame(ipc.StepOutputs([first], _stats()))
    decoded = ipc.TO_API.decode(frame[ipc.HEADER.size :])
    assert isinstance(decoded, ipc.StepOutputs)
    (out,) = decoded.outputs
    assert isinstance(out, ipc.WireOutput)
    assert out.prompt_logprobs == plp
    assert ipc.completion_of(out.outputs[0]) == c


def test_pooled_vectors_cross_as_float32() -> None:
    vector = torch.randn(384)
    wire = ipc.wire_pooling(PoolingOutput("e", [1, 2], vector))
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(wire), type=ipc.WirePooling)
    assert torch.equal(ipc.pooling_of(back, [1, 2]).data, vector)


def _stats() -> EngineStatistics:
    return EngineStatistics(0, 0, 1, 1, 0.0, 0, 0, 0, 0, 0, 0)


# ---- ProcessEngine against the fake core -------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path) -> Tokenizer:
    """A real tokenizer for the API side's detokenizing (WordPiece, 30522 ids: the
    fake's token ids are words of it)."""
    return load_tokenizer(minilm_dir)


def start_fake(tokenizer: Tokenizer) -> ProcessEngine:
    start = ipc.Start(None, None, "auto", "cpu", None, {}, logging.WARNING, detokenize=False)
    process, sock, ready = launch_core(start, FAKE)
    return ProcessEngine(process, sock, ready.info, tokenizer, ready.statistics)


async def collect(engine: ProcessEngine, prompt: list[int], params: SamplingParams, rid: str
                  ) -> list[RequestOutput]:  # fmt: skip
    return [out async for out in engine.generate(prompt, params, rid)]


def test_streams_are_demultiplexed_and_requests_answered(tokenizer: Tokenizer) -> None:
    async def scenario() -> None:
        engine = start_fake(tokenizer)
        prompts = {f"r{i}": [100 * i + j for j in range(1, 2 + i % 5)] for i in range(24)}
        params = {
            rid: SamplingParams(
                max_tokens=3 + i % 4,
                n=1 + i % 3,
                logprobs=0 if i % 2 else None,
                prompt_logprobs=0 if i % 4 == 0 else None,
            )
            for i, rid in enumerate(prompts)
        }
        results = await asyncio.gather(
            *(collect(engine, prompts[rid], params[rid], rid) for rid in prompts)
        )
        for rid, outs in zip(prompts, results, strict=True):
            p, prompt = params[rid], prompts[rid]
            assert outs[-1].finished and not any(o.finished for o in outs[:-1])
            assert all(o.request_id == rid and o.prompt_token_ids == prompt for o in outs)
            for i in range(p.n):
                ids = [t for o in outs for c in o.outputs if c.index == i for t in c.token_ids]
                want = [prompt[k % len(prompt)] + i for k in range(p.max_tokens or 0)]
                assert ids == want
            if p.prompt_logprobs is not None:  # sent once, attached to every delta
                want_plp = [None, *(Logprob(t, -1.0, 1) for t in prompt[1:])]
                assert all(o.prompt_logprobs == want_plp for o in outs)
            else:
                assert all(o.prompt_logprobs is None for o in outs)
            lps = [c.logprobs for o in outs for c in o.outputs]
            assert all((lp is not None) == (p.logprobs is not None) for lp in lps)
        assert engine.statistics().num_generated_tokens == sum(
            (p.max_tokens or 0) * p.n for p in params.values()
        )
        assert engine.iteration_tokens.num_steps > 0

        with pytest.raises(InvalidRequestError, match="fake refusal") as refused:
            await collect(engine, [1], SamplingParams(stop=["REJECT"]), "bad")
        assert refused.value.param == "stop"
        pooled = await engine.encode([3, 4], PoolingParams(), "e")
        assert pooled.prompt_token_ids == [3, 4] and pooled.data.tolist() == [3.0, 4.0]

        long = engine.generate([9], SamplingParams(max_tokens=100_000), "long")
        await anext(long)
        with pytest.raises(InvalidRequestError, match="already running"):
            await collect(engine, [1], SamplingParams(), "long")
        short = engine.generate([8], SamplingParams(max_tokens=100_000), "short")
        await anext(short)
        assert (await engine.fetch_statistics()).num_running == 2
        await short.aclose()  # closing the stream aborts it in the core
        assert await _eventually(engine, lambda s: s.num_running == 1)
        assert await engine.reset_prefix_cache() is False  # "long" holds blocks
        await engine.check_health()
        await long.aclose()
        assert await _eventually(engine, lambda s: s.num_running == 0)

        # An id reused at once after an abort: the old request's late outputs (its
        # "abort" delta comes a step later) must not reach the new one.
        for _ in range(3):
            old = engine.generate([5], SamplingParams(max_tokens=100_000), "again")
            await anext(old)
            await old.aclose()
            again = await collect(engine, [6], SamplingParams(max_tokens=3), "again")
            assert [t for o in again for c in o.outputs for t in c.token_ids] == [6, 6, 6]
            assert again[-1].outputs[-1].finish_reason == "length"

        in_flight = engine.generate([7], SamplingParams(max_tokens=100_000), "in-flight")
        await anext(in_flight)
        await engine.aclose()
        await engine.aclose()  # twice is harmless
        assert engine.process.returncode == 0  # it exited when asked
        with pytest.raises(EngineDeadError, match="closed"):
            await anext(in_flight)
        with pytest.raises(EngineDeadError, match="closed"):
            await engine.check_health()
        with pytest.raises(EngineDeadError, match="closed"):
            await collect(engine, [1], SamplingParams(), "after")

    asyncio.run(scenario())


def test_stop_strings_end_completions_here_and_abort_them_in_the_core(
    tokenizer: Tokenizer,
) -> None:
    """The core sends ids only: the API side detokenizes, and a stop string it finds
    ends that completion at once (the core's later tokens dropped, the ids and
    logprobs cut after the token that completed it) and aborts that completion, and
    only it, in the core."""
    prompt = tokenizer.encode("the cat sat down", add_special_tokens=False)
    assert len(prompt) == 4

    def texts(outs: list[RequestOutput], index: int) -> tuple[str, list[int], int]:
        mine = [c for o in outs for c in o.outputs if c.index == index]
        lps = sum(len(c.logprobs or []) for c in mine)
        return "".join(c.text for c in mine), [t for c in mine for t in c.token_ids], lps

    async def scenario() -> None:
        engine = start_fake(tokenizer)
        # n=2: completion 0 echoes the prompt and meets "sat"; completion 1 echoes
        # the ids after the prompt's, which spell no "sat", and runs to max_tokens.
        other = tokenizer.decode([t + 1 for t in prompt])
        assert "sat" not in other
        params = SamplingParams(max_tokens=8, n=2, stop=["sat"], logprobs=0)
        outs = await collect(engine, prompt, params, "two")
        assert outs[-1].finished and sum(o.finished for o in outs) == 1
        text0, ids0, lps0 = texts(outs, 0)
        assert ids0 == prompt[:3] and lps0 == 3
        assert text0.strip() == "the cat"
        last0 = [c for o in outs for c in o.outputs if c.index == 0][-1]
        assert (last0.finish_reason, last0.stop_reason) == ("stop", "sat")
        text1, ids1, lps1 = texts(outs, 1)
        assert len(ids1) == lps1 == 8 and "sat" not in text1
        assert outs[-1].outputs[-1].finish_reason == "length"
        assert all(c.finish_reason != "abort" for o in outs for c in o.outputs)
        assert await _eventually(engine, lambda s: s.num_waiting == 1)  # one aborted

        # n=1: the request ends with its stop string, though the core would run on.
        keep = SamplingParams(max_tokens=100_000, stop=["sat"], include_stop_str_in_output=True)
        outs = await collect(engine, prompt, keep, "one")
        text, ids, _ = texts(outs, 0)
        assert ids == prompt[:3] and text.strip() == "the cat sat"
        assert await _eventually(engine, lambda s: s.num_running == 0 and s.num_waiting == 2)
        await engine.aclose()

    asyncio.run(scenario())


async def _eventually(engine: ProcessEngine, check: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check(await engine.fetch_statistics()):  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


def test_a_killed_core_fails_every_stream_at_once(tokenizer: Tokenizer) -> None:
    async def scenario() -> None:
        engine = start_fake(tokenizer)
        params = SamplingParams(max_tokens=100_000)
        await kill_core_mid_stream(engine, [[1], [2], [3]], params, within=3.0)
        with pytest.raises(EngineDeadError):
            await engine.encode([1], PoolingParams(), "e")

    asyncio.run(scenario())


def test_a_core_killed_while_idle_is_seen_by_health(tokenizer: Tokenizer) -> None:
    async def scenario() -> None:
        engine = start_fake(tokenizer)
        engine.process.kill()
        engine.process.wait()
        with pytest.raises(EngineDeadError, match="exited"):
            await engine.check_health()
        with pytest.raises(EngineDeadError):
            await collect(engine, [1], SamplingParams(), "after")
        await engine.aclose()

    asyncio.run(scenario())


def test_a_failed_step_loop_names_its_error(tokenizer: Tokenizer) -> None:
    async def scenario() -> None:
        engine = start_fake(tokenizer)
        running = engine.generate([1], SamplingParams(max_tokens=100_000), "running")
        await anext(running)
        with pytest.raises(EngineDeadError, match="fake step failure"):
            await collect(engine, [2], SamplingParams(stop=["DIE"]), "doomed")
        with pytest.raises(EngineDeadError, match="fake step failure"):
            await anext(running)
        await engine.aclose()
        assert engine.process.returncode == 1

    asyncio.run(scenario())
