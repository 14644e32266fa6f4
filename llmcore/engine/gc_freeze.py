"""`freeze_startup_objects`: what start-up built is moved out of the garbage
collector's reach.

A serving process allocates a great many objects once (the model's modules, the
tokenizer's tables, the chat templates, imported modules) and keeps them for its
life. Every full collection walks them all again, and the steady stream of small
objects per streamed token (outputs, SSE chunks, msgpack frames) triggers
collections often. `gc.freeze()` (Python 3.7+) moves every object alive now into a
permanent generation the collector ignores, as vLLM does after start-up; objects
made later are collected as usual. Measured on the HTTP server at 256 concurrent
streams of 128 tokens (tiny model, engine process, four alternating runs each):
CPU per streamed token 54-62 -> 45-49 us in the API process, 93-108 -> 86-89 us
in the engine-core process.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect once, then freeze what survives (call when start-up is over)."""
    gc.collect()
    gc.freeze()
