# Owns the public face of the JSON-lines batch transport: OpenAI batch-file lines in
# (a file, stdin, a pipe), result lines out, against any object with an async
# `handle(request)`. Invariant: everything a caller needs is importable from here;
# the modules behind it may move; nothing here imports llmcore.
"""The JSON-lines batch transport: `await run_batch(service, BatchConfig(...))`, or
`BatchRunner` for custom sources and writers."""

from __future__ import annotations

from transports.jsonl.config import BatchConfig
from transports.jsonl.job import BatchSetupError, check_files, describe, exit_code, run_batch
from transports.jsonl.lines import ErrorCode
from transports.jsonl.output import FdWriter, LineWriter
from transports.jsonl.progress import BatchCounts, ProgressMode
from transports.jsonl.resume import ResumeError, ResumeState, scan_output
from transports.jsonl.runner import BatchRunner, BatchSummary
from transports.jsonl.service import BatchRequest, RequestFactory, Service
from transports.jsonl.source import ChunkSource, FdSource

__all__ = [
    "BatchConfig",
    "BatchCounts",
    "BatchRequest",
    "BatchRunner",
    "BatchSetupError",
    "BatchSummary",
    "ChunkSource",
    "ErrorCode",
    "FdSource",
    "FdWriter",
    "LineWriter",
    "ProgressMode",
    "RequestFactory",
    "ResumeError",
    "ResumeState",
    "Service",
    "check_files",
    "describe",
    "exit_code",
    "run_batch",
    "scan_output",
]
