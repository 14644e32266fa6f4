"""HTTP/1.1 behaviour of the h11 server over real sockets: keep-alive, pipelining,
chunked bodies, 100-continue, limits, timeouts, SSE streaming and disconnects."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import h11
import pytest

if TYPE_CHECKING:
    from conftest import FakeService, Reply

pytestmark = pytest.mark.anyio


def assert_openai_error(reply: Reply, status: int) -> None:
    assert reply.status == status
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] is None and error["code"] is None and error["message"]


async def test_keep_alive_serves_two_requests_on_one_connection(
    running: Any, connect: Any, fake: FakeService
) -> None:
    async with running() as server, connect(server) as client:
        first = await client.request("POST", "/v1/a", body=b"one")
        client.next_cycle()
        second = await client.request("POST", "/v1/b?x=1", body=b"two")
    assert (first.status, second.status) == (200, 200)
    assert [r.path for r in fake.requests] == ["/v1/a", "/v1/b"]
    assert second.json()["body"] == "two"
    assert "connection" not in second.headers
    assert second.headers["x-service"] == "fake"


async def test_pipelined_requests_are_answered_in_order(
    running: Any, connect: Any, fake: FakeService
) -> None:
    fake.slow_delay = 0.2  # the second request arrives while the first is computed
    raw = (
        b"POST /slow HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nfirst"
        b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 6\r\n\r\nsecond"
    )
    async with running() as server, connect(server) as client:
        await client.send_raw(raw)
        client.expect_response_to("POST")
        first = await client.read_response()
        client.next_cycle()
        client.expect_response_to("POST")
        second = await client.read_response()
    assert (first.json()["body"], second.json()["body"]) == ("first", "second")


async def test_chunked_request_body(running: Any, connect: Any) -> None:
    async with running() as server, connect(server) as client:
        await client.send_head("POST", "/echo", [("transfer-encoding", "chunked")])
        await client.send_body(b"hello ", b"chunked ", b"world")
        reply = await client.read_response()
    assert reply.json()["body"] == "hello chunked world"


async def test_expect_100_continue_then_response(running: Any, connect: Any) -> None:
    async with running() as server, connect(server) as client:
        headers = [("content-length", "4"), ("expect", "100-continue")]
        await client.send_head("POST", "/echo", headers)
        informational = await client.next_event()
        assert isinstance(informational, h11.InformationalResponse)
        assert informational.status_code == 100
        await client.send_body(b"body")
        reply = await client.read_response()
    assert reply.json()["body"] == "body"


async def test_declared_body_too_large_is_413_without_reading(
    running: Any, connect: Any, fake: FakeService
) -> None:
    async with running(max_body_size=1000) as server, connect(server) as client:
        headers = [("content-length", "5000"), ("expect", "100-continue")]
        await client.send_head("POST", "/echo", headers)
        reply = await client.read_response()  # no 100 Continue first
        assert await client.closed_within(2.0)
    assert_openai_error(reply, 413)
    assert reply.informational == []
    assert reply.headers["connection"] == "close"
    assert fake.requests == []


async def test_chunked_body_too_large_is_413(running: Any, connect: Any, fake: FakeService) -> None:
    async with running(max_body_size=1000) as server, connect(server) as client:
        await client.send_head("POST", "/echo", [("transfer-encoding", "chunked")])
        await client.send_body(b"x" * 600, b"y" * 600)
        reply = await client.read_response()
        assert await client.closed_within(2.0)
    assert_openai_error(reply, 413)
    assert fake.requests == []


async def test_too_many_headers_is_431(running: Any, connect: Any) -> None:
    headers = [(f"x-h{i}", "v") for i in range(20)]
    async with running(max_header_count=10) as server, connect(server) as client:
        reply = await client.request("GET", "/echo", headers=headers)
        assert await client.closed_within(2.0)
    assert_openai_error(reply, 431)


@pytest.mark.parametrize("terminated", [True, False], ids=["complete", "endless"])
async def test_too_large_headers_are_431(running: Any, connect: Any, terminated: bool) -> None:
    head = b"GET /echo HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 3000
    async with running(max_header_size=1024) as server, connect(server) as client:
        await client.send_raw(head + (b"\r\n\r\n" if terminated else b""))
        reply = await client.read_response()
    assert_openai_error(reply, 431)


async def test_malformed_request_line_is_400(running: Any, connect: Any) -> None:
    async with running() as server, connect(server) as client:
        await client.send_raw(b"THIS IS NOT HTTP\r\n\r\n")
        reply = await client.read_response()
        assert await client.closed_within(2.0)
    assert_openai_error(reply, 400)


async def test_slow_headers_are_cut_off_while_others_are_served(running: Any, connect: Any) -> None:
    head = b"GET /echo HTTP/1.1\r\nhost: test\r\nx-slow: " + b"z" * 100
    async with running(header_timeout=1.0) as server:
        async with connect(server) as slow, connect(server) as normal:
            started = time.monotonic()

            async def dribble() -> None:
                for byte in head:
                    try:
                        await slow.send_raw(bytes([byte]))
                    except (anyio.BrokenResourceError, OSError):
                        return
                    await anyio.sleep(0.2)

            async with anyio.create_task_group() as tg:
                tg.start_soon(dribble)
                await anyio.sleep(0.3)
                before = time.monotonic()
                reply = await normal.request("GET", "/health")
                served_in = time.monotonic() - before
                assert await slow.closed_within(3.0)
                cut_after = time.monotonic() - started
                tg.cancel_scope.cancel()
    assert reply.status == 200
    assert served_in < 0.5
    assert 0.8 < cut_after < 2.5


async def test_idle_keep_alive_connection_is_closed(running: Any, connect: Any) -> None:
    async with running(keep_alive_timeout=0.3) as server, connect(server) as client:
        reply = await client.request("GET", "/health")
        started = time.monotonic()
        assert await client.closed_within(2.0)
    assert reply.status == 200
    assert time.monotonic() - started > 0.2


async def test_connection_beyond_the_limit_gets_503(running: Any, connect: Any) -> None:
    async with running(max_connections=1, retry_after=7) as server:
        async with connect(server) as first:
            assert (await first.request("GET", "/health")).status == 200
            async with connect(server) as second:
                refused = await second.request("GET", "/health")
                assert await second.closed_within(2.0)
        with anyio.fail_after(2.0):
            while server.statistics().connections:
                await anyio.sleep(0.02)
        async with connect(server) as third:
            assert (await third.request("GET", "/health")).status == 200
    assert_openai_error(refused, 503)
    assert refused.headers["retry-after"] == "7"
    assert server.statistics().rejected_connections == 1


async def test_sse_events_arrive_one_by_one(running: Any, connect: Any, fake: FakeService) -> None:
    fake.stream_events, fake.stream_delay = 3, 0.3
    async with running() as server, connect(server) as client:
        await client.send_head("GET", "/stream")
        await client.send_body()
        response = await client.next_event()
        first = await client.next_event()
        sent_at_first = fake.streams[0].sent
        events = [first.data]
        while not isinstance(event := await client.next_event(), h11.EndOfMessage):
            events.append(event.data)
    assert response.status_code == 200
    assert dict(response.headers)[b"content-type"] == b"text/event-stream"
    assert sent_at_first == 1  # the first event came before the stream finished
    assert events == [f'data: {{"n": {n}}}\n\n'.encode() for n in (1, 2, 3)]


async def test_client_disconnect_mid_stream_closes_the_stream(
    running: Any, connect: Any, fake: FakeService
) -> None:
    fake.stream_events, fake.stream_delay = 1000, 0.05
    async with running() as server:
        async with connect(server) as client:
            await client.send_head("GET", "/stream")
            await client.send_body()
            await client.next_event()  # the response head
            await client.next_event()  # one event
        gone_at = time.monotonic()
        with anyio.fail_after(1.0):
            await fake.streams[0].closed.wait()
    stream = fake.streams[0]
    assert stream.closed_at is not None and stream.closed_at - gone_at < 1.0
    assert stream.sent < 1000


async def test_client_disconnect_while_waiting_cancels_the_handler(
    running: Any, connect: Any, fake: FakeService
) -> None:
    fake.slow_delay = 10.0
    async with running() as server:
        async with connect(server) as client:
            await client.send_head("GET", "/slow")
            await client.send_body()
            await anyio.sleep(0.1)
        with anyio.fail_after(1.0):
            while not fake.cancelled:
                await anyio.sleep(0.01)
    assert fake.cancelled == [fake.requests[0].request_id]


async def test_connection_close_is_honoured(running: Any, connect: Any) -> None:
    async with running() as server, connect(server) as client:
        reply = await client.request("GET", "/health", headers=[("connection", "close")])
        assert await client.closed_within(2.0)
    assert reply.status == 200
    assert reply.headers["connection"] == "close"


async def test_slow_body_is_cut_off(running: Any, connect: Any, fake: FakeService) -> None:
    async with running(body_timeout=0.5) as server, connect(server) as client:
        await client.send_head("POST", "/echo", [("content-length", "10")])
        await client.send_raw(b"x")
        assert await client.closed_within(2.0)
    assert fake.requests == []


async def test_silent_new_connection_is_closed_after_the_idle_timeout(
    running: Any, connect: Any
) -> None:
    async with running(keep_alive_timeout=0.3) as server, connect(server) as client:
        assert await client.closed_within(2.0)


async def test_a_client_that_stops_reading_stalls_only_its_own_response(
    running: Any, connect: Any, fake: FakeService
) -> None:
    fake.stream_events, fake.stream_padding = 10_000, 256 * 1024
    async with running(send_timeout=0.5) as server:
        async with connect(server) as stalled, connect(server) as other:
            await stalled.send_head("GET", "/stream")
            await stalled.send_body()  # and never reads
            await anyio.sleep(0.2)
            before = time.monotonic()
            reply = await other.request("GET", "/health")
            served_in = time.monotonic() - before
            with anyio.fail_after(3.0):
                await fake.streams[0].closed.wait()
    assert reply.status == 200
    assert served_in < 0.5
    assert fake.streams[0].sent < 10_000


async def test_a_service_that_raises_gets_a_500(running: Any, connect: Any) -> None:
    async with running() as server, connect(server) as client:
        reply = await client.request("POST", "/boom", body=b"{}")
        client.next_cycle()
        after = await client.request("GET", "/health")
    assert_openai_error(reply, 500)
    assert after.status == 200


async def test_an_answer_of_the_wrong_shape_gets_a_500(running: Any, connect: Any) -> None:
    class Confused:
        async def handle(self, request: Any) -> object:
            return object()

    async with running(Confused()) as server, connect(server) as client:
        reply = await client.request("GET", "/anything")
        assert await client.closed_within(2.0)
    assert_openai_error(reply, 500)
