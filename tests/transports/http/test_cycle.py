"""The sans-IO request cycle (`HTTPCycle`), driven byte by byte as h11 tests its
connection: no socket, no clock, no sleeps. Each test feeds request bytes, reads
the actions, and parses the bytes the cycle framed with an h11 client."""

from __future__ import annotations

import json
from typing import Any

import h11
import pytest

from transports.http.admission import RequestAdmission
from transports.http.config import HTTPConfig
from transports.http.cycle import (
    READ_AHEAD_LIMIT,
    Action,
    Close,
    Dispatch,
    HTTPCycle,
    ReadMore,
    Respond,
    SendBytes,
    Wait,
)
from transports.http.framing import complete_response, response_headers

GET = b"GET /v1/models HTTP/1.1\r\nhost: t\r\n\r\n"


def make_cycle(draining: list[bool] | None = None, **options: Any) -> HTTPCycle:
    config = HTTPConfig(**options)
    flag = draining if draining is not None else [False]
    return HTTPCycle(config, RequestAdmission(config), draining=lambda: flag[0])


def post(body: bytes, *headers: bytes, path: bytes = b"/v1/x") -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    length = b"content-length: %d\r\n" % len(body)
    return b"POST " + path + b" HTTP/1.1\r\nhost: t\r\n" + length + extra + b"\r\n" + body


def feed(cycle: HTTPCycle, data: bytes) -> Action:
    cycle.receive_data(data)
    return cycle.next_action()


def answer(cycle: HTTPCycle, status: int = 200, body: bytes = b"{}") -> bytes:
    """Frame a complete response to the dispatched request, as the writer does."""
    headers = response_headers("application/json", [], length=len(body), close=False)
    data = cycle.frame(*complete_response(status, headers, body))
    cycle.response_done(completed=True)
    return data


def parse(data: bytes, method: bytes = b"GET") -> list[Any]:
    """The events a client reads from `data` (after sending one request)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("host", "t")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    events = []
    while (event := client.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
        events.append(event)
        if isinstance(event, h11.EndOfMessage):
            break
    return events


def status_and_headers(data: bytes) -> tuple[int, dict[bytes, bytes]]:
    events = [e for e in parse(data) if isinstance(e, h11.Response)]
    assert len(events) == 1
    return events[0].status_code, dict(events[0].headers)


# -- keep-alive and close ------------------------------------------------------------------


def test_a_request_is_dispatched_and_the_connection_kept() -> None:
    cycle = make_cycle()
    assert cycle.next_action() == ReadMore(Wait.IDLE)
    action = feed(cycle, post(b'{"a": 1}'))
    assert isinstance(action, Dispatch)
    assert (action.head.method, action.head.path, action.body) == ("POST", "/v1/x", b'{"a": 1}')
    status, headers = status_and_headers(answer(cycle))
    assert status == 200 and b"connection" not in headers
    assert cycle.next_action() == ReadMore(Wait.IDLE)


def test_a_head_in_pieces_waits_under_the_header_timeout_then_the_body_timeout() -> None:
    cycle = make_cycle()
    request = post(b"0123456789")
    assert feed(cycle, request[:10]) == ReadMore(Wait.HEAD)
    assert feed(cycle, request[10:-4]) == ReadMore(Wait.BODY)
    assert isinstance(feed(cycle, request[-4:]), Dispatch)


def test_pipelined_requests_wait_for_the_first_answer() -> None:
    cycle = make_cycle()
    first = feed(cycle, post(b"one") + post(b"two"))
    assert isinstance(first, Dispatch) and first.body == b"one"
    with pytest.raises(RuntimeError):
        cycle.next_action()  # the service is answering: nothing else is read
    answer(cycle)
    second = cycle.next_action()
    assert isinstance(second, Dispatch) and second.body == b"two"


def test_connection_close_closes_after_the_answer_and_lingers() -> None:
    cycle = make_cycle()
    assert isinstance(feed(cycle, post(b"x", b"connection: close")), Dispatch)
    status, headers = status_and_headers(answer(cycle))
    assert status == 200 and headers[b"connection"] == b"close"
    assert cycle.next_action() == Close(linger=True)


def test_http_1_0_closes_after_the_answer() -> None:
    cycle = make_cycle()
    assert isinstance(feed(cycle, b"GET /health HTTP/1.0\r\n\r\n"), Dispatch)
    answer(cycle)
    assert cycle.next_action() == Close(linger=True)


def test_an_unfinished_response_aborts() -> None:
    cycle = make_cycle()
    assert isinstance(feed(cycle, GET), Dispatch)
    cycle.response_done(completed=False)
    assert cycle.next_action() == Close(linger=False)


def test_a_failed_write_aborts() -> None:
    cycle = make_cycle()
    assert isinstance(feed(cycle, GET), Dispatch)
    cycle.send_failed()
    assert not cycle.can_respond
    cycle.response_done(completed=True)
    assert cycle.next_action() == Close(linger=False)


def test_end_of_stream_between_requests_closes_quietly() -> None:
    cycle = make_cycle()
    assert feed(cycle, b"") == Close(linger=False)


def test_end_of_stream_mid_body_closes_without_an_answer() -> None:
    cycle = make_cycle()
    assert feed(cycle, post(b"0123456789")[:-3]) == ReadMore(Wait.BODY)
    assert feed(cycle, b"") == Close(linger=False)


def test_end_of_stream_while_the_service_answers_aborts_after_it() -> None:
    cycle = make_cycle()
    assert isinstance(feed(cycle, GET), Dispatch)
    cycle.receive_data(b"")
    assert cycle.client_gone
    answer(cycle)
    assert cycle.next_action() == Close(linger=False)


def test_read_ahead_is_bounded() -> None:
    cycle = make_cycle()
    assert isinstance(feed(cycle, GET), Dispatch)
    assert cycle.read_ahead_room == READ_AHEAD_LIMIT
    cycle.receive_data(b"G" * 1000)
    assert cycle.read_ahead_room == READ_AHEAD_LIMIT - 1000


def test_draining_closes_idle_connections_and_those_that_just_answered() -> None:
    draining = [False]
    cycle = make_cycle(draining)
    assert isinstance(feed(cycle, GET), Dispatch)
    draining[0] = True
    answer(cycle)
    assert cycle.next_action() == Close(linger=True)
    idle = make_cycle(draining)
    assert idle.next_action() == Close(linger=False)


# -- 100-continue --------------------------------------------------------------------------


def test_expect_100_continue_is_answered_once_when_the_body_is_awaited() -> None:
    cycle = make_cycle()
    head = post(b"body", b"expect: 100-continue")[:-4]
    action = feed(cycle, head)
    assert isinstance(action, SendBytes)
    assert action.data.startswith(b"HTTP/1.1 100 ")
    assert cycle.next_action() == ReadMore(Wait.BODY)
    assert feed(cycle, b"bo") == ReadMore(Wait.BODY)
    dispatched = feed(cycle, b"dy")
    assert isinstance(dispatched, Dispatch) and dispatched.body == b"body"


def test_a_refused_request_gets_no_100_continue() -> None:
    cycle = make_cycle(max_body_size=10)
    head = post(b"x" * 50, b"expect: 100-continue")[:-50]
    action = feed(cycle, head)
    assert isinstance(action, Respond) and action.status == 413
    assert b"100 Continue" not in action.data
    assert cycle.next_action() == Close(linger=True)


# -- early answers --------------------------------------------------------------------------


def test_an_early_answer_to_a_complete_request_keeps_the_connection() -> None:
    cycle = make_cycle(api_keys=("secret",))
    action = feed(cycle, post(b'{"a": 1}'))
    assert isinstance(action, Respond) and action.status == 401
    assert action.head is not None and action.head.path == "/v1/x"
    status, headers = status_and_headers(action.data)
    assert status == 401 and b"connection" not in headers
    assert cycle.next_action() == ReadMore(Wait.IDLE)
    authorized = feed(cycle, post(b"{}", b"authorization: Bearer secret"))
    assert isinstance(authorized, Dispatch)


def test_an_early_answer_before_the_body_arrived_closes() -> None:
    cycle = make_cycle(api_keys=("secret",))
    action = feed(cycle, post(b"0123456789")[:-5])
    assert isinstance(action, Respond) and action.status == 401
    assert status_and_headers(action.data)[1][b"connection"] == b"close"
    assert cycle.next_action() == Close(linger=True)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/models HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        b"GET /v1/models HTTP/1.0\r\n\r\n",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_an_early_answer_respects_a_client_that_asked_to_close(request_bytes: bytes) -> None:
    """Defect 4: the cycle must not start a next cycle h11 has marked MUST_CLOSE."""
    cycle = make_cycle(api_keys=("secret",))
    action = feed(cycle, request_bytes)
    assert isinstance(action, Respond) and action.status == 401
    assert status_and_headers(action.data)[1][b"connection"] == b"close"
    assert cycle.next_action() == Close(linger=True)


def test_both_content_length_and_transfer_encoding_is_400_and_closes() -> None:
    """Defect 3: a request smuggled in the body of a doubly framed one is never read."""
    smuggled = b"GET /v1/secret HTTP/1.1\r\nhost: t\r\n\r\n"
    request = (
        b"POST /v1/x HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(smuggled))
    )
    cycle = make_cycle()
    action = feed(cycle, request + smuggled)
    assert isinstance(action, Respond) and action.status == 400
    status, headers = status_and_headers(action.data)
    assert status == 400 and headers[b"connection"] == b"close"
    assert cycle.next_action() == Close(linger=True)
    assert cycle.next_action() == Close(linger=True)  # and nothing more is ever read


@pytest.mark.parametrize("version", [b"2.0", b"3.0", b"0.9"])
def test_an_unsupported_http_version_is_505(version: bytes) -> None:
    cycle = make_cycle()
    action = feed(cycle, b"GET / HTTP/" + version + b"\r\nhost: t\r\n\r\n")
    assert isinstance(action, Respond) and action.status == 505
    assert cycle.next_action() == Close(linger=True)


def test_a_later_minor_version_is_served_as_1_1() -> None:
    cycle = make_cycle()
    assert isinstance(feed(cycle, b"GET / HTTP/1.2\r\nhost: t\r\n\r\n"), Dispatch)


def test_a_malformed_request_line_is_400_and_closes() -> None:
    cycle = make_cycle()
    action = feed(cycle, b"THIS IS NOT HTTP\r\n\r\n")
    assert isinstance(action, Respond) and action.status == 400 and action.head is None
    assert status_and_headers(action.data)[0] == 400
    assert cycle.next_action() == Close(linger=True)


def test_a_chunked_body_over_the_limit_is_413() -> None:
    cycle = make_cycle(max_body_size=100)
    head = b"POST /v1/x HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
    assert feed(cycle, head) == ReadMore(Wait.BODY)
    action = feed(cycle, b"40\r\n" + b"x" * 64 + b"\r\n40\r\n" + b"y" * 64 + b"\r\n")
    assert isinstance(action, Respond) and action.status == 413
    assert cycle.next_action() == Close(linger=True)


def test_a_body_over_the_limit_on_v1_messages_is_anthropics_413() -> None:
    cycle = make_cycle(max_body_size=100)
    head = b"POST /v1/messages HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
    assert feed(cycle, head) == ReadMore(Wait.BODY)
    action = feed(cycle, b"80\r\n" + b"x" * 128 + b"\r\n")
    assert isinstance(action, Respond) and action.status == 413
    body = json.loads(action.data.split(b"\r\n\r\n", 1)[1])
    assert body["type"] == "error" and body["error"]["type"] == "request_too_large"


def test_a_head_too_large_is_431() -> None:
    cycle = make_cycle(max_header_size=1024)
    action = feed(cycle, b"GET / HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 3000)
    assert isinstance(action, Respond) and action.status == 431


# -- timeouts -------------------------------------------------------------------------------


def test_a_stalled_body_gets_408_then_closes() -> None:
    cycle = make_cycle()
    assert feed(cycle, post(b"0123456789")[:-5]) == ReadMore(Wait.BODY)
    action = cycle.timed_out()
    assert isinstance(action, Respond) and action.status == 408
    assert status_and_headers(action.data)[1][b"connection"] == b"close"
    assert cycle.next_action() == Close(linger=True)


def test_a_stalled_head_gets_408_then_closes() -> None:
    cycle = make_cycle()
    assert feed(cycle, GET[:12]) == ReadMore(Wait.HEAD)
    action = cycle.timed_out()
    assert isinstance(action, Respond) and action.status == 408
    assert cycle.next_action() == Close(linger=True)


def test_an_idle_timeout_closes_quietly() -> None:
    cycle = make_cycle()
    assert cycle.next_action() == ReadMore(Wait.IDLE)
    assert cycle.timed_out() == Close(linger=False)
