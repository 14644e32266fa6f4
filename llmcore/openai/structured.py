"""A request's structured-output constraint, from whichever of its fields carries it:
OpenAI's `response_format` (`json_object`, `json_schema`; vLLM's `structural_tag`),
vLLM's `structured_outputs` object, or vLLM's older top-level `guided_json`,
`guided_regex`, `guided_choice`, `guided_grammar`, `structural_tag` (with
`guided_whitespace_pattern` and `guided_decoding_backend`).

Invariant: at most one constraint per request (two are a 400 naming both); every
refusal names the field the caller wrote; what leaves here is a validated
`StructuredOutputsParams` whose `param` is that field.
"""

from __future__ import annotations

from typing import Any

from llmcore.errors import InvalidRequestError
from llmcore.openai.protocol.requests import ResponseFormat, StructuredOutputsIn, _GenerationRequest
from llmcore.structured_outputs import StructuredOutputsParams

# Names of the one backend there is, as vLLM's requests and flags spell it.
BACKEND_NAMES = frozenset({"auto", "guidance", "llguidance"})
_GUIDED = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
    "structural_tag": "structural_tag",
}


def structured_outputs_of(req: _GenerationRequest) -> StructuredOutputsParams | None:
    found: list[StructuredOutputsParams] = []
    if req.response_format is not None:
        spec = _from_response_format(req.response_format)
        if spec is not None:
            found.append(spec)
    if req.structured_outputs is not None:
        found.append(_from_object(req.structured_outputs))
    for name, kind in _GUIDED.items():
        value = getattr(req, name)
        if value is not None:
            found.append(StructuredOutputsParams(**{kind: value}, param=name))
    _check_backend(req.guided_decoding_backend)
    if len(found) > 1:
        names = ", ".join(s.param for s in found)
        raise InvalidRequestError(
            f"{found[1].param}: only one structured-output constraint may be given, got {names}",
            param=found[1].param,
        )
    if not found:
        if req.guided_whitespace_pattern is not None:
            raise _refuse("guided_whitespace_pattern", "is only meaningful with a JSON constraint")
        return None
    spec = found[0]
    if req.guided_whitespace_pattern is not None:
        spec.whitespace_pattern = req.guided_whitespace_pattern
    spec.validate()
    return spec


def _from_response_format(fmt: ResponseFormat) -> StructuredOutputsParams | None:
    param = "response_format"
    match fmt.type:
        case "text":
            return None
        case "json_object":
            return StructuredOutputsParams(json_object=True, param=param)
        case "json_schema":
            if fmt.json_schema is None:
                raise _refuse(param, 'type "json_schema" needs a json_schema object')
            schema = fmt.json_schema.schema_
            if schema is None:  # a schema is optional in OpenAI's API: any JSON object
                return StructuredOutputsParams(json_object=True, param=param)
            return StructuredOutputsParams(json=schema, param=param)
        case "structural_tag":
            tag: dict[str, Any] = {"structures": fmt.structures, "triggers": fmt.triggers}
            return StructuredOutputsParams(structural_tag=tag, param=param)
    raise _refuse(
        param,
        f"type must be one of text, json_object, json_schema, structural_tag; got {fmt.type!r}",
    )


def _from_object(obj: StructuredOutputsIn) -> StructuredOutputsParams:
    if obj.disable_fallback:
        pass  # there is one backend: nothing to fall back to, so "no fallback" holds
    return StructuredOutputsParams(
        json=obj.json,
        regex=obj.regex,
        choice=obj.choice,
        grammar=obj.grammar,
        json_object=obj.json_object,
        structural_tag=obj.structural_tag,
        whitespace_pattern=obj.whitespace_pattern,
        disable_any_whitespace=bool(obj.disable_any_whitespace),
        disable_additional_properties=bool(obj.disable_additional_properties),
        param="structured_outputs",
    )


def _check_backend(name: str | None) -> None:
    if name is None:
        return
    base = name.split(":", 1)[0].strip().lower()  # vLLM's "backend:option,option"
    if base not in BACKEND_NAMES:
        raise _refuse(
            "guided_decoding_backend",
            f"{name!r} is not available; the backend is 'guidance' (llguidance)",
        )


def _refuse(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)
