"""`ResponsesAPI`: create, retrieve, delete and cancel responses, on the chat pipeline
(`llmcore.openai.chat.create_chat_completion`) and the `ResponseStore`.

Invariants: a response is `running` from the moment its chat request is made until
its answer is complete (or failed, or cancelled), and only then stored (with
`store`, the default); a running response is found by GET (in progress) and by
cancel, which aborts its engine request: its answer ends early and its status is
`cancelled`; cancelling a response that is no longer running is a 400, as
OpenAI's; an unknown, expired or deleted id is a 404 naming the parameter or
path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import msgspec

from llmcore.errors import InvalidRequestError, NotFoundError
from llmcore.openai.chat import create_chat_completion
from llmcore.openai.context import ServiceContext
from llmcore.openai.errors import error_info
from llmcore.openai.interface import ServedModel
from llmcore.openai.protocol import ChatCompletionChunk, ChatCompletionResponse
from llmcore.openai.request_ids import resolve_request_id
from llmcore.openai.responses.events import EventWriter, chunk_events
from llmcore.openai.responses.inputs import chat_messages, input_items
from llmcore.openai.responses.output import (
    fail,
    finish,
    item_status,
    new_id,
    new_response,
    output_items,
    reasoning_tokens,
    response_usage,
)
from llmcore.openai.responses.store import ResponseStore
from llmcore.openai.responses.translate import chat_request, check_request
from llmcore.openai.responses.wire import (
    DeletedResponse,
    Item,
    Response,
    ResponsesRequest,
    ResponseStreamEvent,
)
from llmcore.openai.streaming import ClosingStream

log = logging.getLogger("llmcore.openai")
CANCEL_WAIT_SECONDS = 10.0  # how long a cancel waits for the answer to wind down


@dataclass(slots=True)
class _Running:
    response: Response
    model: ServedModel
    engine_request_id: str
    items: list[Item]  # the conversation, for the store
    cancelled: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ResponsesAPI:
    def __init__(self, ctx: ServiceContext, store: ResponseStore) -> None:
        self.ctx = ctx
        self.store = store
        self._running: dict[str, _Running] = {}

    # ---- POST /v1/responses ---------------------------------------------------------------

    async def create(
        self, req: ResponsesRequest, request_id: str
    ) -> Response | ClosingStream[ResponseStreamEvent]:
        check_request(req)
        model = self.ctx.model_for(req.model, "generate", "responses")
        items = await self._conversation(req)
        chat = chat_request(req, chat_messages(req.instructions, items), self.ctx.options)
        engine_id = resolve_request_id(request_id, req.request_id)
        run = _Running(new_response(req, new_id("resp"), model.name), model, engine_id, items)
        self._running[run.response.id] = run
        try:
            answer = await create_chat_completion(self.ctx, chat, engine_id)
        except BaseException:
            self._finished(run)
            raise
        if isinstance(answer, ChatCompletionResponse):
            try:
                self._complete(run, answer)
                await self._store(run)
            finally:
                self._finished(run)
            return run.response
        return ClosingStream(self._events(run, answer), _RunCloser(self, run, answer))

    async def _conversation(self, req: ResponsesRequest) -> list[Item]:
        """The previous response's conversation and output, then this input."""
        items = input_items(req.input)
        if req.previous_response_id is None:
            return items
        previous = await self.store.get(req.previous_response_id)
        if previous is None:
            raise NotFoundError(
                f"Previous response with id {req.previous_response_id!r} not found.",
                param="previous_response_id",
            )
        output = msgspec.to_builtins(previous.response.output)
        return [*previous.input, *output, *items]

    def _complete(self, run: _Running, answer: ChatCompletionResponse) -> None:
        choice = answer.choices[0]
        response = run.response
        response.output = output_items(
            choice.message, item_status(choice.finish_reason, run.cancelled)
        )
        count = self._count_tokens(run.model)
        response.usage = response_usage(answer.usage, reasoning_tokens(response.output, count))
        finish(response, choice.finish_reason, run.cancelled)

    async def _events(
        self, run: _Running, chunks: ClosingStream[ChatCompletionChunk]
    ) -> AsyncGenerator[ResponseStreamEvent, None]:
        writer = EventWriter(run.response)
        response = run.response
        try:
            yield writer.event("response.created", response=response)
            yield writer.event("response.in_progress", response=response)
            try:
                async with aclosing(chunk_events(writer, chunks, lambda: run.cancelled)) as events:
                    async for event in events:
                        yield event
            except Exception as exc:  # after the stream started: the response failed
                _, info = error_info(exc)
                fail(response, info.message)
            result = writer.result
            response.output = result.items
            count = self._count_tokens(run.model)
            response.usage = response_usage(result.usage, reasoning_tokens(result.items, count))
            if response.status != "failed":
                finish(response, result.finish_reason, run.cancelled)
            await self._store(run)
            yield writer.event(_final_event(response), response=response)
        finally:
            self._finished(run)

    def _count_tokens(self, model: ServedModel) -> Callable[[str], int]:
        tokenizer = model.tokenizer
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False))

    async def _store(self, run: _Running) -> None:
        if run.response.store:
            await self.store.put(run.response, run.items)

    def _finished(self, run: _Running) -> None:
        self._running.pop(run.response.id, None)
        run.done.set()

    # ---- GET, DELETE, cancel --------------------------------------------------------------

    async def retrieve(self, response_id: str) -> Response:
        run = self._running.get(response_id)
        if run is not None and run.response.store:
            return run.response
        stored = await self.store.get(response_id)
        if stored is None:
            raise _not_found(response_id)
        return stored.response

    async def delete(self, response_id: str) -> DeletedResponse:
        if not await self.store.delete(response_id):
            raise _not_found(response_id)
        return DeletedResponse(response_id)

    async def cancel(self, response_id: str) -> Response:
        run = self._running.get(response_id)
        if run is None:
            if await self.store.get(response_id) is None:
                raise _not_found(response_id)
            raise InvalidRequestError(
                f"Response {response_id!r} is not running: only a response in progress can "
                "be cancelled.",
                param="response_id",
            )
        run.cancelled = True
        run.model.engine.abort(run.engine_request_id)
        try:
            await asyncio.wait_for(run.done.wait(), CANCEL_WAIT_SECONDS)
        except TimeoutError:
            log.warning("response %s: still winding down after cancel", response_id)
        if run.response.status == "in_progress":
            run.response.status = "cancelled"
        return run.response


class _RunCloser:
    """Closes a stream's chat chunks and ends its run, even if it never started."""

    def __init__(
        self, api: ResponsesAPI, run: _Running, chunks: ClosingStream[ChatCompletionChunk]
    ) -> None:
        self.api, self.run, self.chunks = api, run, chunks

    async def aclose(self) -> None:
        try:
            await self.chunks.aclose()
        finally:
            self.api._finished(self.run)


def _final_event(response: Response) -> str:
    if response.status == "completed":
        return "response.completed"
    if response.status == "failed":
        return "response.failed"
    return "response.incomplete"  # max_output_tokens, or cancelled


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(f"Response with id {response_id!r} not found.", param="response_id")
