"""POST /v1/completions: text in, text out, in OpenAI's legacy completions shape.

Invariants: choice `index` = prompt index * n + completion index; `usage` counts
each prompt once (not once per completion) and every generated token once; a
streamed completion's chunks concatenate to the non-streamed text and carry exactly
one `finish_reason` per choice (none for an aborted one); with `echo` the prompt
(and, with `logprobs`, its logprobs: null for the first token) comes first.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from llmcore.openai.context import ServiceContext
from llmcore.openai.generation import (
    Collected,
    Generation,
    IndexedOutput,
    collect,
    public_finish_reason,
    usage,
)
from llmcore.openai.logprobs import Strings, completion_logprobs, prompt_logprobs
from llmcore.openai.params import build_params, check_logprobs
from llmcore.openai.prompts import check_context, completion_prompts, prompt_text
from llmcore.openai.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from llmcore.openai.request_ids import resolve_request_id
from llmcore.openai.streaming import ClosingStream, PrimedStream, prime
from llmcore.openai.unsupported import check_completion
from llmcore.outputs import Logprob

OBJECT = "text_completion"


@dataclass(slots=True)
class _Plan:
    gen: Generation
    id: str
    created: int
    echo: bool
    logprobs: bool
    prompt_logprobs: bool  # vLLM's extension: return them per choice
    include_usage: bool
    continuous_usage: bool
    token_ids: bool  # return_token_ids
    strings: Strings  # logprob token strings (text, or "token_id:N")


async def _plan(ctx: ServiceContext, req: CompletionRequest, request_id: str) -> _Plan:
    model = ctx.model_for(req.model, "generate", "completions")
    check_completion(req)
    assert req.prompt is not None  # check_completion refused its absence
    request_id = resolve_request_id(request_id, req.request_id)
    check_logprobs("logprobs", req.logprobs, ctx.limits)
    prompts = await completion_prompts(model, req.prompt, req.add_special_tokens is not False)
    echo = bool(req.echo)
    wanted = [k for k in (req.prompt_logprobs, req.logprobs if echo else None) if k is not None]
    params = build_params(
        req,
        max_tokens=req.max_tokens,
        logprobs=req.logprobs,
        prompt_logprobs=max(wanted) if wanted else None,
        limits=ctx.limits,
        vocab_size=model.tokenizer.vocab_size,
    )
    for prompt in prompts:
        check_context(model, len(prompt.token_ids), params.max_tokens, "prompt")
    include_usage, continuous_usage = ctx.include_usage(req.stream_options)
    return _Plan(
        gen=Generation(model, prompts, params, request_id, req.priority or 0, req.cache_salt),
        id=f"cmpl-{request_id}",
        created=int(time.time()),
        echo=echo,
        logprobs=req.logprobs is not None,
        prompt_logprobs=req.prompt_logprobs is not None,
        include_usage=include_usage,
        continuous_usage=continuous_usage,
        token_ids=bool(req.return_token_ids),
        strings=ctx.logprob_strings(model, req.return_tokens_as_token_ids),
    )


async def create_completion(
    ctx: ServiceContext, req: CompletionRequest, request_id: str
) -> CompletionResponse | ClosingStream[CompletionChunk]:
    """The whole response, or (`stream`) its chunks: already started, so errors before
    the first output are raised here; close the stream to abort the request."""
    plan = await _plan(ctx, req, request_id)
    outputs = ctx.admission.outputs(plan.gen)
    if req.stream:
        primed = await prime(outputs)
        return ClosingStream(_chunks(ctx, plan, primed), primed)
    return _response(ctx, plan, await collect(plan.gen, outputs))


def _echoed(
    plan: _Plan, prompt_index: int, prompt_lps: Sequence[Logprob | None] | None
) -> tuple[str, list[int], list[Logprob | None]]:
    """The prompt's text, ids and logprobs that echo puts before a choice."""
    prompt = plan.gen.prompts[prompt_index]
    lps: list[Logprob | None] = [None] * len(prompt.token_ids)
    if prompt_lps is not None:
        lps = list(prompt_lps)
    return prompt_text(plan.gen.model, prompt), list(prompt.token_ids), lps


def _response(ctx: ServiceContext, plan: _Plan, collected: Collected) -> CompletionResponse:
    strings = ctx.strings(plan.gen.model)
    choices = []
    for index, choice in enumerate(collected.choices):
        prompt_index = index // plan.gen.params.n
        prompt_lps = collected.prompt_logprobs[prompt_index]
        text, ids, lps = choice.text, choice.token_ids, choice.logprobs
        if plan.echo:
            echo_text, echo_ids, echo_lps = _echoed(plan, prompt_index, prompt_lps)
            text, ids, lps = echo_text + text, echo_ids + ids, echo_lps + lps
        logprobs = completion_logprobs(plan.strings, ids, lps)[0] if plan.logprobs else None
        choices.append(
            CompletionChoice(
                index=index,
                text=text,
                logprobs=logprobs,
                finish_reason=choice.finish_reason,
                stop_reason=choice.stop_reason,
                prompt_logprobs=prompt_logprobs(strings, prompt_lps)
                if plan.prompt_logprobs
                else None,
                token_ids=choice.token_ids if plan.token_ids else None,
                prompt_token_ids=plan.gen.prompts[prompt_index].token_ids
                if plan.token_ids
                else None,
            )
        )
    cached = ctx.cached_tokens(sum(collected.cached_tokens))
    return CompletionResponse(
        id=plan.id,
        object=OBJECT,
        created=plan.created,
        model=plan.gen.model.name,
        choices=choices,
        usage=usage(plan.gen.num_prompt_tokens, collected.num_completion_tokens, cached),
    )


def _chunk(plan: _Plan, choices: list[CompletionChoice]) -> CompletionChunk:
    return CompletionChunk(plan.id, OBJECT, plan.created, plan.gen.model.name, choices)


async def _chunks(
    ctx: ServiceContext, plan: _Plan, outputs: PrimedStream[IndexedOutput]
) -> AsyncGenerator[CompletionChunk, None]:
    gen = plan.gen
    num_choices = len(gen.prompts) * gen.params.n
    offsets, echoed = [0] * num_choices, [False] * num_choices
    started = [False] * num_choices  # has the choice had a chunk (prompt_token_ids go first)
    completion_tokens = 0
    cached = [0] * len(gen.prompts)
    async with aclosing(outputs) as items:
        async for prompt_index, out in items:
            cached[prompt_index] = out.num_cached_tokens
            for delta in out.outputs:
                index = gen.choice_index(prompt_index, delta.index)
                completion_tokens += len(delta.token_ids)
                text, ids = delta.text, list(delta.token_ids)
                lps: list[Logprob | None] = list(delta.logprobs or [])
                if plan.echo and not echoed[index]:
                    echoed[index] = True
                    echo_text, echo_ids, echo_lps = _echoed(plan, prompt_index, out.prompt_logprobs)
                    text, ids, lps = echo_text + text, echo_ids + ids, echo_lps + lps
                logprobs: CompletionLogprobs | None = None
                if plan.logprobs and ids:
                    logprobs, offsets[index] = completion_logprobs(
                        plan.strings, ids, lps, offsets[index]
                    )
                finish = public_finish_reason(delta.finish_reason)
                token_ids = list(delta.token_ids) if plan.token_ids else None
                if not text and finish is None and logprobs is None and not token_ids:
                    continue  # tokens whose text is held back, and nothing else asked for
                stop_reason = delta.stop_reason if finish is not None else None
                choice = CompletionChoice(index, text, logprobs, finish, stop_reason)
                if plan.token_ids:
                    choice.token_ids = token_ids
                    if not started[index]:
                        choice.prompt_token_ids = gen.prompts[prompt_index].token_ids
                started[index] = True
                chunk = _chunk(plan, [choice])
                if plan.continuous_usage:
                    num_cached = ctx.cached_tokens(sum(cached))
                    chunk.usage = usage(gen.num_prompt_tokens, completion_tokens, num_cached)
                yield chunk
    if plan.include_usage:
        final = _chunk(plan, [])
        num_cached = ctx.cached_tokens(sum(cached))
        final.usage = usage(gen.num_prompt_tokens, completion_tokens, num_cached)
        yield final
