"""Structured outputs: constraints on what a request may generate (JSON Schema, JSON
object, regex, choice, grammar, structural tags), enforced token by token.

`StructuredOutputsParams` is the in-process API (`SamplingParams(structured_outputs=...)`);
the engine compiles it with a grammar backend (llguidance) and masks the logits of
each step before sampling. Importing this package does not import llguidance.
"""

from __future__ import annotations

from typing import Any

from llmcore.structured_outputs.params import ConstraintKind, StructuredOutputsParams


def json_schema_error(schema: dict[str, Any]) -> str | None:
    """Why the grammar backend cannot compile the JSON Schema `schema` (None: it can)."""
    from llmcore.structured_outputs.llguidance_backend import json_schema_error as check

    return check(schema)


__all__ = ["ConstraintKind", "StructuredOutputsParams", "json_schema_error"]
