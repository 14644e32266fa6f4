"""BatchRunner against FakeService: input order or completion order, bounded
concurrency and read-ahead, one output line per input line (error lines with their
line numbers), stopping, and answers arriving while the input is still open."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from transports.jsonl import ResumeState, TransportRequest, exit_code
from transports.jsonl.source import FdSource

if TYPE_CHECKING:
    from conftest import Batch

pytestmark = pytest.mark.anyio

Line = Any  # the `line` fixture: request_line(custom_id, body=None, url=..., method=...)


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


def _ids(records: list[dict[str, Any]]) -> list[str | None]:
    return [r["custom_id"] for r in records]


async def test_results_are_written_in_input_order(batch: Batch, line: Line) -> None:
    lines = [line("a", {"gate": "a"}), line("b", {}), line("c", {"gate": "c"})]
    async with anyio.create_task_group() as tg:
        tg.start_soon(batch.run, lines)
        await _until(lambda: len(batch.fake.requests) == 3 and batch.fake.in_flight == 2)
        await anyio.sleep(0.02)
        assert batch.writer.lines == []  # "b" is done but waits for "a"
        batch.fake.open("c")
        await anyio.sleep(0.02)
        assert batch.writer.lines == []
        batch.fake.open("a")
    assert _ids(batch.records) == ["a", "b", "c"]
    assert batch.writer.writes == [3]  # the contiguous run went out together


async def test_unordered_writes_lines_as_they_finish(batch: Batch, line: Line) -> None:
    lines = [line("a", {"gate": "a"}), line("b", {}), line("c", {"gate": "c"})]
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: batch.run(lines, ordered=False))
        await batch.writer.wait_for(1)
        batch.fake.open("c")
        await batch.writer.wait_for(2)
        batch.fake.open("a")
    assert _ids(batch.records) == ["b", "c", "a"]


async def test_concurrency_is_bounded_and_everything_is_answered(batch: Batch, line: Line) -> None:
    lines = [line(f"r{i}", {"sleep": 0.002 * (i % 5)}) for i in range(60)]
    summary = await batch.run(lines, max_concurrency=4)
    assert batch.fake.most_in_flight == 4
    assert _ids(batch.records) == [f"r{i}" for i in range(60)]
    assert (summary.counts.lines, summary.counts.ok, summary.counts.errors) == (60, 60, 0)
    assert summary.counts.completion_tokens == 180
    assert exit_code(summary) == 0


async def test_reading_stops_at_the_reorder_window(batch: Batch, line: Line) -> None:
    lines = [line("head", {"gate": "head"})] + [line(f"r{i}", {}) for i in range(30)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: batch.run(lines, max_concurrency=2, window=5))
        await _until(lambda: len(batch.fake.requests) == 5)
        await anyio.sleep(0.05)
        assert len(batch.fake.requests) == 5  # 5 lines read, none written: reading waits
        batch.fake.open("head")
    assert _ids(batch.records) == ["head"] + [f"r{i}" for i in range(30)]


async def test_every_bad_line_gets_an_error_line_with_its_number(batch: Batch, line: Line) -> None:
    lines = [
        line("ok1"),
        b"{not json\n",
        b"   \n",  # blank: skipped, but counted as line 3
        b'{"custom_id": "nobody", "method": "POST", "url": "/v1/completions"}\n',
        line("get", method="GET"),
        line("streamed", {"stream": True}),
        line("nowhere", url="/v1/nothing"),
        line("get-only", url="/v1/models"),
        line("ok1"),  # duplicate
        line("ok2"),
    ]
    summary = await batch.run(lines)
    records = batch.records
    assert _ids(records) == ["ok1", None, "nobody", "get", "streamed", "nowhere", "get-only",
                             "ok1", "ok2"]  # fmt: skip
    errors = [(r["error"]["code"], r["error"]["line"]) for r in records if r["error"]]
    assert errors == [
        ("invalid_json_line", 2),
        ("invalid_request_line", 4),
        ("invalid_method", 5),
        ("stream_unsupported", 6),
        ("invalid_url", 7),
        ("invalid_url", 8),
        ("duplicate_custom_id", 9),
    ]
    assert all(r["response"] is None for r in records if r["error"])
    assert records[5]["error"]["message"] == "no route POST /v1/nothing"
    assert [r["response"]["status_code"] for r in records if r["response"]] == [200, 200]
    assert (summary.counts.lines, summary.counts.ok, summary.counts.invalid_lines) == (9, 2, 7)
    assert exit_code(summary) == 1
    assert [r.path for r in batch.fake.requests] == [
        "/v1/chat/completions", "/v1/nothing", "/v1/models", "/v1/chat/completions"]  # fmt: skip


async def test_an_executed_request_with_an_error_status_is_a_response(
    batch: Batch, line: Line
) -> None:
    lines = [line("bad", {"status": 400}), line("model", {"status": 404, "param": "model"})]
    summary = await batch.run(lines)
    for record, status in zip(batch.records, (400, 404), strict=True):
        assert record["error"] is None
        assert record["response"]["status_code"] == status
        assert record["response"]["body"]["error"]["message"] == "bad request"
    assert (summary.counts.ok, summary.counts.error_responses) == (0, 2)
    assert exit_code(summary) == 1


async def test_the_request_handed_to_the_service(batch: Batch, line: Line) -> None:
    seen: list[tuple[Any, ...]] = []

    def factory(*args: Any) -> TransportRequest:
        seen.append(args)
        return TransportRequest(*args)

    await batch.run([line("a", {"prompt": "hi"}, url="/v1/completions")], request_factory=factory)
    method, path, headers, body, request_id = seen[0]
    assert (method, path, headers) == (
        "POST",
        "/v1/completions",
        [("content-type", "application/json")],
    )
    assert json.loads(body) == {"prompt": "hi"}
    (record,) = batch.records
    assert record["id"] == record["response"]["request_id"] == request_id
    assert request_id.startswith("batch_req_") and len(request_id) == len("batch_req_") + 32
    assert record["response"]["body"]["echo"] == {"prompt": "hi"}


async def test_a_service_that_raises_or_streams_gives_error_lines(batch: Batch, line: Line) -> None:
    await batch.run([line("boom", {"raise": True}), line("s", {"answer_stream": True})])
    assert [r["error"]["code"] for r in batch.records] == ["internal_error", "stream_unsupported"]
    assert batch.fake.streams[0].closed


async def test_done_lines_are_skipped(batch: Batch, line: Line) -> None:
    done = ResumeState(custom_ids={"a", "c"}, error_lines={2})
    summary = await batch.run([line("a"), b"{bad\n", line("b"), line("c"), b"[1]\n"], done=done)
    assert _ids(batch.records) == ["b", None]
    assert batch.records[1]["error"]["line"] == 5
    assert summary.skipped == 3


# -- stopping ------------------------------------------------------------------------------


async def test_stop_in_order_keeps_order_and_drops_what_cannot_be_written_yet(
    batch: Batch, line: Line
) -> None:
    lines = [line("w", {}), line("a", {"gate": "a"}), line("b", {}), line("c", {})]
    runner = batch.make_runner()
    for data in lines:
        batch.send.send_nowait(data)  # the input stays open
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch.receive)
        await _until(lambda: batch.fake.in_flight == 1 and len(batch.fake.requests) == 4)
        await batch.writer.wait_for(1)
        runner.stop("test")
    summary = runner.summary()
    assert _ids(batch.records) == ["w"]
    assert (summary.stopped, summary.unwritten, summary.counts.lines) == ("test", 2, 1)
    assert batch.fake.cancelled == [batch.fake.requests[1].request_id]


async def test_stop_unordered_writes_everything_finished(batch: Batch, line: Line) -> None:
    lines = [line("a", {"gate": "a"}), line("b", {}), line("c", {})]
    runner = batch.make_runner(ordered=False)
    for data in lines:
        batch.send.send_nowait(data)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch.receive)
        await batch.writer.wait_for(2)
        runner.stop("test")
    assert sorted(_ids(batch.records)) == ["b", "c"]  # type: ignore[type-var]
    assert runner.summary().unwritten == 0
    assert len(batch.fake.cancelled) == 1


# -- pipe mode ----------------------------------------------------------------------------


async def test_each_answer_arrives_before_the_next_line_is_sent(batch: Batch, line: Line) -> None:
    runner = batch.make_runner()
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run, batch.receive)
        with anyio.fail_after(5):
            for i in range(5):
                await batch.send.send(line(f"q{i}"))
                await batch.writer.wait_for(i + 1)
                assert batch.records[i]["custom_id"] == f"q{i}"
        await batch.send.aclose()  # EOF: the run ends
    assert runner.summary().counts.lines == 5


async def test_a_real_pipe_is_answered_line_by_line(batch: Batch, line: Line) -> None:
    read_fd, write_fd = os.pipe()
    runner = batch.make_runner()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run, FdSource(read_fd))
            with anyio.fail_after(5):
                os.write(write_fd, line("p0")[:10])  # half a line: nothing yet
                await anyio.sleep(0.05)
                assert batch.writer.lines == []
                os.write(write_fd, line("p0")[10:])
                await batch.writer.wait_for(1)
                os.write(write_fd, line("p1") + line("p2"))
                await batch.writer.wait_for(3)
            os.close(write_fd)
            write_fd = -1
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    assert _ids(batch.records) == ["p0", "p1", "p2"]
