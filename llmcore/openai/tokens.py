"""POST /tokenize and POST /detokenize, in vLLM's shapes.

Invariant: /tokenize of `messages` yields exactly the prompt ids a chat completion
of the same conversation and options (tools, documents, chat_template,
chat_template_kwargs) would run: the same `chat_prompt` call renders both;
/detokenize refuses ids outside the vocabulary instead of guessing.
"""

from __future__ import annotations

from llmcore.errors import InvalidRequestError
from llmcore.openai.context import ServiceContext
from llmcore.openai.prompts import chat_prompt, encode_text
from llmcore.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from llmcore.openai.unsupported import check_request_template, check_tokenize


async def tokenize(ctx: ServiceContext, req: TokenizeRequest) -> TokenizeResponse:
    model = ctx.model(req.model)
    check_tokenize(req)
    if (req.prompt is None) == (req.messages is None):
        raise InvalidRequestError("give exactly one of prompt or messages", param="prompt")
    if req.messages is not None:
        check_request_template(req.chat_template, ctx.options)
        cont = bool(req.continue_final_message)
        add = (not cont) if req.add_generation_prompt is None else req.add_generation_prompt
        ids = (
            await chat_prompt(
                model,
                req.messages,
                add_generation_prompt=add,
                continue_final_message=cont,
                add_special_tokens=bool(req.add_special_tokens),
                chat_template_kwargs=req.chat_template_kwargs,
                tools=req.tools,
                documents=req.documents,
                chat_template=req.chat_template,
            )
        ).token_ids
    else:
        assert req.prompt is not None
        ids = await encode_text(
            model,
            req.prompt,
            add_special_tokens=req.add_special_tokens is not False,
            param="prompt",
        )
    strs = [model.tokenizer.id_to_token(i) for i in ids] if req.return_token_strs else None
    return TokenizeResponse(len(ids), model.max_model_len, ids, strs)


def detokenize(ctx: ServiceContext, req: DetokenizeRequest) -> DetokenizeResponse:
    model = ctx.model(req.model)
    vocab = model.tokenizer.vocab_size
    bad = next((t for t in req.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise InvalidRequestError(
            f"tokens: token id {bad} is out of vocabulary (vocab size {vocab})", param="tokens"
        )
    return DetokenizeResponse(model.tokenizer.decode(req.tokens, skip_special_tokens=False))
