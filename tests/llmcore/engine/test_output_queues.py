"""`OutputQueues` without an engine: outputs waiting for a reader reach it as one
delta, every token in order; an error after outputs comes after them; a stream
left early aborts its request, and a finished one does not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from llmcore.engine.output_queues import OutputQueues
from llmcore.errors import EngineDeadError
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput


def delta(tokens: dict[int, list[int]], finished: bool = False) -> RequestOutput:
    """One step's delta of completions `index -> new tokens` (text: the ids)."""
    outputs = [
        CompletionOutput(
            index,
            "".join(f"<{t}>" for t in ids),
            list(ids),
            "length" if finished else None,
            logprobs=[Logprob(t, -0.5, 1) for t in ids],
        )
        for index, ids in tokens.items()
    ]
    return RequestOutput("engine", [1, 2], outputs, finished)


async def within(read: Awaitable[RequestOutput]) -> RequestOutput:
    """A read that must come (a stream that waits wrongly fails, not hangs)."""
    return await asyncio.wait_for(read, 5)


def test_outputs_waiting_for_the_reader_come_as_one_delta_in_order() -> None:
    async def scenario() -> list[RequestOutput]:
        aborted: list[str] = []
        queues = OutputQueues(aborted.append)
        engine_id = queues.open("r")
        queues.put(engine_id, delta({0: [5]}))
        stream = queues.stream("r")
        got = [await anext(stream)]  # one waiting: as it came
        for step in ([6, 7], [8]):  # two steps while the reader is away: merged
            queues.put(engine_id, delta({0: step, 1: [step[0] + 100]}))
        got.append(await anext(stream))
        queues.put(engine_id, delta({1: [200]}))
        queues.put(engine_id, delta({0: [9], 1: [201]}, finished=True))
        got.append(await anext(stream))
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        assert aborted == [] and "r" not in queues
        return got

    first, merged, last = asyncio.run(scenario())
    assert first.request_id == merged.request_id == "r"
    assert [c.token_ids for c in first.outputs] == [[5]]
    assert [(c.index, c.token_ids, c.text) for c in merged.outputs] == [
        (0, [6, 7, 8], "<6><7><8>"),
        (1, [106, 108], "<106><108>"),
    ]
    assert [lp.token_id for lp in merged.outputs[0].logprobs or []] == [6, 7, 8]
    assert not merged.finished
    assert last.finished and [(c.index, c.token_ids, c.finish_reason) for c in last.outputs] == [
        (1, [200, 201], "length"),
        (0, [9], "length"),
    ]


def test_an_error_after_outputs_comes_after_them_and_aborts() -> None:
    async def scenario() -> None:
        aborted: list[str] = []
        queues = OutputQueues(aborted.append)
        engine_id = queues.open("r")
        queues.put(engine_id, delta({0: [1]}))
        queues.put(engine_id, delta({0: [2]}))
        queues.fail_all(EngineDeadError("the engine core died"))
        queues.put(engine_id, delta({0: [3]}))  # after the error: never read
        stream = queues.stream("r")
        out = await anext(stream)
        assert out.outputs[0].token_ids == [1, 2]
        with pytest.raises(EngineDeadError):
            await anext(stream)
        assert aborted == [engine_id] and "r" not in queues

    asyncio.run(scenario())


def test_a_stream_interval_holds_deltas_until_they_carry_enough_tokens() -> None:
    """`stream_interval=3`: the first delta at once, then deltas of at least 3 new
    tokens (in some completion), and the end whatever it carries; an error while
    a delta waits comes after it."""

    async def scenario() -> list[list[list[int]]]:
        queues = OutputQueues(lambda engine_id: None, stream_interval=3)
        engine_id = queues.open("r")
        stream = queues.stream("r")
        got = []

        async def feed(*deltas: RequestOutput) -> None:
            for d in deltas:
                await asyncio.sleep(0)  # the reader waits between steps
                queues.put(engine_id, d)

        queues.put(engine_id, delta({0: [1]}))
        got.append(await within(anext(stream)))
        feeder = asyncio.create_task(feed(delta({0: [2]}), delta({1: [50]}), delta({0: [3, 4]})))
        got.append(await within(anext(stream)))  # 2, 3, 4 for completion 0: three
        await feeder
        queues.put(engine_id, delta({0: [5]}))
        queues.put(engine_id, delta({0: [6]}, finished=True))
        got.append(await within(anext(stream)))  # the end: two tokens are enough
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        return [[c.token_ids for c in out.outputs] for out in got]

    assert asyncio.run(scenario()) == [[[1]], [[2, 3, 4], [50]], [[5, 6]]]

    async def failing() -> None:
        queues = OutputQueues(lambda engine_id: None, stream_interval=4)
        engine_id = queues.open("r")
        stream = queues.stream("r")
        queues.put(engine_id, delta({0: [1]}))
        await within(anext(stream))
        queues.put(engine_id, delta({0: [2]}))
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        assert not pending.done()  # one token: it waits for more
        queues.fail_all(EngineDeadError("gone"))
        assert (await pending).outputs[0].token_ids == [2]
        with pytest.raises(EngineDeadError):
            await anext(stream)

    asyncio.run(failing())
    with pytest.raises(ValueError, match="stream_interval"):
        OutputQueues(lambda engine_id: None, stream_interval=0)
