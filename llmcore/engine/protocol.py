"""The `Engine` protocol: the contract between the OpenAI service (and every
transport above it) and whatever runs the model. `AsyncEngine` is the local
implementation, `ProcessEngine` the same with the engine core in a child process;
a remote engine would implement the same. `generate` serves decoder
(generate-task) models, `encode` embed-task ones. `EngineInfo` is what both
report of the model they serve (`engine.info`), for building the service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import msgspec

from llmcore.engine.core import EngineStatistics
from llmcore.outputs import RequestOutput
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.sampling_params import SamplingParams


class EngineInfo(msgspec.Struct):
    """What the API side needs to know of the model an engine serves."""

    model_path: str  # the loaded file or folder (chat templates are found beside it)
    tokenizer_path: str  # where the same tokenizer loads from
    task: str  # "generate" | "embed"
    max_model_len: int
    pid: int = 0  # the process whose engine core serves it


class Engine(Protocol):
    def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Output deltas of one request until `finished`; raises InvalidRequestError
        (bad parameters, too long) before the first output, EngineDeadError if the
        engine dies. Stopping the iteration early aborts the request."""
        ...

    async def encode(
        self,
        prompt_token_ids: Sequence[int],
        params: PoolingParams,
        request_id: str,
        *,
        priority: int = 0,
    ) -> PoolingOutput:
        """The pooled vector of one input (embeddings, score, rerank), queued by
        `priority` (lower first) then arrival; raises
        InvalidRequestError (bad parameters, too long, a generate-task model) at once,
        EngineDeadError if the engine dies. Cancelling the call aborts the request."""
        ...

    def abort(self, request_id: str) -> None:
        """Stop a request and free its KV blocks; unknown ids are ignored."""
        ...

    async def check_health(self) -> None:
        """Raise EngineDeadError if the engine cannot serve."""
        ...

    def statistics(self) -> EngineStatistics:
        """Running/waiting counts, KV blocks, prefix-cache hits, tokens processed."""
        ...

    async def aclose(self) -> None:
        """Stop the step loop and release the model."""
        ...
