"""`ServiceOptions`: server-wide switches of the OpenAI service, under vLLM's flag names.

Invariant: every field has a flag of the same name (`--response-role`, ...) in
`llmcore serve`, and the default is vLLM's default (llmcore's own for the fields
vLLM lacks, `responses_store*`), so a service built with no options answers as
`vllm serve` does with no flags.
"""

from __future__ import annotations

from dataclasses import dataclass

RESPONSES_STORE_MAX_ITEMS = 10_000  # stored responses kept at most (the oldest go first)
RESPONSES_STORE_MAX_AGE = 30 * 24 * 3600.0  # seconds: 30 days, as OpenAI keeps responses


@dataclass(slots=True, frozen=True)
class ServiceOptions:
    response_role: str = "assistant"  # the role of chat answers (add_generation_prompt true)
    enable_prompt_tokens_details: bool = False  # usage.prompt_tokens_details.cached_tokens
    enable_force_include_usage: bool = False  # usage in every stream, asked for or not
    return_tokens_as_token_ids: bool = False  # logprob tokens as "token_id:N"
    enable_log_requests: bool = False  # log each request (prompt cut at max_log_len)
    max_log_len: int | None = None  # None: whole prompts in the request log
    enable_tokenizer_info_endpoint: bool = False  # GET /tokenizer_info
    trust_request_chat_template: bool = False  # a request's own chat_template (else a 400)
    enable_auto_tool_choice: bool = False  # tool_choice "auto" (needs tool_call_parser)
    tool_call_parser: str | None = None  # the registered name (llmcore.parsers)
    reasoning_parser: str | None = None  # the registered name: reasoning_content in answers
    # llmcore's: where /v1/responses keeps stored responses (None: in memory), and how many
    # and how long (seconds).
    responses_store: str | None = None
    responses_store_max_items: int = RESPONSES_STORE_MAX_ITEMS
    responses_store_max_age: float = RESPONSES_STORE_MAX_AGE
