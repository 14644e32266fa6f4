"""The `llmcore` command line.

    llmcore serve     the OpenAI-compatible HTTP server (same as python -m llmcore.http)
    llmcore run-batch OpenAI batch-file JSON lines in, results out (python -m llmcore.jsonl)
    llmcore chat      talk to a model in the terminal (the default: SmolLM2-135M-Instruct)
    llmcore generate  complete one prompt and print the text
    llmcore info      print what llmcore read from a model

`chat` and `generate` are single-sequence and greedy (no engine); `serve` runs
the engine behind the HTTP server. The commands live in `serve`, `run_batch` and
`single_model`, their flags in `flags`, and the building of a served model set in
`service`. Invariant: a bad model or flag is one line `llmcore: error: ...` on
stderr and exit 2; `transports` is imported only inside the serve and run-batch
functions that use it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llmcore.cli import single_model
from llmcore.errors import LLMCoreError


def build_parser() -> argparse.ArgumentParser:
    """The `llmcore` parser; `serve` and `run-batch` parse their own flags."""
    parser = argparse.ArgumentParser(prog="llmcore", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="the OpenAI-compatible HTTP server (see llmcore serve --help)")
    sub.add_parser("run-batch", help="JSON-lines batches (see llmcore run-batch --help)")
    single_model.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # the HTTP server has its own (long) set of flags
        from llmcore.cli.serve import main as serve_main

        return serve_main(argv[1:], prog="llmcore serve")
    if argv[:1] == ["run-batch"]:
        from llmcore.cli.run_batch import main as batch_main

        return batch_main(argv[1:], prog="llmcore run-batch")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LLMCoreError as exc:
        print(f"llmcore: error: {exc.message}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, EOFError):
        return 0
