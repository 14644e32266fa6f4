"""Request bodies of the OpenAI service, and one `msgspec.json.Decoder` per type.

Invariant: decoding is lenient about what does not matter (unknown fields are
ignored, `null` means "the default" for every optional field) and strict about
types; fields that change behaviour but are not supported yet are still declared
here, loosely typed, so that the service can refuse them by name (400) instead of
silently dropping them (see `llmcore.openai.unsupported`).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeAlias

import msgspec

from llmcore.openai.protocol.decoding import RequestDecoder
from llmcore.openai.protocol.messages import ChatMessage

# torch seeds are 64-bit; requests add the completion index to the seed.
Seed: TypeAlias = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# A completions prompt: text, texts, token ids, or lists of token ids (checked after decoding).
PromptInput: TypeAlias = str | list[str | int | list[int]]


class StreamOptions(msgspec.Struct, forbid_unknown_fields=False):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class JsonSchemaFormat(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """`response_format.json_schema`: OpenAI's name, description, schema and strict."""

    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = msgspec.field(default=None, name="schema")
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """OpenAI's `response_format` (text, json_object, json_schema) and vLLM's
    structural_tag (its structures and triggers beside the type)."""

    type: str
    json_schema: JsonSchemaFormat | None = None
    structures: list[dict[str, Any]] | None = None
    triggers: list[str] | None = None


class StructuredOutputsIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """vLLM's `structured_outputs` object (unknown keys are a 400: a misspelt
    constraint must not be dropped)."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | dict[str, Any] | None = None
    whitespace_pattern: str | None = None
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None
    disable_fallback: bool | None = None


class _Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    model: str | None = None


class _GenerationRequest(_Request, kw_only=True):
    """Fields shared by /v1/completions and /v1/chat/completions: the sampling
    parameters of `llmcore.SamplingParams` under the same names, and streaming."""

    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None  # JSON keys are strings: token ids
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = None
    seed: Seed | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    prompt_logprobs: int | None = None
    priority: int | None = None
    cache_salt: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    echo: bool | None = None
    add_special_tokens: bool | None = None
    user: str | None = None  # accepted, no effect (as in vLLM)
    request_id: str | None = None  # the X-Request-Id header wins, as in vLLM
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None  # None: the service's default
    length_penalty: float | None = None  # beam search only (refused): no effect, as in vLLM
    best_of: int | None = None  # only best_of == n (see llmcore.openai.unsupported)
    # Structured outputs (llmcore.openai.structured): OpenAI's and vLLM's spellings.
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsIn | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None
    guided_whitespace_pattern: str | None = None
    structural_tag: str | dict[str, Any] | None = None
    # Declared so that they can be refused by name; see llmcore.openai.unsupported.
    use_beam_search: bool | None = None
    truncate_prompt_tokens: int | None = None
    logits_processors: list[Any] | None = None  # only [] (no --logits-processor-pattern)
    vllm_xargs: dict[str, Any] | None = None  # only {} (no extension reads them)
    kv_transfer_params: dict[str, Any] | None = None  # only {} (no KV transfer)


class CompletionRequest(_GenerationRequest, kw_only=True):
    prompt: PromptInput | None = None  # required (checked after decoding, see prompt_embeds)
    max_tokens: int | None = 16  # explicit null: the rest of the context
    logprobs: int | None = None
    suffix: str | None = None
    prompt_embeds: Any = None  # refused


class ChatCompletionRequest(_GenerationRequest, kw_only=True):
    messages: list[ChatMessage]
    max_tokens: int | None = None  # None: the rest of the context
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    add_generation_prompt: bool | None = None  # None: True
    continue_final_message: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    documents: list[dict[str, Any]] | None = None
    chat_template: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    mm_processor_kwargs: dict[str, Any] | None = None  # only {} (text-only models)
    reasoning_effort: Any = None  # refused unless null (no reasoning parser)
    include_reasoning: bool | None = None  # false refused (no reasoning parser)
    # OpenAI's, with no effect here (as in vLLM)...
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # ...and OpenAI's that would change the answer: refused unless null.
    web_search_options: dict[str, Any] | None = None
    verbosity: str | None = None


class TokenizeRequest(_Request, kw_only=True):
    """vLLM's /tokenize: either `prompt` (text) or `messages` (rendered by the chat template)."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # None: True for a prompt, False for messages
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    documents: list[dict[str, Any]] | None = None  # rendered as chat renders them
    chat_template: str | None = None  # needs ServiceOptions.trust_request_chat_template
    mm_processor_kwargs: dict[str, Any] | None = None  # only {} (text-only models)
    return_token_strs: bool | None = None


class DetokenizeRequest(_Request, kw_only=True):
    tokens: list[int]


COMPLETION_DECODER = RequestDecoder(CompletionRequest)
CHAT_DECODER = RequestDecoder(ChatCompletionRequest)
TOKENIZE_DECODER = RequestDecoder(TokenizeRequest)
DETOKENIZE_DECODER = RequestDecoder(DetokenizeRequest)
