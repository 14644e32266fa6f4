"""Listening on a Unix domain socket, graceful shutdown, and the `serve` entry."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import h11
import pytest

from transports.http import AddressInUseError, HTTPConfig, HTTPServer, serve

if TYPE_CHECKING:
    from conftest import FakeService

pytestmark = pytest.mark.anyio


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "llm.sock"


# -- Unix domain socket -------------------------------------------------------------------


async def test_uds_serves_with_mode_0600_and_is_removed(
    running: Any, connect_unix: Any, sock_path: Path
) -> None:
    async with running(uds=str(sock_path)) as server:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        assert server.urls == [f"http+unix://{str(sock_path).replace('/', '%2F')}"]
        async with connect_unix(sock_path) as client:
            reply = await client.request("POST", "/echo", body=b"over uds")
    assert reply.json()["body"] == "over uds"
    assert not sock_path.exists()


async def test_uds_mode_can_be_widened(running: Any, sock_path: Path) -> None:
    async with running(uds=str(sock_path), uds_mode=0o660):
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660


async def test_stale_uds_file_is_replaced(running: Any, connect_unix: Any, sock_path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # the file stays: a server that died without cleaning up
    assert sock_path.exists()
    async with running(uds=str(sock_path)), connect_unix(sock_path) as client:
        assert (await client.request("GET", "/health")).status == 200


async def test_live_uds_is_refused(running: Any, connect_unix: Any, sock_path: Path) -> None:
    async with running(uds=str(sock_path)):
        with pytest.raises(AddressInUseError, match=f"another server is listening on {sock_path}"):
            async with running(uds=str(sock_path)):
                pass
        async with connect_unix(sock_path) as client:
            assert (await client.request("GET", "/health")).status == 200  # still ours


async def test_uds_path_that_is_not_a_socket_is_left_alone(running: Any, sock_path: Path) -> None:
    sock_path.write_text("precious")
    with pytest.raises(FileExistsError):
        async with running(uds=str(sock_path)):
            pass
    assert sock_path.read_text() == "precious"


# -- graceful shutdown ----------------------------------------------------------------------


async def test_shutdown_lets_in_flight_requests_finish_and_refuses_new_ones(
    running: Any, connect: Any, fake: FakeService
) -> None:
    fake.slow_delay = 0.4
    async with running() as server, connect(server) as client:
        port = server.port
        await client.send_head("GET", "/slow")
        await client.send_body()
        await anyio.sleep(0.1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.shutdown, 5.0)
            await anyio.sleep(0.1)
            with pytest.raises(OSError):
                await anyio.connect_tcp("127.0.0.1", port)
            reply = await client.read_response()
            assert await client.closed_within(2.0)
    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    assert fake.cancelled == []


async def test_shutdown_cancels_what_outlives_the_grace_period(
    running: Any, connect: Any, fake: FakeService
) -> None:
    fake.stream_events, fake.stream_delay = 1000, 0.05
    async with running() as server, connect(server) as client:
        await client.send_head("GET", "/stream")
        await client.send_body()
        await client.next_event()
        await client.next_event()
        started = time.monotonic()
        await server.shutdown(0.3)
        took = time.monotonic() - started
        assert await client.closed_within(1.0)
    assert 0.25 < took < 2.0
    assert fake.streams[0].closed.is_set()
    assert fake.streams[0].sent < 1000


async def test_shutdown_closes_idle_connections_at_once(running: Any, connect: Any) -> None:
    async with running() as server, connect(server) as client:
        assert (await client.request("GET", "/health")).status == 200
        started = time.monotonic()
        await server.shutdown(10.0)
        took = time.monotonic() - started
        assert await client.closed_within(1.0)
    assert took < 1.0


async def test_shutdown_of_a_partial_request_waits_for_it(running: Any, connect: Any) -> None:
    async with running() as server, connect(server) as client:
        await client.send_head("POST", "/echo", [("content-length", "4")])
        await anyio.sleep(0.05)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.shutdown, 5.0)
            await anyio.sleep(0.1)
            await client.send_body(b"late")
            reply = await client.read_response()
    assert reply.json()["body"] == "late"


# -- serve() -------------------------------------------------------------------------------


async def test_serve_reports_urls_and_stops_when_cancelled(fake: FakeService) -> None:
    seen: list[list[str]] = []
    ready = anyio.Event()

    def on_ready(urls: list[str]) -> None:
        seen.append(urls)
        ready.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(fake, HTTPConfig(port=0), ready=on_ready))
        await ready.wait()
        port = int(seen[0][0].rsplit(":", 1)[1])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(method="GET", target="/ping", headers=[("host", "t")])
            await stream.send(conn.send(request) + conn.send(h11.EndOfMessage()))
            conn.receive_data(await stream.receive())
            response = conn.next_event()
        tg.cancel_scope.cancel()
    assert isinstance(response, h11.Response) and response.status_code == 200
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", port)


async def test_start_twice_is_an_error(fake: FakeService) -> None:
    async with HTTPServer(fake, HTTPConfig(port=0)) as server:
        async with anyio.create_task_group() as tg:
            with pytest.raises(RuntimeError, match="already"):
                await server.start(tg)
