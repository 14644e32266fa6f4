"""The batch file format: checking input lines, splitting a byte stream into numbered
lines, and the two shapes of output line."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import anyio
import pytest

from transports.jsonl.lines import (
    ErrorCode,
    Job,
    LineError,
    Result,
    encode_error,
    encode_result,
    parse_line,
    read_answer,
)
from transports.jsonl.source import read_lines


def _line(**fields: object) -> bytes:
    base: dict[str, object] = {"custom_id": "r1", "method": "POST",
                               "url": "/v1/completions", "body": {"prompt": "hi"}}  # fmt: skip
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_a_good_line_becomes_a_job_with_the_body_bytes_untouched() -> None:
    data = (
        b'{"custom_id": "a", "method": "POST", "url": "/v1/completions?x=1", '
        b'"body": {"prompt": "hi",  "max_tokens": 2}}'
    )
    job = parse_line(7, data)
    assert job == Job(7, "a", "/v1/completions", b'{"prompt": "hi",  "max_tokens": 2}')


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"{not json", ErrorCode.INVALID_JSON, "not valid JSON"),
        (b'["a", 1]', ErrorCode.INVALID_JSON, "not a JSON object"),
        (_line(custom_id=...), ErrorCode.INVALID_LINE, "custom_id is missing"),
        (_line(custom_id=5), ErrorCode.INVALID_LINE, "custom_id must be a string, not 5"),
        (_line(custom_id=""), ErrorCode.INVALID_LINE, 'custom_id must be a string, not ""'),
        (_line(method=...), ErrorCode.INVALID_METHOD, "method is missing"),
        (_line(method="GET"), ErrorCode.INVALID_METHOD, 'method must be POST, not "GET"'),
        (_line(url=...), ErrorCode.INVALID_URL, "url is missing"),
        (_line(url="v1/x"), ErrorCode.INVALID_URL, "url must be a path"),
        (_line(body=...), ErrorCode.INVALID_LINE, "body is missing"),
        (_line(body=None), ErrorCode.INVALID_LINE, "body must be a JSON object"),
        (_line(body=[1, 2]), ErrorCode.INVALID_LINE, "body must be a JSON object"),
        (_line(body={"stream": True}), ErrorCode.STREAM_UNSUPPORTED, '"stream": true'),
    ],
)
def test_bad_lines_say_why(data: bytes, code: ErrorCode, message: str) -> None:
    error = parse_line(3, data)
    assert isinstance(error, LineError)
    assert (error.line, error.code) == (3, code)
    assert message in error.message


def test_an_error_keeps_a_usable_custom_id() -> None:
    error = parse_line(1, _line(method="GET"))
    assert isinstance(error, LineError) and error.custom_id == "r1"
    error = parse_line(1, _line(custom_id=["x"], method="GET"))
    assert isinstance(error, LineError) and error.custom_id is None


def test_stream_false_is_fine() -> None:
    assert isinstance(parse_line(1, _line(body={"stream": False})), Job)


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


JOB = Job(4, "c4", "/v1/x", b"{}")


def test_a_404_without_a_param_is_an_unknown_url_but_with_one_it_is_a_response() -> None:
    route = b'{"error": {"message": "no route POST /v1/x", "param": null}}'
    error = read_answer(JOB, "req", _Answer(404, route))
    assert isinstance(error, LineError)
    assert (error.code, error.message, error.line) == (
        ErrorCode.INVALID_URL,
        "no route POST /v1/x",
        4,
    )
    model = b'{"error": {"message": "no such model", "param": "model"}}'
    result = read_answer(JOB, "req", _Answer(404, model))
    assert isinstance(result, Result) and result.status == 404 and not result.ok
    assert isinstance(read_answer(JOB, "req", _Answer(405, b"")), LineError)


def test_anthropic_answers_an_unknown_model_404_and_output_tokens() -> None:
    """Anthropic's error shape (/v1/messages) has no param: its 404 is a response."""
    model = b'{"type": "error", "error": {"type": "not_found_error", "message": "no model"}}'
    result = read_answer(JOB, "req", _Answer(404, model))
    assert isinstance(result, Result) and result.status == 404 and not result.ok
    message = _Answer(200, b'{"content": [], "usage": {"input_tokens": 3, "output_tokens": 7}}')
    result = read_answer(JOB, "req", message)
    assert isinstance(result, Result) and result.completion_tokens == 7


def test_output_lines_have_the_openai_shape_and_embed_the_body() -> None:
    answer = _Answer(200, b'{"choices": [], "usage": {"completion_tokens": 9}}')
    result = read_answer(JOB, "req-1", answer)
    assert isinstance(result, Result) and result.completion_tokens == 9
    data = encode_result("batch_req_1", result)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == {
        "id": "batch_req_1",
        "custom_id": "c4",
        "response": {"status_code": 200, "request_id": "req-1",
                     "body": {"choices": [], "usage": {"completion_tokens": 9}}},
        "error": None,
    }  # fmt: skip
    error = encode_error("batch_req_2", LineError(5, None, ErrorCode.INVALID_JSON, "bad"))
    assert json.loads(error) == {
        "id": "batch_req_2",
        "custom_id": None,
        "response": None,
        "error": {"code": "invalid_json_line", "message": "bad", "line": 5},
    }


def test_a_body_that_is_not_json_is_embedded_as_text() -> None:
    result = read_answer(JOB, "r", _Answer(200, b"", "text/plain"))
    assert isinstance(result, Result) and result.body is None
    result = read_answer(JOB, "r", _Answer(500, b"oops", "application/json"))
    assert isinstance(result, Result)
    assert json.loads(encode_result("i", result))["response"]["body"] == "oops"


# -- read_lines -------------------------------------------------------------------------


async def _split(chunks: list[bytes], max_line_bytes: int = 100) -> list[tuple[int, bytes | None]]:
    send, receive = anyio.create_memory_object_stream[bytes](math.inf)
    for chunk in chunks:
        send.send_nowait(chunk)
    send.close()
    return [(raw.number, raw.data) async for raw in read_lines(receive, max_line_bytes)]


@pytest.mark.anyio
async def test_lines_across_chunks_with_crlf_bom_blank_and_no_final_newline() -> None:
    chunks = [b"\xef\xbb\xbfone\r", b"\ntw", b"o\n\n", b"th", b"ree"]
    assert await _split(chunks) == [(1, b"one"), (2, b"two"), (3, b""), (4, b"three")]


@pytest.mark.anyio
async def test_an_overlong_line_is_reported_and_skipped_whatever_the_chunking() -> None:
    long = b"x" * 25
    assert await _split([b"ok\n" + long + b"\nok2\n"], 10) == [(1, b"ok"), (2, None), (3, b"ok2")]
    pieces = [long[i : i + 4] for i in range(0, 25, 4)]
    assert await _split([b"a\n", *pieces, b"\nb"], 10) == [(1, b"a"), (2, None), (3, b"b")]
    assert await _split([long], 10) == [(1, None)]
    assert await _split([b"x" * 10 + b"\n"], 10) == [(1, b"x" * 10)]
