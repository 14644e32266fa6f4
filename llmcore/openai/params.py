"""From an OpenAI request to `llmcore.SamplingParams`.

Invariant: what leaves here has passed `SamplingParams.validate` against the served
model's vocabulary and the service's logprobs cap, so the engine never sees a bad
value; every refusal names the request field at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

from llmcore.errors import InvalidRequestError
from llmcore.openai.protocol.requests import _GenerationRequest
from llmcore.openai.structured import structured_outputs_of
from llmcore.sampling_params import SamplingParams

# A token id: an optional sign, leading zeros, then at most 18 digits (so `int`
# never meets Python's limit on integer strings; no vocabulary is that large).
_TOKEN_ID = re.compile(r"(-?)0*([0-9]{1,18})")
_T = TypeVar("_T")


@dataclass(slots=True, frozen=True)
class Limits:
    max_logprobs: int = 20
    max_n: int = 128


def check_logprobs(param: str, value: int | None, limits: Limits) -> None:
    if value is not None and not 0 <= value <= limits.max_logprobs:
        raise InvalidRequestError(
            f"{param}: must be in [0, {limits.max_logprobs}], got {value}", param=param
        )


def build_params(
    req: _GenerationRequest,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    prompt_logprobs: int | None,
    limits: Limits,
    vocab_size: int,
) -> SamplingParams:
    """The sampling parameters of `req`; `max_tokens` and the logprob counts are
    resolved by the caller (their names and defaults differ between the two APIs)."""
    n = 1 if req.n is None else req.n
    if n > limits.max_n:
        raise InvalidRequestError(f"n: must be at most {limits.max_n}, got {n}", param="n")
    check_logprobs("prompt_logprobs", req.prompt_logprobs, limits)
    params = SamplingParams(
        n=n,
        temperature=_or(req.temperature, 1.0),
        top_p=_or(req.top_p, 1.0),
        top_k=_or(req.top_k, 0),
        min_p=_or(req.min_p, 0.0),
        presence_penalty=_or(req.presence_penalty, 0.0),
        frequency_penalty=_or(req.frequency_penalty, 0.0),
        repetition_penalty=_or(req.repetition_penalty, 1.0),
        logit_bias=_logit_bias(req.logit_bias),
        allowed_token_ids=req.allowed_token_ids,
        bad_words=req.bad_words,
        min_tokens=_or(req.min_tokens, 0),
        ignore_eos=bool(req.ignore_eos),
        stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
        stop_token_ids=list(req.stop_token_ids or []),
        include_stop_str_in_output=bool(req.include_stop_str_in_output),
        max_tokens=max_tokens,
        seed=req.seed,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        skip_special_tokens=_or(req.skip_special_tokens, True),
        spaces_between_special_tokens=_or(req.spaces_between_special_tokens, True),
        structured_outputs=structured_outputs_of(req),
    )
    params.validate(vocab_size, limits.max_logprobs)
    return params


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    """JSON object keys are strings: each must spell a token id."""
    if bias is None:
        return None
    out: dict[int, float] = {}
    for key, value in bias.items():
        match = _TOKEN_ID.fullmatch(key)
        if match is None:
            shown = key if len(key) <= 40 else key[:40] + "..."
            raise InvalidRequestError(
                f"logit_bias: key {shown!r} is not a token id", param="logit_bias"
            )
        sign, digits = match.groups()
        out[-int(digits) if sign else int(digits)] = value
    return out
