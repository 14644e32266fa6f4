"""`--resume`: reading what an earlier run of the same batch already wrote.
Invariants: after `scan_output` the file ends with a complete line (a partial last
line, left by a run killed mid-write, is truncated away), so appending to it is
safe; a line counts as done if its `custom_id` is in the file, or, for a line with
no usable custom_id, if an error line names its line number; a complete line that
is not a batch output line stops the resume (the file is not what we think).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import msgspec

from transports.jsonl.progress import BatchCounts


class ResumeError(Exception):
    """The output file cannot be resumed."""


@dataclass(slots=True)
class ResumeState:
    custom_ids: set[str] = field(default_factory=set)
    error_lines: set[int] = field(default_factory=set)  # of error lines with no custom_id
    counts: BatchCounts = field(default_factory=BatchCounts)
    truncated_bytes: int = 0  # the partial last line removed

    def is_done(self, custom_id: str | None, line: int) -> bool:
        if custom_id is not None:
            return custom_id in self.custom_ids
        return line in self.error_lines


class _DoneResponse(msgspec.Struct):
    status_code: int


class _DoneError(msgspec.Struct):
    line: int | None = None


class _DoneLine(msgspec.Struct):
    custom_id: str | None = None
    response: _DoneResponse | None = None
    error: _DoneError | None = None


_DONE = msgspec.json.Decoder(_DoneLine)


def scan_output(path: str | os.PathLike[str]) -> ResumeState:
    """What `path` already holds (nothing if it does not exist). Blocking: run it in
    a worker thread from async code."""
    state = ResumeState()
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return state
    with f:
        complete = 0  # bytes of complete lines
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                state.truncated_bytes = len(line)
                f.truncate(complete)
                break
            complete += len(line)
            if line.strip():
                _record(state, _decode(line, number, path))
    return state


def _decode(line: bytes, number: int, path: str | os.PathLike[str]) -> _DoneLine:
    try:
        done = _DONE.decode(line)
    except msgspec.DecodeError as exc:
        raise ResumeError(f"{os.fspath(path)}:{number} is not a batch output line: {exc}") from exc
    if (done.response is None) == (done.error is None):
        raise ResumeError(
            f"{os.fspath(path)}:{number} is not a batch output line: it needs exactly one "
            "of response and error"
        )
    return done


def _record(state: ResumeState, done: _DoneLine) -> None:
    counts = state.counts
    counts.lines += 1
    if done.custom_id is not None:
        state.custom_ids.add(done.custom_id)
    if done.response is not None:
        if 200 <= done.response.status_code < 300:
            counts.ok += 1
        else:
            counts.error_responses += 1
        return
    counts.invalid_lines += 1
    if done.custom_id is None and done.error is not None and done.error.line is not None:
        state.error_lines.add(done.error.line)
