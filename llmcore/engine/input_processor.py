"""`InputProcessor`: a caller's prompt and parameters in, validated engine requests out.

It runs on the caller's thread, before anything is queued, so every refusal
(`InvalidRequestError`, `ContextLengthExceededError`, naming the field) reaches the
caller at once and a refused request never half-runs. For generation it checks the
prompt against the vocabulary, validates the `SamplingParams`, resolves
`max_tokens` against the context, and derives once per caller request what its
n completions share (`ResolvedParams`: stop token ids, tokenized bad words, the
compiled structured-output grammar); for
embeddings it checks the prompt, its length and the `PoolingParams`.

Invariant: every `Request` and `EncodeRequest` it returns can be scheduled without
further checks; the step thread never validates caller input. A structured-output
grammar is compiled in `resolve` (once per caller request, cached by grammar
text); each of the n completions gets its own matcher of it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmcore.engine.request import EncodeRequest, Request
from llmcore.engine.task import Task
from llmcore.errors import ContextLengthExceededError, InvalidRequestError
from llmcore.model_config import ModelConfig
from llmcore.pooling import PoolingConfig, PoolingParams
from llmcore.sampling_params import SamplingParams
from llmcore.structured_outputs.backend import CompiledGrammar
from llmcore.structured_outputs.manager import StructuredOutputManager
from llmcore.tokenization.tokenizer import Tokenizer


@dataclass(slots=True, frozen=True)
class ResolvedParams:
    """What the engine derives from one caller request's `SamplingParams`, shared by
    its n completions."""

    max_tokens: int  # params.max_tokens, or the rest of the context
    stop_token_ids: frozenset[int]  # params.stop_token_ids, and EOS unless ignore_eos
    bad_words_token_ids: list[list[int]]  # each bad word, with and without a leading space
    grammar: CompiledGrammar | None = None  # params.structured_outputs, compiled


class InputProcessor:
    def __init__(
        self,
        tokenizer: Tokenizer,
        model: ModelConfig,
        *,
        task: Task,
        max_model_len: int,
        max_logprobs: int,
        pooling_config: PoolingConfig | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.task = task
        self.vocab_size = model.vocab_size
        self.hidden_size = model.hidden_size
        self.max_model_len = max_model_len
        self.max_logprobs = max_logprobs
        self.pooling_config = pooling_config
        eos = set(model.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)
        self.structured = StructuredOutputManager(
            tokenizer, model.vocab_size, sorted(self.eos_token_ids)
        )

    # ---- generation ----------------------------------------------------------------------

    def process(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> list[Request]:
        """Validate one caller request and build its n engine requests (one group)."""
        if self.task is not Task.GENERATE:
            raise InvalidRequestError(
                "this model is served for embeddings (task embed), not for generation"
            )
        prompt = self._checked_prompt(prompt_token_ids)
        params.validate(self.vocab_size, self.max_logprobs)
        resolved = self.resolve(params, len(prompt))
        now = time.monotonic()
        return [
            Request(
                request_id=request_id if params.n == 1 else f"{request_id}-{i}",
                group_id=request_id,
                index=i,
                prompt_token_ids=prompt,
                params=params,
                max_tokens=resolved.max_tokens,
                arrival_time=now,
                priority=priority,
                cache_salt=cache_salt,
                stop_token_ids=resolved.stop_token_ids,
                bad_words_token_ids=resolved.bad_words_token_ids,
                generator=(
                    torch.Generator().manual_seed(params.seed + i)
                    if params.seed is not None
                    else None
                ),
                grammar=resolved.grammar.new_matcher() if resolved.grammar is not None else None,
                grammar_after=_start_after(params),
            )
            for i in range(params.n)
        ]

    def resolve(self, params: SamplingParams, num_prompt_tokens: int) -> ResolvedParams:
        """Derive what the n completions of validated `params` share."""
        return ResolvedParams(
            max_tokens=self._max_tokens(num_prompt_tokens, params),
            stop_token_ids=self._stop_ids(params),
            bad_words_token_ids=self._bad_words_ids(params.bad_words or []),
            grammar=(
                self.structured.compile(params.structured_outputs)
                if params.structured_outputs is not None
                else None
            ),
        )

    def _max_tokens(self, num_prompt: int, params: SamplingParams) -> int:
        room = self.max_model_len - num_prompt
        wanted = params.max_tokens
        if room < 1 or (wanted is not None and wanted > room):
            asked = f" + max_tokens ({wanted})" if wanted is not None else ""
            raise ContextLengthExceededError(
                f"this model's maximum context length is {self.max_model_len} tokens; the "
                f"request has {num_prompt} prompt tokens{asked}",
                param="max_tokens" if room >= 1 else "prompt",
            )
        return room if wanted is None else wanted

    def _stop_ids(self, params: SamplingParams) -> frozenset[int]:
        ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            ids |= self.eos_token_ids
        return frozenset(ids)

    def _bad_words_ids(self, words: list[str]) -> list[list[int]]:
        out: list[list[int]] = []
        for word in words:
            for variant in (word, " " + word.lstrip()):
                ids = self.tokenizer.encode(variant, add_special_tokens=False)
                if ids and ids not in out:
                    out.append(ids)
        return out

    # ---- embeddings ----------------------------------------------------------------------

    def process_encode(
        self,
        prompt_token_ids: Sequence[int],
        params: PoolingParams,
        request_id: str,
        *,
        priority: int = 0,
    ) -> EncodeRequest:
        """Validate one input to pool and build its request."""
        if self.pooling_config is None:
            raise InvalidRequestError(
                "this model is served for generation (task generate), not for embeddings"
            )
        prompt = self._checked_prompt(prompt_token_ids)
        if len(prompt) > self.max_model_len:
            raise ContextLengthExceededError(
                f"this model's maximum input length is {self.max_model_len} tokens; the input "
                f"has {len(prompt)} tokens (set truncate_prompt_tokens to truncate it)",
                param="input",
            )
        params.validate(self.hidden_size, self.pooling_config)
        return EncodeRequest(request_id, prompt, params, time.monotonic(), priority)

    # ---- both ----------------------------------------------------------------------------

    def _checked_prompt(self, prompt_token_ids: Sequence[int]) -> list[int]:
        prompt = list(prompt_token_ids)
        if not prompt:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if any(not 0 <= t < self.vocab_size for t in prompt):
            raise InvalidRequestError(
                f"prompt token ids must be in [0, {self.vocab_size})", param="prompt"
            )
        return prompt


def _start_after(params: SamplingParams) -> tuple[int, ...] | None:
    spec = params.structured_outputs
    return tuple(spec.start_after) if spec is not None and spec.start_after else None
