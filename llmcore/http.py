"""`python -m llmcore.http [MODEL] [flags]`: the OpenAI-compatible HTTP server, the
same command as `llmcore serve` (see docs/server.md).

This is one of the thin entry points the user asked for: the command lives in
`llmcore.cli.serve`, which imports `transports` inside its functions only.
"""

from __future__ import annotations

import sys

from llmcore.cli.serve import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
