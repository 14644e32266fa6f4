"""`python -m llmcore.cli`: the `llmcore` command."""

from __future__ import annotations

import sys

from llmcore.cli import main

sys.exit(main())
