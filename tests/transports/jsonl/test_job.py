"""`run_batch` with real files: the output file, exit codes, --resume (including a
partial last line left by a killed run), progress on a non-terminal and a terminal,
SIGINT; and the `python -m llmcore.jsonl` command line up to loading a model."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from transports.jsonl import (
    BatchConfig,
    BatchSetupError,
    ProgressMode,
    exit_code,
    run_batch,
    scan_output,
)
from transports.jsonl.progress import BatchCounts, ProgressReporter, ProgressSnapshot, render_bar

if TYPE_CHECKING:
    from conftest import FakeService

Line = Any


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def _records(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(x) for x in data.splitlines()]


async def _run(fake: FakeService, stderr: io.StringIO | None = None, **options: Any) -> Any:
    config = BatchConfig(**{"progress": ProgressMode.OFF, **options})
    return await run_batch(fake, config, stderr=stderr or io.StringIO(), handle_signals=False)


@pytest.mark.anyio
async def test_a_file_batch_overwrites_the_output(
    fake: FakeService, line: Line, tmp_path: Path
) -> None:
    source = _write(tmp_path / "in.jsonl", [line(f"r{i}") for i in range(5)])
    out = tmp_path / "out.jsonl"
    out.write_text("old contents\n")
    summary = await _run(fake, input=str(source), output=str(out))
    assert [r["custom_id"] for r in _records(out)] == [f"r{i}" for i in range(5)]
    assert exit_code(summary) == 0


@pytest.mark.anyio
async def test_resume_skips_done_lines_and_drops_a_partial_last_line(
    fake: FakeService, line: Line, tmp_path: Path
) -> None:
    lines = [line("a"), b"{broken\n", line("b"), line("c"), line("d", method="GET"), line("e")]
    source = _write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    await _run(fake, input=str(source), output=str(out))
    full = out.read_bytes().splitlines(keepends=True)
    # a run killed after writing "a" and the error line for line 2, mid-way through "b"
    out.write_bytes(b"".join(full[:2]) + full[2][:25])
    fake.requests.clear()

    summary = await _run(fake, input=str(source), output=str(out), resume=True)
    records = _records(out)
    assert [r["custom_id"] for r in records] == ["a", None, "b", "c", "d", "e"]
    assert records[:2] == [json.loads(x) for x in full[:2]]  # kept as they were
    assert [r.request_id for r in fake.requests] == [r["id"] for r in records if r["response"]][1:]
    assert (summary.previous, summary.skipped) == (2, 2)
    c = summary.counts
    assert (c.lines, c.ok, c.invalid_lines) == (6, 4, 2)
    assert exit_code(summary) == 1

    again = await _run(fake, input=str(source), output=str(out), resume=True)
    assert _records(out) == records  # nothing left to do
    assert (again.previous, again.skipped, again.counts.lines) == (6, 6, 6)


def test_scan_output_truncates_only_a_partial_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    good = b'{"id": "x", "custom_id": "a", "response": {"status_code": 200}, "error": null}\n'
    partial = b'{"id": "y", "cust'
    out.write_bytes(good + partial)
    state = scan_output(out)
    assert out.read_bytes() == good
    assert (state.custom_ids, state.truncated_bytes, state.counts.ok) == ({"a"}, len(partial), 1)
    assert scan_output(tmp_path / "missing.jsonl").counts.lines == 0


@pytest.mark.anyio
async def test_resume_refuses_a_file_that_is_not_a_batch_output(
    fake: FakeService, line: Line, tmp_path: Path
) -> None:
    source = _write(tmp_path / "in.jsonl", [line("a")])
    out = tmp_path / "out.jsonl"
    out.write_text('{"hello": "world"}\n')
    with pytest.raises(BatchSetupError, match=r"out.jsonl:1 is not a batch output line"):
        await _run(fake, input=str(source), output=str(out), resume=True)
    assert out.read_text() == '{"hello": "world"}\n'


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="--resume needs an output file"):
        BatchConfig(resume=True, output="-")
    with pytest.raises(ValueError, match="max_concurrency"):
        BatchConfig(max_concurrency=0)


# -- progress and the summary --------------------------------------------------------------


@pytest.mark.anyio
async def test_progress_lines_when_stderr_is_not_a_terminal(
    fake: FakeService, line: Line, tmp_path: Path
) -> None:
    source = _write(tmp_path / "in.jsonl", [line(f"r{i}", {"sleep": 0.03}) for i in range(8)])
    stderr = io.StringIO()
    summary = await _run(fake, stderr, input=str(source), output=str(tmp_path / "o.jsonl"),
                         progress=ProgressMode.AUTO, progress_interval=0.05,
                         max_concurrency=1)  # fmt: skip
    text = stderr.getvalue().splitlines()
    progress = [t for t in text if t.startswith("llmcore batch: ") and "/8 lines (" in t]
    assert len(progress) >= 2, text
    assert "tok/s, ETA " in progress[0]
    assert "\r" not in stderr.getvalue()
    assert text[-1].startswith("llmcore batch: 8 lines, 8 ok, 0 errors")
    assert exit_code(summary) == 0


@pytest.mark.anyio
async def test_quiet_prints_nothing_unless_lines_failed(
    fake: FakeService, line: Line, tmp_path: Path
) -> None:
    out = str(tmp_path / "o.jsonl")
    stderr = io.StringIO()
    await _run(fake, stderr, input=str(_write(tmp_path / "a", [line("a")])), output=out)
    assert stderr.getvalue() == ""
    await _run(fake, stderr, input=str(_write(tmp_path / "b", [b"nope\n"])), output=out)
    assert stderr.getvalue() == (
        "llmcore batch: 1 lines, 0 ok, 1 errors (1 not executed, 0 error responses) "
        "in " + stderr.getvalue().split(" in ", 1)[1]
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.anyio
async def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    stream = _Terminal()
    reporter = ProgressReporter(stream, ProgressMode.AUTO)
    assert reporter.mode is ProgressMode.BAR
    snap = ProgressSnapshot(BatchCounts(lines=30, ok=29, invalid_lines=1, completion_tokens=600),
                            previous=0, total=120, elapsed=3.0)  # fmt: skip
    with anyio.move_on_after(0.6):
        await reporter.run(lambda: snap)
    reporter.finish(snap)
    out = stream.getvalue()
    assert out.startswith("\r\x1b[K[######")
    assert out.endswith("30/120 lines  1 errors  200 tok/s  ETA 0:09\n")
    assert render_bar(ProgressSnapshot(BatchCounts(lines=4), 0, None, 1.0)).startswith("4 lines")


# -- signals -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sigint_stops_cleanly_after_writing_what_is_done(
    fake: FakeService, line: Line, tmp_path: Path
) -> None:
    lines = [line("done"), line("slow", {"gate": "never"}), line("after")]
    source = _write(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    stderr = io.StringIO()
    config = BatchConfig(input=str(source), output=str(out), progress=ProgressMode.OFF)

    async def interrupt() -> None:
        with anyio.fail_after(5):
            while len(fake.requests) < 3 or not out.read_bytes():
                await anyio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    async with anyio.create_task_group() as tg:
        tg.start_soon(interrupt)
        summary = await run_batch(fake, config, stderr=stderr)
    assert [r["custom_id"] for r in _records(out)] == ["done"]
    assert (summary.signal, summary.stopped, summary.unwritten) == (signal.SIGINT, "SIGINT", 1)
    assert exit_code(summary) == 130
    assert fake.cancelled == [fake.requests[1].request_id]
    message = stderr.getvalue()
    assert "stopped (SIGINT); 1 finished lines waiting for earlier ones were not written" in message
    assert "rerun with --resume to finish" in message


# -- the command line -----------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`python -m llmcore.jsonl ARGS` in this process: (exit code, stderr)."""
    from llmcore.jsonl import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_cli_usage_errors_exit_2_before_loading_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.jsonl"
    code, err = _cli(capsys, "-i", str(missing))
    assert (code, err) == (2, f"llmcore: error: cannot read the input file {missing}\n")
    code, err = _cli(capsys, "--resume")
    assert (code, err) == (2, "llmcore: error: --resume needs an output file (-o FILE): "
                              "it appends to it\n")  # fmt: skip
    code, err = _cli(capsys, "--max-concurrency", "many")
    assert code == 2 and "invalid int value: 'many'" in err
    same = tmp_path / "batch.jsonl"
    same.write_text("")
    code, err = _cli(capsys, "-i", str(same), "-o", str(same))
    assert code == 2 and "is the input file" in err


def test_cli_help_lists_batch_and_model_flags_but_not_network_ones() -> None:
    from llmcore.cli.run_batch import build_batch_parser

    text = build_batch_parser().format_help()
    for flag in ("--input", "--output", "--resume", "--unordered", "--max-concurrency",
                 "--quiet", "--kv-cache-memory", "--max-num-seqs", "--dtype"):  # fmt: skip
        assert flag in text
    for flag in ("--port", "--uds", "--api-key", "--max-connections"):
        assert flag not in text
    args = build_batch_parser().parse_args(["m.gguf", "-i", "x", "--port", "9"])
    assert (args.model, args.input, args.output, args.max_concurrency) == ("m.gguf", "x", "-", 256)


def test_the_transport_does_not_import_llmcore() -> None:
    import ast

    root = Path(__file__).resolve().parents[3] / "transports" / "jsonl"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] == "llmcore"], path


# -- pipe mode over the process's stdin and stdout ----------------------------------------------

ECHO_PROCESS = """
import json, sys
import anyio
from transports.jsonl import BatchConfig, ProgressMode, exit_code, run_batch

class Answer:
    def __init__(self, body):
        self.status, self.body, self.content_type, self.headers = 200, body, "application/json", []

class EchoService:
    async def handle(self, request):
        return Answer(json.dumps({"echo": json.loads(request.body)}).encode())

summary = anyio.run(run_batch, EchoService(), BatchConfig(progress=ProgressMode.OFF))
sys.exit(exit_code(summary))
"""


def test_a_co_process_gets_each_answer_before_sending_the_next_line(line: Line) -> None:
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen([sys.executable, "-c", ECHO_PROCESS], cwd=root,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for i in range(3):
            proc.stdin.write(line(f"q{i}", {"n": i}))
            proc.stdin.flush()  # and keep the pipe open
            record = json.loads(proc.stdout.readline())
            assert record["custom_id"] == f"q{i}"
            assert record["response"]["body"] == {"echo": {"n": i}}
        proc.stdin.close()
        assert proc.stdout.read() == b""
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
