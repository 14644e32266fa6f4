"""`RequestDecoder`: a request body (JSON bytes) into its Struct, with a nesting limit.

msgspec decodes recursively, so a body nested a thousand levels deep raises
`RecursionError` (a 500 if nothing caught it), and one nested a few hundred levels
deep decodes into free-form fields (`tools`, `response_format`,
`chat_template_kwargs`) that later recursive code (templates, schema compilers)
may trip on. Invariant: a body nested deeper than `MAX_JSON_DEPTH` is refused with
an `InvalidRequestError` (a 400) before it is decoded, and no decode raises
anything but that or msgspec's own errors (also 400s).

The depth is measured by `llmcore.json_depth`, without recursion.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

from llmcore.errors import InvalidRequestError
from llmcore.json_depth import MAX_JSON_DEPTH, json_depth

T = TypeVar("T")


class RequestDecoder(Generic[T]):
    """Decodes one request type; built once per type at import."""

    __slots__ = ("_decoder",)

    def __init__(self, type_: type[T]) -> None:
        self._decoder = msgspec.json.Decoder(type_)

    def decode(self, body: bytes) -> T:
        """The request in `body`. Raises msgspec.DecodeError / ValidationError for
        malformed JSON or a wrong shape, InvalidRequestError for too deep a body."""
        depth = json_depth(body)
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequestError(
                f"the request body is nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
            )
        try:
            return self._decoder.decode(body)
        except RecursionError:  # the caller's stack was already deep
            raise InvalidRequestError("the request body is nested too deeply") from None
