"""Pooled vectors on the wire: JSON floats, or base64 of their raw bytes in one of
vLLM's `embed_dtype`s and byte orders (`endianness`).

Invariant: `encoding_format` "float" sends the float32 values as they are (dtype and
byte order do not apply, as in vLLM); "base64" sends the values cast to the dtype
(round to nearest) with each element's bytes in the byte order asked for, so that
`decode_base64` with the same dtype and order gives back exactly the cast values.
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass

import numpy as np
import torch

from llmcore.errors import InvalidRequestError

ENCODING_FORMATS = ("float", "base64")
EMBED_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
ENDIANNESS = ("native", "little", "big")


@dataclass(frozen=True, slots=True)
class VectorEncoding:
    format: str  # "float" or "base64"
    dtype: torch.dtype  # base64: the element type
    byteorder: str  # base64: "little" or "big" ("native" resolved)


def vector_encoding(
    encoding_format: str | None, embed_dtype: str | None, endianness: str | None
) -> VectorEncoding:
    """The encoding a request asks for (None: vLLM's defaults), or a 400 naming the field."""
    fmt = encoding_format or "float"
    if fmt not in ENCODING_FORMATS:
        raise _refuse("encoding_format", fmt, ENCODING_FORMATS)
    dtype_name = embed_dtype or "float32"
    if dtype_name not in EMBED_DTYPES:
        raise _refuse("embed_dtype", dtype_name, tuple(EMBED_DTYPES))
    order = endianness or "native"
    if order not in ENDIANNESS:
        raise _refuse("endianness", order, ENDIANNESS)
    byteorder = sys.byteorder if order == "native" else order
    return VectorEncoding(fmt, EMBED_DTYPES[dtype_name], byteorder)


def _refuse(param: str, value: str, choices: tuple[str, ...]) -> InvalidRequestError:
    return InvalidRequestError(
        f"{param}: {value!r} is not supported; choose one of {', '.join(choices)}", param=param
    )


def encode_vector(data: torch.Tensor, encoding: VectorEncoding) -> list[float] | str:
    if encoding.format == "float":
        return data.tolist()  # type: ignore[no-any-return]
    return base64.b64encode(raw_bytes(data, encoding)).decode("ascii")


def raw_bytes(data: torch.Tensor, encoding: VectorEncoding) -> bytes:
    """The values of `data` in `encoding.dtype`, each in `encoding.byteorder`."""
    cast = data.detach().to("cpu").flatten().to(encoding.dtype).contiguous()
    raw = cast.view(torch.uint8).reshape(cast.numel(), cast.element_size())
    if encoding.byteorder != sys.byteorder:
        raw = raw.flip(1)
    return raw.numpy().tobytes()


def decode_base64(
    text: str, embed_dtype: str = "float32", endianness: str = "native"
) -> np.ndarray:
    """The inverse of base64 encoding (for clients and tests): float32 values."""
    encoding = vector_encoding("base64", embed_dtype, endianness)
    itemsize = torch.empty(0, dtype=encoding.dtype).element_size()
    raw = np.frombuffer(base64.b64decode(text), dtype=np.uint8).reshape(-1, itemsize)
    if encoding.byteorder != sys.byteorder:
        raw = raw[:, ::-1]
    values = torch.from_numpy(raw.copy()).view(encoding.dtype).flatten()  # a writable copy
    return values.float().numpy()
