"""Structured outputs: constraints on what a request may generate (JSON Schema, JSON
object, regex, choice, grammar, structural tags), enforced token by token.

`StructuredOutputsParams` is the in-process API (`SamplingParams(structured_outputs=...)`);
the engine compiles it with a grammar backend (llguidance) and masks the logits of
each step before sampling. Importing this package does not import llguidance.
"""

from __future__ import annotations

from llmcore.structured_outputs.params import ConstraintKind, StructuredOutputsParams

__all__ = ["ConstraintKind", "StructuredOutputsParams"]
