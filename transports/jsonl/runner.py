"""One batch run: read lines as they arrive, submit each to the service with a
bounded number in flight, and hand every outcome to the output queue. Invariants:
at most `max_concurrency` requests are in the service and at most `window` lines
are read but not yet written (reading waits, so memory stays bounded whatever the
input size); every line read (blank and already-done lines aside) gets exactly one
output line unless the run is stopped; `stop()` cancels reading and the requests
in flight (which aborts them in the engine), and whatever was queued for writing
is still written.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from transports.jsonl.lines import (
    ErrorCode,
    Job,
    LineError,
    Result,
    encode_error,
    encode_result,
    new_id,
    parse_line,
    read_answer,
)
from transports.jsonl.output import LineWriter, Outcome, OutputLine, OutputQueue
from transports.jsonl.progress import BatchCounts, ProgressSnapshot
from transports.jsonl.resume import ResumeState
from transports.jsonl.source import ChunkSource, RawLine, read_lines
from transports.service import (
    RequestFactory,
    Service,
    TransportRequest,
    close_unread,
    is_stream,
)

logger = logging.getLogger("llmcore.jsonl")

JSON_HEADERS: list[tuple[str, str]] = [("content-type", "application/json")]


@dataclass(frozen=True, slots=True)
class BatchSummary:
    counts: BatchCounts  # an earlier run's lines included (--resume)
    previous: int  # lines an earlier run wrote
    skipped: int  # input lines not run because the output already had them
    elapsed: float  # seconds
    stopped: str | None  # why the run stopped early (None: it read to the end)
    unwritten: int  # finished lines dropped at a stop because earlier ones were not done
    output_error: OSError | None  # the output could not be written
    signal: int | None = None  # the signal that stopped the run


class BatchRunner:
    """`summary = await runner.run(source)`; `runner.stop(reason)` from another task."""

    def __init__(
        self,
        service: Service,
        writer: LineWriter,
        *,
        request_factory: RequestFactory = TransportRequest,
        ordered: bool = True,
        max_concurrency: int = 256,
        window: int | None = None,
        max_line_bytes: int = 32 << 20,
        done: ResumeState | None = None,
        expected_lines: int | None = None,
    ) -> None:
        self._service = service
        self._factory = request_factory
        self._max_line_bytes = max_line_bytes
        self._in_flight = anyio.Semaphore(max_concurrency)
        self._window = anyio.Semaphore(max(window or 4 * max_concurrency, max_concurrency))
        self._done = done or ResumeState()
        self._output = OutputQueue(writer, ordered=ordered, on_written=self._written)
        self._counts = dataclasses.replace(self._done.counts, completion_tokens=0)
        self._previous = self._done.counts.lines
        self._expected = expected_lines  # non-blank input lines, if known in advance
        self._seen: set[str] = set()  # custom ids read
        self._read = 0  # lines given an output line in this run
        self._skipped = 0
        self._eof = False
        self._started = time.monotonic()
        self._scope = anyio.CancelScope()
        self._stopped: str | None = None

    # -- public -------------------------------------------------------------------------

    async def run(self, source: ChunkSource) -> BatchSummary:
        self._started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._output.run, self._output_failed)
            try:
                with self._scope:
                    async with anyio.create_task_group() as jobs:
                        await self._read_all(source, jobs)
            finally:
                self._output.close()  # the writer drains what is queued, then returns
        return self.summary()

    def stop(self, reason: str) -> None:
        """Stop reading and cancel the requests in flight; queued lines are written."""
        if self._stopped is None:
            self._stopped = reason
        self._scope.cancel()

    def snapshot(self) -> ProgressSnapshot:
        total = self._previous + self._read if self._eof else self._expected
        elapsed = time.monotonic() - self._started
        return ProgressSnapshot(self._counts, self._previous, total, elapsed)

    def summary(self) -> BatchSummary:
        return BatchSummary(
            counts=self._counts,
            previous=self._previous,
            skipped=self._skipped,
            elapsed=time.monotonic() - self._started,
            stopped=self._stopped,
            unwritten=self._output.waiting,
            output_error=self._output.failure,
        )

    # -- reading and submitting ---------------------------------------------------------

    async def _read_all(self, source: ChunkSource, jobs: TaskGroup) -> None:
        async for raw in read_lines(source, self._max_line_bytes):
            item = self._check(raw)
            if item is None:
                continue
            await self._window.acquire()  # released when the line is written
            seq = self._read
            self._read += 1
            if isinstance(item, LineError):
                self._output.put(seq, _error_line(item))
                continue
            await self._in_flight.acquire()  # released when the service answers
            jobs.start_soon(self._execute, seq, item)
        self._eof = True

    def _check(self, raw: RawLine) -> Job | LineError | None:
        """The line's job or error; None for a blank or an already-done line."""
        if raw.data is None:
            message = f"the line is longer than {self._max_line_bytes} bytes"
            item: Job | LineError = LineError(raw.number, None, ErrorCode.LINE_TOO_LONG, message)
        elif not raw.data.strip():
            return None
        else:
            item = parse_line(raw.number, raw.data)
        if self._done.is_done(item.custom_id, item.line):
            self._skipped += 1
            return None
        if item.custom_id is None:
            return item
        if item.custom_id in self._seen:
            message = f"custom_id {item.custom_id!r} was already used in this batch"
            return LineError(item.line, item.custom_id, ErrorCode.DUPLICATE_CUSTOM_ID, message)
        self._seen.add(item.custom_id)
        return item

    async def _execute(self, seq: int, job: Job) -> None:
        request_id = new_id()
        try:
            outcome = await self._ask(job, request_id)
        finally:
            self._in_flight.release()
        if isinstance(outcome, LineError):
            self._output.put(seq, _error_line(outcome))
        else:
            self._output.put(seq, _result_line(request_id, outcome))

    async def _ask(self, job: Job, request_id: str) -> Result | LineError:
        request = self._factory("POST", job.url, list(JSON_HEADERS), job.body, request_id)
        try:
            answer = await self._service.handle(request)
        except Exception as exc:  # the service's contract says it never raises
            logger.error("the service raised on line %d", job.line, exc_info=exc)
            message = f"the service failed: {type(exc).__name__}"
            return LineError(job.line, job.custom_id, ErrorCode.INTERNAL_ERROR, message)
        if is_stream(answer):
            await close_unread(answer)
            message = "the service answered with a stream; streaming is not supported"
            return LineError(job.line, job.custom_id, ErrorCode.STREAM_UNSUPPORTED, message)
        return read_answer(job, request_id, answer)

    # -- the output's callbacks ---------------------------------------------------------

    def _written(self, lines: Sequence[OutputLine]) -> None:
        c = self._counts
        for line in lines:
            c.lines += 1
            c.completion_tokens += line.completion_tokens
            if line.outcome is Outcome.OK:
                c.ok += 1
            elif line.outcome is Outcome.ERROR_RESPONSE:
                c.error_responses += 1
            else:
                c.invalid_lines += 1
            self._window.release()

    def _output_failed(self, exc: OSError) -> None:
        self.stop(f"the output failed: {exc}")


def _error_line(error: LineError) -> OutputLine:
    return OutputLine(encode_error(new_id(), error), Outcome.INVALID_LINE)


def _result_line(request_id: str, result: Result) -> OutputLine:
    outcome = Outcome.OK if result.ok else Outcome.ERROR_RESPONSE
    return OutputLine(encode_result(request_id, result), outcome, result.completion_tokens)
