"""`LLM`: the synchronous offline API, in the shape of vLLM's.

`generate` submits every prompt at once, so the scheduler batches them, steps the
engine until all are done, and returns one cumulative `RequestOutput` per prompt,
in input order. `chat` renders each conversation with the model's chat template
first. `embed` pools each prompt on an embed-task model (submitted shortest first,
so each step batches inputs of similar length), one `PoolingOutput` per prompt.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from llmcore.chat_template import ChatTemplate, require_template
from llmcore.engine.async_engine import build_core
from llmcore.errors import InvalidRequestError
from llmcore.openai.chat_output import ChoiceShape
from llmcore.openai.options import ServiceOptions
from llmcore.openai.tools import calls_parser, plan_tool_choice, tool_constraint
from llmcore.outputs import CompletionOutput, RequestOutput, extend_output
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.sampling_params import SamplingParams

# A string, token ids, or vLLM's prompt dicts: {"prompt": str} (TextPrompt) or
# {"prompt_token_ids": [...]} (TokensPrompt)
Prompt = str | Sequence[int] | Mapping[str, Any]


class LLM:
    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        tokenizer: str | os.PathLike[str] | None = None,
        dtype: str = "auto",
        device: str = "cpu",
        quantization: str | None = None,
        chat_template: str | None = None,
        tool_call_parser: str | None = None,
        reasoning_parser: str | None = None,
        **engine_options: Any,
    ) -> None:
        """`model`: a .gguf file or Hugging Face folder; None = the embedded default
        (SmolLM2-135M-Instruct). `tool_call_parser` / `reasoning_parser`: parser names
        (`llmcore.parsers`) that `chat` reads its outputs with (tool_choice "auto" needs
        the first). `engine_options` are `EngineConfig` fields."""
        self.options = ServiceOptions(
            enable_auto_tool_choice=tool_call_parser is not None,
            tool_call_parser=tool_call_parser,
            reasoning_parser=reasoning_parser,
        )
        self.core = build_core(
            model,
            tokenizer=tokenizer,
            dtype=dtype,
            device=device,
            quantization=quantization,
            **engine_options,
        )
        self.tokenizer = self.core.tokenizer
        self.chat_template = ChatTemplate.resolve(
            self.core.loaded.path, chat_template, gguf_template=self.tokenizer.chat_template
        )
        self._counter = 0

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Complete every prompt (a string or token ids); one output per prompt."""
        batch = _as_list(prompts)
        params = _params_list(sampling_params, len(batch))
        return self._run([self._token_ids(p) for p in batch], params)

    def _token_ids(self, prompt: Prompt) -> list[int]:
        """A prompt's token ids; InvalidRequestError for a dict of neither kind."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, Mapping):
            if "prompt_token_ids" in prompt:
                return [int(t) for t in prompt["prompt_token_ids"]]
            if isinstance(prompt.get("prompt"), str):
                return self.tokenizer.encode(prompt["prompt"])
            raise InvalidRequestError(
                "a prompt dict needs 'prompt_token_ids' (token ids) or 'prompt' (text), "
                f"got keys {sorted(prompt)}"
            )
        return list(prompt)

    def chat(
        self,
        messages: Sequence[dict[str, Any]] | Sequence[Sequence[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> list[RequestOutput]:
        """Answer one conversation (a list of messages) or several. With `tools`,
        `tool_choice` as in the chat API ("none", "auto" (the default; needs the
        `tool_call_parser`), "required", or a named function, the last two enforced
        by a grammar); each output's `tool_calls` and `reasoning_content` are what
        its text holds."""
        plan = plan_tool_choice(tools, tool_choice, parallel_tool_calls, self.options)
        constraint = tool_constraint(plan)
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        params = _params_list(sampling_params, len(conversations))
        if constraint is not None:
            params = [dataclasses.replace(p, structured_outputs=constraint) for p in params]
        template = require_template(self.chat_template)
        token_ids = []
        for conversation in conversations:
            text = template.render(
                list(conversation),  # type: ignore[arg-type]
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message,
                tools=tools,
                bos_token=self.tokenizer.bos_token or "",
                eos_token=self.tokenizer.eos_token or "",
                **(chat_template_kwargs or {}),
            )
            token_ids.append(self.tokenizer.encode(text, add_special_tokens=False))
        outputs = self._run(token_ids, params)
        shape = ChoiceShape(
            reasoning_parser_name=self.options.reasoning_parser,
            chat_template_kwargs=chat_template_kwargs,
            tools=calls_parser(plan, self.options),
            parallel=plan.parallel,
        )
        if not shape.plain:
            for output in outputs:
                for completion in output.outputs:
                    read = shape.whole(completion.text)
                    completion.tool_calls = read.tool_calls
                    completion.reasoning_content = read.reasoning
        return outputs

    def _run(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[RequestOutput]:
        ids = []
        results: dict[str, RequestOutput] = {}
        requests = []
        for prompt, p in zip(prompts, params, strict=True):
            self._counter += 1
            request_id = f"offline-{self._counter}"
            requests.append(self.core.make_requests(prompt, p, request_id))  # validate all first
            ids.append(request_id)
            results[request_id] = RequestOutput(
                request_id,
                prompt,
                [CompletionOutput(index=i, text="", token_ids=[]) for i in range(p.n)],
            )
        for group in requests:
            self.core.add(group)
        while self.core.has_work():
            for delta in self.core.step():
                assert isinstance(delta, RequestOutput)
                extend_output(results[delta.request_id], delta)
        return [results[i] for i in ids]

    def embed(
        self, prompts: Prompt | Sequence[Prompt], pooling_params: PoolingParams | None = None
    ) -> list[PoolingOutput]:
        """Pool every prompt (a string or token ids) on an embed-task model (e.g.
        `LLM(minilm_folder)` or `LLM(path, task="embed")`); input order kept."""
        batch = _as_list(prompts)
        params = pooling_params or PoolingParams()
        token_ids = [self._token_ids(p) for p in batch]
        requests = []
        for prompt in token_ids:
            self._counter += 1
            request_id = f"offline-{self._counter}"
            requests.append(self.core.make_encode_request(prompt, params, request_id))
        for request in sorted(requests, key=lambda r: r.num_tokens):
            self.core.add_encode(request)
        results: dict[str, PoolingOutput] = {}
        while self.core.has_work():
            for out in self.core.step():
                assert isinstance(out, PoolingOutput)
                results[out.request_id] = out
        return [results[r.request_id] for r in requests]


def _as_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str | Mapping):
        return [prompts]
    if prompts and isinstance(prompts[0], int):
        return [prompts]  # type: ignore[list-item]
    return list(prompts)  # type: ignore[arg-type]


def _params_list(
    params: SamplingParams | Sequence[SamplingParams] | None, n: int
) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(params, SamplingParams):
        return [params] * n
    if len(params) != n:
        raise ValueError(f"{len(params)} sampling params for {n} prompts")
    return list(params)
