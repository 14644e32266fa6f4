"""`python -m llmcore.jsonl [MODEL] -i FILE -o FILE`: run an OpenAI batch file through
the OpenAI service, the same command as `llmcore run-batch` (see docs/ways-in.md).

This is one of the thin entry points the user asked for: the command lives in
`llmcore.cli.run_batch`, which imports `transports` inside its functions only.
"""

from __future__ import annotations

import sys

from llmcore.cli.run_batch import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
