"""What every endpoint of one service shares: the served models (by name), the
limits, the admission of generations (queue limit, metrics) and each model's
token-string cache.

Invariant: a request names a served model or none (the first one that can do what
it asks); any other name is a 404 that lists the served names, and a model that
cannot do what is asked (chat from an embedding model, embeddings from a chat
model) is a 400 that names the models that can.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmcore.errors import InvalidRequestError, NotFoundError
from llmcore.openai.generation import MeteredAdmission
from llmcore.openai.interface import ServedModel
from llmcore.openai.logprobs import Strings, TokenIdStrings, TokenStrings
from llmcore.openai.options import ServiceOptions
from llmcore.openai.params import Limits
from llmcore.openai.protocol import StreamOptions


class ServiceContext:
    def __init__(
        self,
        models: Sequence[ServedModel],
        limits: Limits,
        admission: MeteredAdmission,
        options: ServiceOptions | None = None,
    ) -> None:
        if not models:
            raise ValueError("an OpenAIService needs at least one served model")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"served model names must be unique: {names}")
        self.models = list(models)
        self.by_name = {m.name: m for m in models}
        self.limits = limits
        self.admission = admission
        self.options = options or ServiceOptions()
        self._strings = {m.name: TokenStrings(m.tokenizer) for m in models}

    def model(self, name: str | None) -> ServedModel:
        """The served model called `name`; None: the first served model."""
        if name is None:
            return self.models[0]
        model = self.by_name.get(name)
        if model is None:
            served = ", ".join(repr(n) for n in self.by_name)
            raise NotFoundError(
                f"the model {name!r} does not exist; served models: {served}",
                param="model",
                code="model_not_found",
            )
        return model

    def model_for(self, name: str | None, task: str, what: str) -> ServedModel:
        """The served model called `name` (None: the first of `task`), which must
        serve `task` ("generate" or "embed"); `what` names the endpoint in errors."""
        able = [m for m in self.models if m.task == task]
        model = self.model(name) if name is not None else (able[0] if able else self.models[0])
        if model.task != task:
            names = ", ".join(repr(m.name) for m in able)
            raise InvalidRequestError(
                f"the model {model.name!r} does not serve {what}; "
                + (f"models that do: {names}" if able else "no served model does"),
                param="model",
            )
        return model

    def strings(self, model: ServedModel) -> TokenStrings:
        return self._strings[model.name]

    def logprob_strings(self, model: ServedModel, as_token_ids: bool | None) -> Strings:
        """The token strings of logprobs: "token_id:N" with `return_tokens_as_token_ids`
        (None: the service's default, `ServiceOptions.return_tokens_as_token_ids`)."""
        if as_token_ids is None:
            as_token_ids = self.options.return_tokens_as_token_ids
        strings = self._strings[model.name]
        return TokenIdStrings(strings) if as_token_ids else strings

    def include_usage(self, stream_options: StreamOptions | None) -> tuple[bool, bool]:
        """(usage at the end of a stream, usage on every chunk): as asked, and at the
        end always with `ServiceOptions.enable_force_include_usage`."""
        asked = bool(stream_options and stream_options.include_usage)
        continuous = bool(stream_options and stream_options.continuous_usage_stats)
        return asked or self.options.enable_force_include_usage, continuous

    def cached_tokens(self, num_cached_tokens: int) -> int:
        """What usage reports as cached: the prefix-cache hits with
        `ServiceOptions.enable_prompt_tokens_details`, else 0 (no details)."""
        return num_cached_tokens if self.options.enable_prompt_tokens_details else 0
