"""The outside probe's inputs against a real `python -m llmcore.http` process (the
default models), over raw sockets so that every byte is the probe's own: each gets
its 4xx, the server keeps serving, /health answers within a second while maximal
prompts are refused, memory comes back after them, and the server's log holds no
traceback and no internal error for any of it."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest

from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow

API_KEY = "probe-key"
MODEL = "SmolLM2-135M-Instruct"
MAX_BODY = 32 << 20  # the server's default body cap
JSON_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/pooling",
               "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank", "/tokenize",
               "/detokenize"]  # fmt: skip


class Server(ServerProcess):
    def __init__(self, log_path: Path) -> None:
        args = ["--api-key", API_KEY, "--kv-cache-memory", "256MiB", "--max-model-len", "2048",
                "--header-timeout", "2", "--body-timeout", "1"]  # fmt: skip
        super().__init__(log_path, *args)

    def rss(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("probe") / "server.log")
    yield srv
    assert srv.stop() == 0


def request(method: str, path: str, body: bytes = b"", *headers: str, auth: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: probe", *headers]
    if auth:
        lines.append(f"authorization: Bearer {API_KEY}")
    if body or method == "POST":
        lines += ["content-type: application/json", f"content-length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
    return data


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a content-length (the connection stays usable)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1 << 16)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += sock.recv(1 << 16)
    return status, headers, rest[:length]


def exchange(server: Server, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with server.connect() as sock:
        sock.sendall(raw)
        return read_response(sock)


def statuses(data: bytes) -> list[int]:
    """The status of every response in `data`, parsed in sequence by an h11 client."""
    client = h11.Connection(h11.CLIENT)
    client.receive_data(data)
    client.receive_data(b"")
    found = []
    while True:
        client.send(h11.Request(method="GET", target="/", headers=[("host", "probe")]))
        client.send(h11.EndOfMessage())
        while not isinstance(event := client.next_event(), h11.EndOfMessage | h11.ConnectionClosed):
            if isinstance(event, h11.Response):
                found.append(event.status_code)
            assert event is not h11.NEED_DATA, "a response was cut short"
        if isinstance(event, h11.ConnectionClosed) or client.our_state is h11.MUST_CLOSE:
            return found
        client.start_next_cycle()
        if not client.trailing_data[0]:
            return found


# ---- the six defects ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_deep_json_is_400_on_every_route(server: Server, path: str) -> None:
    body = ('{"a":' * 1000 + "1" + "}" * 1000).encode()
    status, _, data = exchange(server, request("POST", path, body))
    assert status == 400, data
    assert json.loads(data)["error"]["type"] == "invalid_request_error"


def test_a_logit_bias_key_of_5000_digits_is_400(server: Server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "logit_bias": {"1" * 5000: 1}, "max_tokens": 1}  # fmt: skip
    status, _, data = exchange(server, request("POST", "/v1/chat/completions",
                                               json.dumps(body).encode()))  # fmt: skip
    assert status == 400 and json.loads(data)["error"]["param"] == "logit_bias"


def test_a_request_framed_two_ways_is_answered_once_and_closed(server: Server) -> None:
    hidden = request("GET", "/v1/models")
    framed = (
        f"POST /v1/completions HTTP/1.1\r\nhost: probe\r\nauthorization: Bearer {API_KEY}\r\n"
        f"content-length: {5 + len(hidden)}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    ).encode()
    with server.connect() as sock:
        sock.sendall(framed + hidden)
        data = read_all(sock)
    assert statuses(data) == [400]  # the hidden request got no answer


@pytest.mark.parametrize(
    "raw",
    [
        request("GET", "/v1/models", b"", "connection: close", auth=False),
        b"GET /v1/models HTTP/1.0\r\n\r\n",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_an_early_answer_to_a_closing_client_logs_no_traceback(server: Server, raw: bytes) -> None:
    for _ in range(20):
        with server.connect() as sock:
            sock.sendall(raw)
            data = read_all(sock)
        assert statuses(data) == [401]
    assert "Traceback" not in server.log


def test_health_answers_within_a_second_while_maximal_prompts_are_refused(
    server: Server,
) -> None:
    filler = "hello world "
    room = MAX_BODY - 200 - len(MODEL)
    body = json.dumps({"model": MODEL, "prompt": filler * (room // len(filler)),
                       "max_tokens": 1}).encode()  # fmt: skip
    assert MAX_BODY - 1000 < len(body) <= MAX_BODY
    exchange(server, request("GET", "/health"))  # warm
    before = server.rss()
    answers: list[int] = []

    def send_maximal_prompts() -> None:
        for _ in range(10):
            answers.append(exchange(server, request("POST", "/v1/completions", body))[0])

    sender = threading.Thread(target=send_maximal_prompts)
    latencies = []
    with server.connect() as health:
        sender.start()
        while sender.is_alive():
            started = time.monotonic()
            health.sendall(request("GET", "/health"))
            assert read_response(health)[0] == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
    sender.join()
    after = server.rss()
    assert answers == [400] * 10
    assert len(latencies) > 10 and max(latencies) < 1.0, latencies
    assert abs(after - before) <= 0.1 * before, (before, after)


def test_a_client_that_leaves_mid_stream_is_logged_as_a_disconnect(server: Server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": 1000, "ignore_eos": True, "stream": True}  # fmt: skip
    sock = server.connect()
    sock.sendall(request("POST", "/v1/chat/completions", json.dumps(body).encode(),
                         "x-request-id: leaves-mid-stream"))  # fmt: skip
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(1 << 16)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset, not a polite close
    deadline = time.monotonic() + 30
    while "leaves-mid-stream" not in server.log and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(line for line in server.log.splitlines() if "leaves-mid-stream" in line)
    assert "INFO" in line and re.search(r"\((client disconnected|client gone)\)", line), line


# ---- the smaller findings ------------------------------------------------------------------------


def test_http_2_0_in_the_request_line_is_505(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /health HTTP/2.0\r\nhost: probe\r\n\r\n")
        assert statuses(read_all(sock)) == [505]


def test_a_body_that_never_arrives_gets_408(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(request("POST", "/v1/completions", b"x" * 10)[:-5])  # 5 never come
        data = read_all(sock)
    assert statuses(data) == [408]


# ---- after everything --------------------------------------------------------------------------


def test_the_log_holds_no_traceback_and_no_internal_error(server: Server) -> None:
    status, _, _ = exchange(server, request("GET", "/health"))
    assert status == 200
    log = server.log
    for marker in ("Traceback", "internal error", "connection failed", "ExceptionGroup"):
        assert marker not in log, log[-5000:]
    assert os.path.getsize(server.log_path) < 1 << 20  # no flood either
