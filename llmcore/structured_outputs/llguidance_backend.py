"""The llguidance grammar backend.

Why llguidance: a Rust engine (masks in tens of microseconds on a 128k vocabulary,
computed without the GIL, so they overlap the forward pass), the JSON Schema
coverage behind OpenAI's own structured outputs, Lark-style CFGs, regexes and
GBNF in one grammar format, lazy lexemes for structural tags, and it is what vLLM,
SGLang and llama.cpp use, so our answers match theirs.

Its tokenizer is built from llmcore's own (the `tokenizers` JSON every llmcore
tokenizer is backed by, with the model's EOS ids and vocabulary size), with no
transformers at run time. Compiled grammars are cached by their text: a pristine
matcher per grammar, and each request gets a copy.

Invariant: a grammar that reaches a request has been validated against this
tokenizer; every refusal is an `InvalidRequestError` naming the request field.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from llmcore.errors import InvalidRequestError
from llmcore.structured_outputs.backend import GrammarMatcher, bitmask_words
from llmcore.structured_outputs.params import ConstraintKind, StructuredOutputsParams
from llmcore.tokenization.tokenizer import HFTokenizer, Tokenizer

if TYPE_CHECKING:
    import llguidance

CACHE_SIZE = 256  # compiled grammars kept
_MAX_ERROR_CHARS = 400
_BEGIN_END = ("begin", "end")
# JSON whitespace between tokens when the request says nothing: one space, or a
# newline and up to 16 spaces or tabs of indentation (compact, spaced and indented
# JSON all fit). vLLM allows any run of whitespace there; a small model sampling at
# temperature 1 then wanders into runs of spaces, tabs and newlines until
# max_tokens, the classic way a constrained generation never ends.
DEFAULT_WHITESPACE = r"(\x20|\n[\x20\t]{0,16})?"


class LLGuidanceMatcher:
    __slots__ = ("_m",)

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._m = matcher

    def accept_token(self, token_id: int) -> bool:
        return bool(self._m.consume_token(token_id))

    def is_terminated(self) -> bool:
        return bool(self._m.is_stopped())

    def rollback(self, num_tokens: int) -> None:
        self._m.rollback(num_tokens)

    @property
    def raw(self) -> llguidance.LLMatcher:
        return self._m


class LLGuidanceGrammar:
    __slots__ = ("_pristine",)

    def __init__(self, pristine: llguidance.LLMatcher) -> None:
        self._pristine = pristine

    def new_matcher(self) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self._pristine.deep_copy())


class LLGuidanceBackend:
    name = "guidance"

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Sequence[int]):
        import llguidance

        if not isinstance(tokenizer, HFTokenizer):
            raise TypeError("llguidance needs a tokenizer backed by the tokenizers library")
        self._llg = llguidance
        eos = sorted(eos_token_ids)
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer.backend.to_str(), n_vocab=vocab_size, eos_token=eos or None
        )
        self.vocab_size = vocab_size
        self.words = bitmask_words(vocab_size)
        self._executor = llguidance.LLExecutor()
        self._cache: OrderedDict[str, LLGuidanceGrammar] = OrderedDict()
        self._lock = threading.Lock()

    # ---- compiling -----------------------------------------------------------------------

    def compile(self, spec: StructuredOutputsParams) -> LLGuidanceGrammar:
        grammar = self.grammar_text(spec)
        with self._lock:
            cached = self._cache.get(grammar)
            if cached is not None:
                self._cache.move_to_end(grammar)
                return cached
        is_error, messages = self._llg.LLMatcher.validate_grammar_with_warnings(
            grammar, self.tokenizer
        )
        if is_error:
            raise spec.error(_short(messages[0] if messages else "the grammar is invalid"))
        matcher = self._llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise spec.error(_short(matcher.get_error()))
        compiled = LLGuidanceGrammar(matcher)
        with self._lock:
            self._cache[grammar] = compiled
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def grammar_text(self, spec: StructuredOutputsParams) -> str:
        """llguidance's grammar (JSON text) for a validated constraint."""
        kind = spec.kind
        llg = self._llg
        try:
            match kind:
                case ConstraintKind.JSON:
                    return self._json_grammar(spec, spec.json_value(kind))
                case ConstraintKind.JSON_OBJECT:
                    return self._json_grammar(spec, {"type": "object"})
                case ConstraintKind.REGEX:
                    assert spec.regex is not None
                    return str(llg.LLMatcher.grammar_from_regex(spec.regex))
                case ConstraintKind.CHOICE:
                    assert spec.choice is not None
                    alternatives = " | ".join(json.dumps(c) for c in spec.choice)
                    return str(llg.LLMatcher.grammar_from_lark(f"start: {alternatives}"))
                case ConstraintKind.GRAMMAR:
                    assert spec.grammar is not None
                    return str(llg.grammar_from("grammar", spec.grammar))
                case ConstraintKind.STRUCTURAL_TAG:
                    return self._structural_tag_grammar(spec, spec.json_value(kind))
        except InvalidRequestError:
            raise
        except (ValueError, TypeError, RecursionError, AssertionError) as exc:
            raise spec.error(_short(str(exc) or type(exc).__name__)) from None
        raise AssertionError(kind)

    def _json_options(self, spec: StructuredOutputsParams) -> dict[str, Any]:
        options: dict[str, Any] = {"whitespace_flexible": not spec.disable_any_whitespace}
        if spec.disable_any_whitespace:
            options["item_separator"], options["key_separator"] = ",", ":"
        if spec.whitespace_pattern is not None:
            options["whitespace_pattern"] = spec.whitespace_pattern
        elif not spec.disable_any_whitespace:
            options["whitespace_pattern"] = DEFAULT_WHITESPACE
        return options

    def _json_grammar(self, spec: StructuredOutputsParams, schema: dict[str, Any]) -> str:
        if spec.disable_additional_properties:
            schema = _without_additional_properties(copy.deepcopy(schema))
        return str(
            self._llg.LLMatcher.grammar_from_json_schema(
                json.dumps(schema),
                defaults=self._json_options(spec),  # type: ignore[arg-type]
            )
        )

    def _structural_tag_grammar(self, spec: StructuredOutputsParams, tag: dict[str, Any]) -> str:
        """vLLM's structural tag: `{"structures": [{"begin", "schema", "end"}],
        "triggers": [...]}`: free text, in which each `begin` (starting with one of the
        triggers) is followed by JSON of its schema, then `end`."""
        structures, triggers = tag.get("structures"), tag.get("triggers")
        if not isinstance(structures, list) or not structures:
            raise spec.error("structural_tag: structures must be a non-empty list")
        if not isinstance(triggers, list) or not all(isinstance(t, str) and t for t in triggers):
            raise spec.error("structural_tag: triggers must be a list of non-empty strings")
        tags = []
        for s in structures:
            if not isinstance(s, dict) or not all(isinstance(s.get(k), str) for k in _BEGIN_END):
                raise spec.error("structural_tag: each structure needs begin and end strings")
            begin = s["begin"]
            trigger = next((t for t in triggers if begin.startswith(t)), None)
            if trigger is None:
                raise spec.error(f"structural_tag: {begin!r} starts with none of the triggers")
            schema = s.get("schema", {"type": "object"})
            if not isinstance(schema, dict):
                raise spec.error("structural_tag: a structure's schema must be an object")
            grammar = self._json_grammar(spec, schema)
            tags.append(
                self._llg.StructTag(trigger=trigger, begin=begin, grammar=grammar, end=s["end"])
            )
        return str(self._llg.StructTag.to_grammar(tags))

    # ---- the step ------------------------------------------------------------------------

    def fill_bitmasks(
        self, matchers: Sequence[tuple[GrammarMatcher, int]], bitmask: torch.Tensor
    ) -> None:
        assert bitmask.dtype == torch.int32 and bitmask.is_contiguous() and bitmask.is_cpu
        assert bitmask.shape[1] == self.words, (bitmask.shape, self.words)
        pairs = [(m.raw, i) for m, i in matchers]  # type: ignore[attr-defined]
        self._executor.unsafe_compute_mask_ptr(
            pairs, bitmask.data_ptr(), self.words * 4, bitmask.shape[0]
        )


def _without_additional_properties(schema: Any) -> Any:
    """Every object schema without `additionalProperties` gets it false (vLLM's
    `disable_additional_properties`)."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            _without_additional_properties(value)
    elif isinstance(schema, list):
        for value in schema:
            _without_additional_properties(value)
    return schema


def _short(message: str) -> str:
    message = message.strip()
    return message if len(message) <= _MAX_ERROR_CHARS else message[:_MAX_ERROR_CHARS] + "..."


def json_schema_error(schema: dict[str, Any]) -> str | None:
    """Why llguidance cannot compile `schema` (None when it can); no tokenizer needed.
    Answers are cached by the schema's text (agents send the same tools every turn)."""
    try:
        text = json.dumps(schema, sort_keys=True)
    except (ValueError, TypeError, RecursionError) as exc:
        return _short(str(exc) or type(exc).__name__)
    return _schema_text_error(text)


@functools.lru_cache(maxsize=1024)
def _schema_text_error(text: str) -> str | None:
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(text)
    except (ValueError, TypeError, RecursionError) as exc:
        return _short(str(exc) or type(exc).__name__)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return _short(messages[0] if messages else "the schema is invalid") if is_error else None
