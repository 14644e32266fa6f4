"""A batch job as the command line runs it: open the input and output (stdin and
stdout, or files), resume from an earlier output, report progress, stop cleanly on
SIGINT/SIGTERM, and say how it went (a summary and an exit code). Invariants: the
output file is opened in append mode, so each line lands whole at its end;
without --resume it is truncated first; with --resume nothing already in it is
rewritten; descriptors this module opens are closed before it returns.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TextIO

import anyio

from transports.jsonl.config import BatchConfig
from transports.jsonl.output import FdWriter
from transports.jsonl.progress import ProgressMode, ProgressReporter
from transports.jsonl.resume import ResumeError, ResumeState, scan_output
from transports.jsonl.runner import BatchRunner, BatchSummary
from transports.jsonl.source import FdSource
from transports.service import RequestFactory, Service, TransportRequest

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STDIN_FD, STDOUT_FD = 0, 1


class BatchSetupError(Exception):
    """The job cannot start: an unreadable input, an unwritable or foreign output."""


def check_files(config: BatchConfig) -> None:
    """Fail fast (before a model is loaded) on paths that cannot work."""
    if config.input_path is not None and not os.access(config.input_path, os.R_OK):
        raise BatchSetupError(f"cannot read the input file {config.input_path}")
    out = config.output_path
    if out is None:
        return
    target = out if os.path.exists(out) else (os.path.dirname(out) or ".")
    if not os.access(target, os.W_OK):
        raise BatchSetupError(f"cannot write the output file {out}")
    if config.input_path is not None and os.path.exists(out):
        if os.path.samefile(config.input_path, out):
            raise BatchSetupError(f"the output file {out} is the input file")


async def run_batch(
    service: Service,
    config: BatchConfig,
    *,
    request_factory: RequestFactory = TransportRequest,
    stderr: TextIO | None = None,
    handle_signals: bool = True,
) -> BatchSummary:
    """Run the job; progress and the summary go to `stderr` (sys.stderr). Raises
    BatchSetupError if the files cannot be opened or the output not resumed."""
    stderr = stderr or sys.stderr
    done = await _resume_state(config)
    expected = await _count_lines(config) if config.progress is not ProgressMode.OFF else None
    progress = ProgressReporter(stderr, config.progress, config.progress_interval)
    with _opened(config) as (input_fd, output_fd):
        runner = BatchRunner(
            service,
            FdWriter(output_fd),
            request_factory=request_factory,
            ordered=config.ordered,
            max_concurrency=config.max_concurrency,
            window=config.window,
            max_line_bytes=config.max_line_bytes,
            done=done,
            expected_lines=expected,
        )
        summary, signum = await _run(runner, FdSource(input_fd), progress, handle_signals)
    summary = dataclasses.replace(summary, signal=signum)
    progress.finish(runner.snapshot())
    if config.progress is not ProgressMode.OFF or exit_code(summary) != 0:
        print(describe(summary, resumable=config.output_path is not None), file=stderr, flush=True)
    return summary


async def _run(
    runner: BatchRunner, source: FdSource, progress: ProgressReporter, handle_signals: bool
) -> tuple[BatchSummary, int | None]:
    received: list[int] = []

    async def watch(signals: AsyncIterator[int] | None) -> None:
        if signals is None:
            return
        async for signum in signals:
            received.append(signum)
            runner.stop(signal.Signals(signum).name)

    with _signal_receiver(handle_signals) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, signals)
            tg.start_soon(progress.run, runner.snapshot)
            summary = await runner.run(source)
            tg.cancel_scope.cancel()
    return summary, (received[0] if received else None)


@contextmanager
def _signal_receiver(enabled: bool) -> Iterator[AsyncIterator[int] | None]:
    if not enabled:
        yield None
        return
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        yield signals


async def _resume_state(config: BatchConfig) -> ResumeState | None:
    if not config.resume or config.output_path is None:
        return None
    try:
        return await anyio.to_thread.run_sync(scan_output, config.output_path)
    except (ResumeError, OSError) as exc:
        raise BatchSetupError(f"cannot resume: {exc}") from exc


async def _count_lines(config: BatchConfig) -> int | None:
    """Non-blank lines of a regular input file (for the progress total), else None."""
    path = config.input_path
    if path is None or not os.path.isfile(path):
        return None

    def count() -> int:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())

    return await anyio.to_thread.run_sync(count)


@contextmanager
def _opened(config: BatchConfig) -> Iterator[tuple[int, int]]:
    opened: list[int] = []
    try:
        if config.input_path is None:
            input_fd = STDIN_FD
        else:
            input_fd = _open(config.input_path, os.O_RDONLY, opened)
        if config.output_path is None:
            if sys.stdout is not None:
                sys.stdout.flush()  # lines go to the descriptor, under sys.stdout
            output_fd = STDOUT_FD
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if config.resume else os.O_TRUNC)
            output_fd = _open(config.output_path, flags, opened)
        yield input_fd, output_fd
    finally:
        for fd in opened:
            os.close(fd)


def _open(path: str | None, flags: int, opened: list[int]) -> int:
    assert path is not None
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise BatchSetupError(f"cannot open {path}: {exc.strerror}") from exc
    opened.append(fd)
    return fd


def exit_code(summary: BatchSummary) -> int:
    """0: every line answered with a 2xx; 1: some lines are errors, or the output
    failed; 128 + N: stopped by signal N (rerun with --resume to finish)."""
    if summary.output_error is not None:
        return 1
    if summary.signal is not None:
        return 128 + summary.signal
    return 1 if summary.counts.errors else 0


def describe(summary: BatchSummary, *, resumable: bool = True) -> str:
    """The summary for stderr; `resumable`: the output is a file --resume can continue."""
    c = summary.counts
    rate = c.completion_tokens / summary.elapsed if summary.elapsed > 0 else 0.0
    text = (
        f"llmcore batch: {c.lines} lines, {c.ok} ok, {c.errors} errors "
        f"({c.invalid_lines} not executed, {c.error_responses} error responses) "
        f"in {summary.elapsed:.1f} s, {rate:.0f} tok/s"
    )
    if summary.previous:
        text += f"; {summary.previous} lines from an earlier run"
    if summary.stopped is not None:
        text += f"\nllmcore batch: stopped ({summary.stopped})"
        if summary.unwritten:
            text += (
                f"; {summary.unwritten} finished lines waiting for earlier ones were not written"
            )
        text += "; rerun with --resume to finish" if resumable else ""
    return text
