"""POST /v1/chat/completions: a conversation in, assistant messages out.

Invariants: the prompt is the conversation rendered by the model's chat template
(400 if the model has none); a stream opens with one `{"role": ..., "content": ""}`
delta per choice, then deltas whose concatenations are the non-streamed content,
reasoning and tool calls (`chat_output`), exactly one `finish_reason` per choice
(none for an aborted one; `tool_calls` when calls were made under `"auto"` or
`"required"`), then the usage chunk if asked for; `usage` is exact (total = prompt
+ completion).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from llmcore.errors import InvalidRequestError
from llmcore.openai.chat_output import ChoiceDelta, ChoiceShape, ChoiceStream
from llmcore.openai.context import ServiceContext
from llmcore.openai.generation import (
    Collected,
    Generation,
    IndexedOutput,
    collect,
    public_finish_reason,
    usage,
)
from llmcore.openai.logprobs import Strings, chat_logprobs, prompt_logprobs
from llmcore.openai.params import build_params, check_logprobs
from llmcore.openai.prompts import chat_prompt, check_context, content_text
from llmcore.openai.protocol import (
    ROLE_OF,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
)
from llmcore.openai.request_ids import resolve_request_id
from llmcore.openai.streaming import ClosingStream, PrimedStream, prime
from llmcore.openai.tools import ToolPlan, calls_parser, plan_tools, tool_constraint
from llmcore.openai.unsupported import check_chat, check_request_template

OBJECT = "chat.completion"
CHUNK_OBJECT = "chat.completion.chunk"


@dataclass(slots=True)
class _Plan:
    gen: Generation
    id: str
    created: int
    role: str  # of the answer: response_role, or the final message's when continuing it
    echo: str  # vLLM's echo: the final message's content, when it has the answer's role
    logprobs: bool
    prompt_logprobs: bool
    include_usage: bool
    continuous_usage: bool
    token_ids: bool  # return_token_ids
    strings: Strings  # logprob token strings (text, or "token_id:N")
    tools: ToolPlan
    shape: ChoiceShape  # reasoning, content and tool calls of each choice's text


def _generation_prompt_flags(req: ChatCompletionRequest) -> tuple[bool, bool]:
    """(add_generation_prompt, continue_final_message): continuing the final message
    turns the generation prompt off unless the request asks for both (a 400)."""
    cont = bool(req.continue_final_message)
    add = req.add_generation_prompt
    return (not cont) if add is None else add, cont


async def _plan(ctx: ServiceContext, req: ChatCompletionRequest, request_id: str) -> _Plan:
    model = ctx.model_for(req.model, "generate", "chat completions")
    check_chat(req)
    check_request_template(req.chat_template, ctx.options)
    request_id = resolve_request_id(request_id, req.request_id)
    check_logprobs("top_logprobs", req.top_logprobs, ctx.limits)
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequestError(
            "top_logprobs: requires logprobs to be true", param="top_logprobs"
        )
    add_generation_prompt, continue_final = _generation_prompt_flags(req)
    tools = plan_tools(req, ctx.options)
    template_kwargs = _template_kwargs(req, ctx)
    prompt = await chat_prompt(
        model,
        req.messages,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final,
        add_special_tokens=bool(req.add_special_tokens),
        chat_template_kwargs=template_kwargs,
        tools=req.tools,
        documents=req.documents,
        chat_template=req.chat_template,
    )
    max_tokens = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    params = build_params(
        req,
        max_tokens=max_tokens,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        prompt_logprobs=req.prompt_logprobs,
        limits=ctx.limits,
        vocab_size=model.tokenizer.vocab_size,
    )
    check_context(model, len(prompt.token_ids), max_tokens, "messages")
    constraint = tool_constraint(tools)
    if constraint is not None:
        if params.structured_outputs is not None:
            raise InvalidRequestError(
                f"{params.structured_outputs.param}: cannot be combined with tool_choice "
                '"required" or a named function (the call is the answer)',
                param=params.structured_outputs.param,
            )
        params.structured_outputs = constraint
    last = req.messages[-1]
    role = ctx.options.response_role if add_generation_prompt else ROLE_OF[type(last)]
    echo = content_text(last.content) if req.echo and ROLE_OF[type(last)] == role else ""
    include_usage, continuous_usage = ctx.include_usage(req.stream_options)
    shape = ChoiceShape(
        reasoning_parser_name=ctx.options.reasoning_parser,
        chat_template_kwargs=template_kwargs,
        include_reasoning=req.include_reasoning is not False,
        tools=calls_parser(tools, ctx.options),
        parallel=tools.parallel,
    )
    marker = shape.reasoning_end_marker()
    if marker is not None and params.structured_outputs is not None:
        # The constraint (response_format, required or named tools) applies after
        # the reasoning: from the tokens that end it.
        ids = model.tokenizer.encode(marker, add_special_tokens=False)
        params.structured_outputs.start_after = ids or None
    return _Plan(
        gen=Generation(model, [prompt], params, request_id, req.priority or 0, req.cache_salt),
        id=f"chatcmpl-{request_id}",
        created=int(time.time()),
        role=role,
        echo=echo,
        logprobs=bool(req.logprobs),
        prompt_logprobs=req.prompt_logprobs is not None,
        include_usage=include_usage,
        continuous_usage=continuous_usage,
        token_ids=bool(req.return_token_ids),
        strings=ctx.logprob_strings(model, req.return_tokens_as_token_ids),
        tools=tools,
        shape=shape,
    )


def _template_kwargs(req: ChatCompletionRequest, ctx: ServiceContext) -> dict[str, Any] | None:
    """The request's chat_template_kwargs, with its reasoning_effort when a reasoning
    parser is on (templates that know it, such as gpt-oss's, read it there)."""
    if ctx.options.reasoning_parser is None:
        if req.include_reasoning is False:
            raise InvalidRequestError(
                "include_reasoning: there is no reasoning to drop (no --reasoning-parser)",
                param="include_reasoning",
            )
        if req.reasoning_effort is not None:
            raise InvalidRequestError(
                "reasoning_effort: reasoning is not supported (no --reasoning-parser)",
                param="reasoning_effort",
            )
        return req.chat_template_kwargs
    if req.reasoning_effort is None:
        return req.chat_template_kwargs
    return {"reasoning_effort": req.reasoning_effort, **(req.chat_template_kwargs or {})}


async def create_chat_completion(
    ctx: ServiceContext, req: ChatCompletionRequest, request_id: str
) -> ChatCompletionResponse | ClosingStream[ChatCompletionChunk]:
    """The whole response, or (`stream`) its chunks: already started, so errors before
    the first output are raised here; close the stream to abort the request."""
    plan = await _plan(ctx, req, request_id)
    outputs = ctx.admission.outputs(plan.gen)
    if req.stream:
        primed = await prime(outputs)
        return ClosingStream(_chunks(ctx, plan, primed), primed)
    return _response(ctx, plan, await collect(plan.gen, outputs))


def _response(ctx: ServiceContext, plan: _Plan, collected: Collected) -> ChatCompletionResponse:
    choices = []
    for index, choice in enumerate(collected.choices):
        message, finish_reason = _message(plan, choice.text, choice.finish_reason)
        choices.append(
            ChatChoice(
                index=index,
                message=message,
                logprobs=chat_logprobs(plan.strings, choice.token_ids, choice.logprobs)
                if plan.logprobs
                else None,
                finish_reason=finish_reason,
                stop_reason=choice.stop_reason,
                token_ids=choice.token_ids if plan.token_ids else None,
            )
        )
    prompt_lps = collected.prompt_logprobs[0]
    strings = ctx.strings(plan.gen.model)
    cached = ctx.cached_tokens(sum(collected.cached_tokens))
    return ChatCompletionResponse(
        id=plan.id,
        object=OBJECT,
        created=plan.created,
        model=plan.gen.model.name,
        choices=choices,
        usage=usage(plan.gen.num_prompt_tokens, collected.num_completion_tokens, cached),
        prompt_logprobs=prompt_logprobs(strings, prompt_lps) if plan.prompt_logprobs else None,
        prompt_token_ids=plan.gen.prompts[0].token_ids if plan.token_ids else None,
    )


def _message(
    plan: _Plan, text: str, finish_reason: str | None
) -> tuple[ChatMessageOut, str | None]:
    """The message of one choice's whole text, and its finish reason (`tool_calls`
    when it called tools under "auto" or "required")."""
    if plan.shape.plain:
        return ChatMessageOut(role=plan.role, content=plan.echo + text), finish_reason
    read = plan.shape.whole(text)
    content = plan.echo + (read.content or "")
    calls = [ToolCall(c.id, FunctionCall(c.name, c.arguments)) for c in read.tool_calls]
    if calls and plan.tools.calls_finish and finish_reason == "stop":
        finish_reason = "tool_calls"
    message = ChatMessageOut(
        role=plan.role,
        content=content or None,
        reasoning_content=read.reasoning,
        tool_calls=calls or None,
    )
    return message, finish_reason


def _delta_message(delta: ChoiceDelta) -> DeltaMessage:
    calls = [
        DeltaToolCall(
            index=c.index,
            id=c.id,
            type="function" if c.id is not None else None,
            function=DeltaFunctionCall(name=c.name, arguments=c.arguments),
        )
        for c in delta.tool_calls
    ]
    return DeltaMessage(
        content=delta.content or None,
        reasoning_content=delta.reasoning or None,
        tool_calls=calls or None,
    )


class _Chunker:
    """Builds the chunks of one stream, with usage on each when asked for."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.completion_tokens = 0
        self.cached_tokens = 0  # reported in usage (0: no details)

    def chunk(self, choices: list[ChatChunkChoice], final: bool = False) -> ChatCompletionChunk:
        plan = self.plan
        chunk = ChatCompletionChunk(
            plan.id, CHUNK_OBJECT, plan.created, plan.gen.model.name, choices
        )
        if final or plan.continuous_usage:
            num_prompt = plan.gen.num_prompt_tokens
            chunk.usage = usage(num_prompt, self.completion_tokens, self.cached_tokens)
        return chunk

    def delta(self, index: int, delta: DeltaMessage) -> ChatCompletionChunk:
        return self.chunk([ChatChunkChoice(index, delta, None, None)])


async def _chunks(
    ctx: ServiceContext, plan: _Plan, outputs: PrimedStream[IndexedOutput]
) -> AsyncGenerator[ChatCompletionChunk, None]:
    n = plan.gen.params.n
    chunker = _Chunker(plan)
    async with aclosing(outputs) as items:
        for index in range(n):
            role_chunk = chunker.delta(index, DeltaMessage(role=plan.role, content=""))
            if plan.token_ids:  # as vLLM: on each role chunk
                role_chunk.prompt_token_ids = plan.gen.prompts[0].token_ids
            yield role_chunk
        if plan.echo:
            for index in range(n):
                yield chunker.delta(index, DeltaMessage(content=plan.echo))
        streams = None if plan.shape.plain else [plan.shape.stream() for _ in range(n)]
        async for _, out in items:
            chunker.cached_tokens = ctx.cached_tokens(out.num_cached_tokens)
            for delta in out.outputs:
                chunker.completion_tokens += len(delta.token_ids)
                logprobs = None
                if plan.logprobs and delta.token_ids:
                    logprobs = chat_logprobs(plan.strings, delta.token_ids, delta.logprobs)
                finish = public_finish_reason(delta.finish_reason)
                token_ids = list(delta.token_ids) if plan.token_ids else None
                if streams is None:
                    message = DeltaMessage(content=delta.text or None)
                else:
                    message, finish = _parsed_delta(plan, streams[delta.index], delta.text, finish)
                shown = message.content or message.reasoning_content or message.tool_calls
                if not shown and finish is None and logprobs is None and not token_ids:
                    continue  # tokens whose text is held back, and nothing else asked for
                choice = ChatChunkChoice(
                    index=delta.index,
                    delta=message,
                    logprobs=logprobs,
                    finish_reason=finish,
                    stop_reason=delta.stop_reason if finish is not None else None,
                    token_ids=token_ids,
                )
                yield chunker.chunk([choice])
    if plan.include_usage:
        yield chunker.chunk([], final=True)


def _parsed_delta(
    plan: _Plan, stream: ChoiceStream, text: str, finish: str | None
) -> tuple[DeltaMessage, str | None]:
    """One choice's new text through its parsers (all of it decided at its finish)."""
    parsed = stream.feed(text) if text else ChoiceDelta()
    if finish is not None:
        last = stream.finish()
        parsed = ChoiceDelta(
            parsed.reasoning + last.reasoning,
            parsed.content + last.content,
            [*parsed.tool_calls, *last.tool_calls],
        )
        if stream.called and plan.tools.calls_finish and finish == "stop":
            finish = "tool_calls"
    return _delta_message(parsed), finish
