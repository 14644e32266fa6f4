"""`--enable-log-requests`: one INFO line per generation request on logger
"llmcore.requests", as vLLM's RequestLogger writes it: the request id, the prompt
text and token ids (each cut to `--max-log-len` characters and ids), and the
sampling parameters.

Invariant: nothing is formatted unless the logger logs at INFO, so a server that
does not log requests pays one level check per request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from llmcore.sampling_params import SamplingParams

log = logging.getLogger("llmcore.requests")


class RequestLogger:
    __slots__ = ("max_log_len",)

    def __init__(self, max_log_len: int | None = None) -> None:
        self.max_log_len = max_log_len  # None: whole prompts

    def log_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
    ) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        limit = self.max_log_len
        if limit is not None:
            prompt = None if prompt is None else prompt[:limit]
            prompt_token_ids = prompt_token_ids[:limit]
        log.info(
            "Received request %s: prompt: %r, params: %r, prompt_token_ids: %s",
            request_id,
            prompt,
            params,
            list(prompt_token_ids),
            extra={"request_id": request_id},
        )
