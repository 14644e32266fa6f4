"""Reasoning parsers, found by name through `llmcore.parsers.registry`."""
