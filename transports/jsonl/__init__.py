"""The JSON-lines batch transport: `await run_batch(service, BatchConfig(...))`, or
`BatchRunner` for custom sources and writers.

The public face of the JSON-lines batch transport: OpenAI batch-file lines in
(a file, stdin, a pipe), result lines out, against any object with an async
`handle(request)`. Invariant: everything a caller needs is importable from here;
the modules behind it may move; nothing here imports llmcore.
"""

from __future__ import annotations

from transports.jsonl.config import BatchConfig
from transports.jsonl.job import BatchSetupError, check_files, describe, exit_code, run_batch
from transports.jsonl.lines import ErrorCode
from transports.jsonl.output import FdWriter, LineWriter
from transports.jsonl.progress import BatchCounts, ProgressMode
from transports.jsonl.resume import ResumeError, ResumeState, scan_output
from transports.jsonl.runner import BatchRunner, BatchSummary
from transports.jsonl.source import ChunkSource, FdSource
from transports.service import RequestFactory, Service, TransportRequest

__all__ = [
    "BatchConfig",
    "BatchCounts",
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
    "TransportRequest",
    "check_files",
    "describe",
    "exit_code",
    "run_batch",
    "scan_output",
]
