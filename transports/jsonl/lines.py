"""The OpenAI batch file format: one input line -> a `Job` (or a `LineError`
saying why it cannot run), one service answer -> a `Result`, and both -> one
output line. Invariant: every input line that is not blank yields exactly one
output line, encoded as a single complete JSON object: a result
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}`
for an executed request (whatever its status), or an error line
`{"id", "custom_id", "response": null, "error": {"code", "message", "line"}}`.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

MAX_MESSAGE_VALUE = 60  # characters of an offending value quoted in a message


class ErrorCode(enum.StrEnum):
    """Why a line could not be executed (`error.code` of its error line)."""

    INVALID_JSON = "invalid_json_line"  # not JSON, or not a JSON object
    INVALID_LINE = "invalid_request_line"  # custom_id or body missing or of the wrong type
    INVALID_METHOD = "invalid_method"  # not POST
    INVALID_URL = "invalid_url"  # not a path the service answers with POST
    STREAM_UNSUPPORTED = "stream_unsupported"  # body has "stream": true
    DUPLICATE_CUSTOM_ID = "duplicate_custom_id"
    LINE_TOO_LONG = "line_too_long"
    INTERNAL_ERROR = "internal_error"  # the service broke its contract (raised)


@dataclass(frozen=True, slots=True)
class Job:
    """A line that can be executed: POST `body` to `url`."""

    line: int  # 1-based line number in the input
    custom_id: str
    url: str
    body: bytes


@dataclass(frozen=True, slots=True)
class LineError:
    """A line that could not be executed."""

    line: int
    custom_id: str | None
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class Result:
    """An executed request's answer. `ok`: a 2xx status."""

    custom_id: str
    request_id: str
    status: int
    body: Any  # msgspec.Raw of a JSON body, else the text (None if empty)
    completion_tokens: int

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# -- input --------------------------------------------------------------------------------


class _InputLine(msgspec.Struct):
    custom_id: Any = None
    method: Any = None
    url: Any = None
    body: msgspec.Raw = msgspec.Raw()  # empty: absent


class _BodyPeek(msgspec.Struct):
    stream: Any = None


_INPUT = msgspec.json.Decoder(_InputLine)
_BODY = msgspec.json.Decoder(_BodyPeek)


def parse_line(line: int, data: bytes) -> Job | LineError:
    """Check one (non-blank) input line."""
    try:
        raw = _INPUT.decode(data)
    except msgspec.ValidationError:
        return LineError(line, None, ErrorCode.INVALID_JSON, "the line is not a JSON object")
    except msgspec.DecodeError as exc:
        return LineError(line, None, ErrorCode.INVALID_JSON, f"the line is not valid JSON: {exc}")
    custom_id = raw.custom_id if isinstance(raw.custom_id, str) and raw.custom_id else None
    problem = _check_fields(raw, custom_id)
    if problem is not None:
        code, message = problem
        return LineError(line, custom_id, code, message)
    assert custom_id is not None and isinstance(raw.url, str)
    return Job(line, custom_id, raw.url.split("?", 1)[0], bytes(raw.body))


def _check_fields(raw: _InputLine, custom_id: str | None) -> tuple[ErrorCode, str] | None:
    if custom_id is None:
        return ErrorCode.INVALID_LINE, _missing_or_wrong("custom_id", raw.custom_id, "a string")
    if raw.method is None:
        return ErrorCode.INVALID_METHOD, "method is missing; it must be POST"
    if raw.method != "POST":
        return ErrorCode.INVALID_METHOD, f"method must be POST, not {_quote(raw.method)}"
    if not isinstance(raw.url, str) or not raw.url.startswith("/"):
        return ErrorCode.INVALID_URL, _missing_or_wrong("url", raw.url, "a path such as /v1/...")
    if not raw.body:
        return ErrorCode.INVALID_LINE, "body is missing"
    try:
        peek = _BODY.decode(raw.body)
    except msgspec.DecodeError:
        return ErrorCode.INVALID_LINE, "body must be a JSON object"
    if peek.stream is True:
        return ErrorCode.STREAM_UNSUPPORTED, '"stream": true is not supported in a batch'
    return None


def _missing_or_wrong(field: str, value: object, expected: str) -> str:
    if value is None:
        return f"{field} is missing"
    return f"{field} must be {expected}, not {_quote(value)}"


def _quote(value: object) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= MAX_MESSAGE_VALUE else text[:MAX_MESSAGE_VALUE] + "..."


# -- answers ------------------------------------------------------------------------------


class _AnswerPeek(msgspec.Struct):
    usage: Any = None
    error: Any = None


_ANSWER = msgspec.json.Decoder(_AnswerPeek)


def read_answer(job: Job, request_id: str, answer: Any) -> Result | LineError:
    """The service's complete answer to `job`. A 405, or a 404 whose error names no
    parameter (no such route, as opposed to e.g. no such model), means the URL is
    not served: the line could not be executed."""
    status = int(answer.status)
    body, peek = _answer_body(bytes(answer.body), str(answer.content_type))
    error = peek.error if isinstance(peek.error, dict) else {}
    # (OpenAI's error shape always has "param"; Anthropic's, on /v1/messages, never:
    # there a 404 is an unknown model, the route exists.)
    if status == 405 or (status == 404 and "param" in error and error["param"] is None):
        message = error.get("message") or f"the service does not serve POST {job.url}"
        return LineError(job.line, job.custom_id, ErrorCode.INVALID_URL, str(message))
    usage = peek.usage if isinstance(peek.usage, dict) else {}
    tokens = usage.get("completion_tokens", usage.get("output_tokens"))  # chat / the others
    tokens = tokens if isinstance(tokens, int) else 0
    return Result(job.custom_id, request_id, status, body, tokens)


def _answer_body(body: bytes, content_type: str) -> tuple[Any, _AnswerPeek]:
    """A JSON object body embeds as is (msgspec.Raw: no re-encoding); anything else
    as its text, or null when empty."""
    media = content_type.split(";", 1)[0].strip().lower()
    if body and (media == "application/json" or media.endswith("+json")):
        try:
            return msgspec.Raw(body), _ANSWER.decode(body)
        except msgspec.DecodeError:
            pass
    return (body.decode("utf-8", "replace") or None), _AnswerPeek()


# -- output -------------------------------------------------------------------------------


class _ResponseOut(msgspec.Struct):
    status_code: int
    request_id: str
    body: Any


class _ErrorOut(msgspec.Struct):
    code: str
    message: str
    line: int


class _OutputLine(msgspec.Struct):
    id: str
    custom_id: str | None
    response: _ResponseOut | None
    error: _ErrorOut | None


_ENCODER = msgspec.json.Encoder()


def new_id() -> str:
    """A fresh output line id: `batch_req_<32 hex digits>`."""
    return f"batch_req_{uuid.uuid4().hex}"


def encode_result(line_id: str, result: Result) -> bytes:
    """The output line of an executed request, newline included."""
    response = _ResponseOut(result.status, result.request_id, result.body)
    return _ENCODER.encode(_OutputLine(line_id, result.custom_id, response, None)) + b"\n"


def encode_error(line_id: str, error: LineError) -> bytes:
    """The output line of a line that could not be executed, newline included."""
    out = _ErrorOut(str(error.code), error.message, error.line)
    return _ENCODER.encode(_OutputLine(line_id, error.custom_id, None, out)) + b"\n"
