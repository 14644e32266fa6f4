"""`StructuredOutputsParams`: what a request's output must match, in vLLM's names.

One constraint per request: a JSON Schema (`json`), any JSON object (`json_object`),
a regular expression (`regex`), one of several strings (`choice`), a Lark or GBNF
grammar (`grammar`), or vLLM's structural tags (`structural_tag`); with options
for JSON (`whitespace_pattern`, `disable_any_whitespace`,
`disable_additional_properties`). `param` names the request field the constraint
came from, so that every refusal names what the caller wrote.

Invariant: after `validate()`, exactly one constraint is set and its value has the
right type; whether it compiles is the grammar backend's to say.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from llmcore.errors import InvalidRequestError


class ConstraintKind(enum.Enum):
    JSON = "json"
    JSON_OBJECT = "json_object"
    REGEX = "regex"
    CHOICE = "choice"
    GRAMMAR = "grammar"
    STRUCTURAL_TAG = "structural_tag"


@dataclass(slots=True)
class StructuredOutputsParams:
    json: str | dict[str, Any] | None = None  # a JSON Schema (an object, or its JSON text)
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # Lark (llguidance's dialect) or GBNF
    json_object: bool | None = None
    structural_tag: str | dict[str, Any] | None = None
    whitespace_pattern: str | None = None  # JSON: the whitespace allowed between tokens
    disable_any_whitespace: bool = False  # JSON: no whitespace at all (compact output)
    disable_additional_properties: bool = False  # JSON: objects get additionalProperties false
    param: str = field(default="structured_outputs", compare=False)  # named in errors
    # Token ids that end a reasoning: the constraint applies to what follows them (the
    # chat service sets them from its reasoning parser); None: from the first token.
    start_after: list[int] | None = None

    def constraints(self) -> list[ConstraintKind]:
        """The constraints set (exactly one after `validate`)."""
        out = [k for k in ConstraintKind if k is not ConstraintKind.JSON_OBJECT]
        found: list[ConstraintKind] = [k for k in out if getattr(self, k.value) is not None]
        if self.json_object:
            found.append(ConstraintKind.JSON_OBJECT)
        return found

    @property
    def kind(self) -> ConstraintKind:
        (kind,) = self.constraints()
        return kind

    def validate(self) -> None:
        """Raise InvalidRequestError naming the field unless exactly one well-typed
        constraint is set."""
        found = self.constraints()
        if not found:
            raise self.error("no constraint given (one of json, json_object, regex, choice, "
                             "grammar, structural_tag)")  # fmt: skip
        if len(found) > 1:
            names = ", ".join(k.value for k in found)
            raise self.error(f"only one kind of constraint may be given, got {names}")
        kind = found[0]
        value = getattr(self, kind.value)
        if kind is ConstraintKind.CHOICE:
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise self.error("choice must be a list of strings")
            if not value:
                raise self.error("choice must not be empty")
        elif kind in (ConstraintKind.REGEX, ConstraintKind.GRAMMAR):
            if not isinstance(value, str):
                raise self.error(f"{kind.value} must be a string")
            if not value.strip():
                raise self.error(f"{kind.value} must not be empty")
        elif kind in (ConstraintKind.JSON, ConstraintKind.STRUCTURAL_TAG):
            self.json_value(kind)
        if self.whitespace_pattern is not None and not isinstance(self.whitespace_pattern, str):
            raise InvalidRequestError(
                f"{self.param}: whitespace_pattern must be a string", param=self.param
            )

    def json_value(self, kind: ConstraintKind) -> dict[str, Any]:
        """The JSON Schema or structural tag as an object (parsed if given as text)."""
        value = getattr(self, kind.value)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError) as exc:
                raise self.error(f"{kind.value} is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise self.error(f"{kind.value} must be a JSON object")
        return value

    def error(self, message: str) -> InvalidRequestError:
        return InvalidRequestError(f"{self.param}: {message}", param=self.param)
