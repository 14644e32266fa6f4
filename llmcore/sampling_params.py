"""`SamplingParams`: how one request is sampled and when it stops.

Names and defaults follow OpenAI's and vLLM's parameters. `validate()` checks
every value against the model (vocabulary size, the configured logprobs cap) and
raises `InvalidRequestError` naming the field: a request with a bad value is
refused before it reaches the engine, never half-run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmcore.errors import InvalidRequestError
from llmcore.structured_outputs.params import StructuredOutputsParams

DEFAULT_MAX_LOGPROBS = 20


@dataclass(slots=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: all tokens
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    max_tokens: int | None = 16  # None: the rest of the context
    seed: int | None = None
    logprobs: int | None = None  # top-k logprobs per sampled token (0 = the sampled one only)
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None  # the output must match it

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int, max_logprobs: int = DEFAULT_MAX_LOGPROBS) -> None:
        """Raise InvalidRequestError naming the first field whose value is invalid."""
        _check(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        _check(_finite(self.temperature) and self.temperature >= 0, "temperature",
               f"must be >= 0, got {self.temperature}")  # fmt: skip
        _check(_finite(self.top_p) and 0 < self.top_p <= 1, "top_p",
               f"must be in (0, 1], got {self.top_p}")  # fmt: skip
        _check(self.top_k >= -1, "top_k", f"must be -1, 0 (disabled) or positive, got {self.top_k}")
        _check(_finite(self.min_p) and 0 <= self.min_p <= 1, "min_p",
               f"must be in [0, 1], got {self.min_p}")  # fmt: skip
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_finite(value) and -2 <= value <= 2, name, f"must be in [-2, 2], got {value}")
        _check(_finite(self.repetition_penalty) and self.repetition_penalty > 0,
               "repetition_penalty", f"must be > 0, got {self.repetition_penalty}")  # fmt: skip
        _check(self.min_tokens >= 0, "min_tokens", f"must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None:
            _check(self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens}")
            _check(self.min_tokens <= self.max_tokens, "min_tokens",
                   f"{self.min_tokens} exceeds max_tokens ({self.max_tokens})")  # fmt: skip
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                _check(0 <= value <= max_logprobs, name,
                       f"must be in [0, {max_logprobs}], got {value}")  # fmt: skip
        for token_id, bias in (self.logit_bias or {}).items():
            _check(0 <= token_id < vocab_size, "logit_bias",
                   f"token id {token_id} is not in the vocabulary [0, {vocab_size})")  # fmt: skip
            _check(_finite(bias) and -100 <= bias <= 100, "logit_bias",
                   f"bias for token {token_id} must be in [-100, 100], got {bias}")  # fmt: skip
        if self.allowed_token_ids is not None:
            _check(bool(self.allowed_token_ids), "allowed_token_ids", "must not be empty")
            bad = [t for t in self.allowed_token_ids if not 0 <= t < vocab_size]
            _check(not bad, "allowed_token_ids", f"ids outside the vocabulary: {bad[:5]}")
        bad_stop = [t for t in self.stop_token_ids if not 0 <= t < vocab_size]
        _check(not bad_stop, "stop_token_ids", f"ids outside the vocabulary: {bad_stop[:5]}")
        _check(all(self.stop), "stop", "stop strings must not be empty")
        if self.structured_outputs is not None:
            self.structured_outputs.validate()


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise InvalidRequestError(f"{param}: {message}", param=param)
