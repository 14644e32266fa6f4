"""POST /v1/messages and POST /v1/messages/count_tokens: Anthropic's Messages API as
a thin translation onto the chat completions pipeline.

Invariant: a message is exactly the chat completion of `translate.chat_request`
(same prompt, same parameters, same validation), reshaped (`answer`, `stream`);
count_tokens counts the prompt that chat request would run (the /tokenize
rendering, which is chat's).
"""

from __future__ import annotations

from llmcore.anthropic import answer
from llmcore.anthropic.requests import CountTokensRequest, MessagesRequest
from llmcore.anthropic.responses import CountTokensResponse, Message
from llmcore.anthropic.stream import event_stream
from llmcore.anthropic.translate import chat_request, count_request
from llmcore.openai import chat, tokens
from llmcore.openai.context import ServiceContext
from llmcore.openai.protocol import TokenizeRequest
from llmcore.openai.streaming import ClosingStream


async def create_message(
    ctx: ServiceContext, req: MessagesRequest, request_id: str
) -> Message | ClosingStream[bytes]:
    """The message, or (`stream`) its server-sent events, already started: errors
    before the first output are raised here; closing the stream aborts the request."""
    result = await chat.create_chat_completion(ctx, chat_request(req), request_id)
    if isinstance(result, ClosingStream):
        return event_stream(result)
    return answer.message(result)


async def count_tokens(ctx: ServiceContext, req: CountTokensRequest) -> CountTokensResponse:
    conversation = count_request(req)
    counted = await tokens.tokenize(
        ctx,
        TokenizeRequest(
            model=conversation.model,
            messages=conversation.messages,
            add_generation_prompt=conversation.add_generation_prompt,
            continue_final_message=conversation.continue_final_message,
            chat_template_kwargs=conversation.chat_template_kwargs,
            tools=conversation.tools,
        ),
    )
    return CountTokensResponse(counted.count)
