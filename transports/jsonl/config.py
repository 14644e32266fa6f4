"""BatchConfig: where a batch reads and writes, and how it runs, in one frozen
value. Invariant: a constructed BatchConfig is valid (positive limits, --resume
only with an output file), so the rest of the transport never re-checks it.
"""

from __future__ import annotations

from dataclasses import dataclass

from transports.jsonl.progress import ProgressMode

MiB = 1024 * 1024
STDIO = "-"


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """A JSON-lines batch job.

    `input`/`output`: file paths; None or "-" for stdin/stdout. `resume`: skip the
    lines whose results `output` already holds and append to it. `ordered`: write
    results in input order (else as they finish). `max_concurrency`: requests in
    the service at once. `reorder_window`: lines read but not yet written at most
    (finished lines wait there for earlier ones); None: 4 x max_concurrency.
    """

    input: str | None = None
    output: str | None = None
    resume: bool = False
    ordered: bool = True
    max_concurrency: int = 256
    reorder_window: int | None = None
    max_line_bytes: int = 32 * MiB
    progress: ProgressMode = ProgressMode.AUTO
    progress_interval: float = 5.0  # seconds between plain progress lines

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {self.max_concurrency}")
        if self.reorder_window is not None and self.reorder_window < self.max_concurrency:
            raise ValueError("reorder_window must be at least max_concurrency")
        if self.max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        if self.progress_interval <= 0:
            raise ValueError("progress_interval must be positive")
        if self.resume and self.output_path is None:
            raise ValueError("--resume needs an output file (-o FILE): it appends to it")

    @property
    def input_path(self) -> str | None:
        """The input file, or None for stdin."""
        return None if self.input in (None, STDIO) else self.input

    @property
    def output_path(self) -> str | None:
        """The output file, or None for stdout."""
        return None if self.output in (None, STDIO) else self.output

    @property
    def window(self) -> int:
        return self.reorder_window or 4 * self.max_concurrency
