"""`RequestDecoder`: a request body (JSON bytes) into its Struct, with a nesting limit.

msgspec decodes recursively, so a body nested a thousand levels deep raises
`RecursionError` (a 500 if nothing caught it), and one nested a few hundred levels
deep decodes into free-form fields (`tools`, `response_format`,
`chat_template_kwargs`) that later recursive code (templates, schema compilers)
may trip on. Invariant: a body nested deeper than `MAX_JSON_DEPTH` is refused with
an `InvalidRequestError` (a 400) before it is decoded, and no decode raises
anything but that or msgspec's own errors (also 400s).

The depth is measured by `llmcore.json_depth`, without recursion.

Unknown top-level fields are ignored, and each name is logged once per process
(warning, logger `llmcore.openai`; every field an OpenAI or vLLM client sends is
declared on the request types, so a name logged is one no client of either
sends). Finding them costs nothing when there are none: the body is decoded by a
strict twin of the type (`forbid_unknown_fields`), and only when that fails are
the top-level keys read (`dict[str, msgspec.Raw]`: values are skipped, not built).
"""

from __future__ import annotations

import logging
import types
from typing import Any, Generic, TypeVar

import msgspec

from llmcore.errors import InvalidRequestError
from llmcore.json_depth import MAX_JSON_DEPTH, json_depth

T = TypeVar("T")
log = logging.getLogger("llmcore.openai")
MAX_LOGGED_NAMES = 1000  # past this many, unknown names are no longer logged
_KEYS = msgspec.json.Decoder(dict[str, msgspec.Raw])


class UnknownFieldLog:
    """The unknown field names logged so far (each once)."""

    __slots__ = ("logged",)

    def __init__(self) -> None:
        self.logged: set[str] = set()

    def note(self, route_type: str, names: set[str]) -> None:
        new = sorted(names - self.logged)
        if not new or len(self.logged) >= MAX_LOGGED_NAMES:
            return
        self.logged.update(new)
        log.warning(
            "%s: ignored unknown request field(s) %s (each name is logged once)",
            route_type,
            ", ".join(repr(n) for n in new),
        )


UNKNOWN_FIELDS = UnknownFieldLog()


class RequestDecoder(Generic[T]):
    """Decodes one request type; built once per type at import."""

    __slots__ = ("_decoder", "_known", "_strict", "_type")

    def __init__(self, type_: type[T]) -> None:
        self._type = type_
        self._decoder = msgspec.json.Decoder(type_)
        strict = types.new_class(
            f"Strict{type_.__name__}", (type_,), {"forbid_unknown_fields": True}
        )
        self._strict: msgspec.json.Decoder[Any] = msgspec.json.Decoder(strict)
        self._known = frozenset(f.encode_name for f in msgspec.structs.fields(type_))  # type: ignore[arg-type]

    def decode(self, body: bytes) -> T:
        """The request in `body`. Raises msgspec.DecodeError / ValidationError for
        malformed JSON or a wrong shape, InvalidRequestError for too deep a body."""
        depth = json_depth(body)
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequestError(
                f"the request body is nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
            )
        try:
            try:
                strict = self._strict.decode(body)
            except msgspec.ValidationError:  # unknown fields, or a real error
                self._note_unknown(body)
                return self._decoder.decode(body)
        except RecursionError:  # the caller's stack was already deep
            raise InvalidRequestError("the request body is nested too deeply") from None
        return msgspec.convert(strict, self._type, from_attributes=True)

    def _note_unknown(self, body: bytes) -> None:
        try:
            keys = _KEYS.decode(body).keys()
        except msgspec.MsgspecError:
            return  # not an object: the lenient decode says why
        unknown = keys - self._known
        if unknown:
            UNKNOWN_FIELDS.note(self._type.__name__, unknown)
