"""Tool-call parsers, found by name through `llmcore.parsers.registry`."""
