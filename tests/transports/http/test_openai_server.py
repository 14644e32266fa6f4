"""A real `python -m llmcore.http` process on loopback, driven by the official
`openai` client (sync and async, streaming and not) and by raw sockets for what a
client library hides (disconnects, auth on every route, graceful shutdown). It is
the default server: SmolLM2 for chat and all-MiniLM-L6-v2 for embeddings, one
process answering both."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

openai = pytest.importorskip("openai")

API_KEY = "test-key-1"
MODEL = "SmolLM2-135M-Instruct"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"


class ServerProcess:
    def __init__(self, *args: str) -> None:
        env = {**os.environ, "LLMCORE_API_KEY": f"other-key,{API_KEY}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmcore.http", "--port", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log: list[str] = []
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("server exited:\n" + "".join(self.log))
            self.log.append(line)
            match = re.search(r"serving .* at (http://\S+)", line)
            if match:
                return match.group(1)
        raise RuntimeError("server did not start:\n" + "".join(self.log))

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess(
        "--kv-cache-memory", "256MiB", "--max-model-len", "2048", "--header-timeout", "1.5"
    )  # fmt: skip
    yield srv
    assert srv.stop() == 0  # graceful shutdown exits 0


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def _get(server: ServerProcess, path: str, key: str | None = API_KEY) -> tuple[int, bytes]:
    req = urllib.request.Request(server.url + path)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _metric(server: ServerProcess, name: str) -> float:
    _, body = _get(server, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# ---- the openai client -------------------------------------------------------------------


@pytest.mark.slow
def test_models(client: Any) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL, EMBEDDING_MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


@pytest.mark.slow
def test_embeddings_beside_chat_through_the_client(client: Any, minilm_reference: Any) -> None:
    import numpy as np

    _, encode = minilm_reference
    texts = ["The default server embeds.", "It chats too, in the same process."]
    expected = encode(texts)
    default = client.embeddings.create(model=EMBEDDING_MODEL, input=texts)  # base64 inside
    got = np.array([d.embedding for d in default.data])
    assert default.model == EMBEDDING_MODEL and default.usage.prompt_tokens > 0
    assert ((got * expected).sum(1) >= 0.9999).all()
    floats = client.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    assert np.allclose(np.array([d.embedding for d in floats.data]), got, atol=1e-6)
    b64 = client.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="base64")
    raw = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in b64.data]
    assert np.array_equal(np.stack(raw), got.astype(np.float32))
    with pytest.raises(openai.BadRequestError, match=EMBEDDING_MODEL):
        client.embeddings.create(model=MODEL, input="hi")
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content


@pytest.mark.slow
def test_chat_streamed_equals_non_streamed(client: Any) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24,
                                          temperature=0)  # fmt: skip
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert text == choice.message.content
    assert finishes == [choice.finish_reason]
    assert (
        chunks[-1].choices == []
        and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    )


@pytest.mark.slow
def test_completions_with_logprobs_and_n(client: Any) -> None:
    out = client.completions.create(model=MODEL, prompt="The capital of France is",
                                    max_tokens=5, temperature=0, logprobs=2)  # fmt: skip
    assert out.choices[0].text.startswith(" Paris")
    assert len(out.choices[0].logprobs.tokens) == 5
    many = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6,
                                     n=3, temperature=0.9, seed=3)  # fmt: skip
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in many.choices)


@pytest.mark.slow
def test_async_client_streams_concurrently(server: ServerProcess) -> None:
    async def scenario() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)

        async def one(prompt: str) -> str:
            stream = await aclient.completions.create(model=MODEL, prompt=prompt, max_tokens=8,
                                                      temperature=0, stream=True)  # fmt: skip
            return "".join([c.choices[0].text async for c in stream if c.choices])

        try:
            return await asyncio.gather(*(one(p) for p in ("Hello", "The sky is", "1, 2, 3,")))
        finally:
            await aclient.close()

    texts = asyncio.run(scenario())
    assert len(texts) == 3 and all(texts)


@pytest.mark.slow
def test_errors_through_the_client(server: ServerProcess, client: Any) -> None:
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.NotFoundError, match=MODEL):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match=r"2048"):
        client.completions.create(model=MODEL, prompt="hi " * 1000, max_tokens=1500)
    with pytest.raises(openai.BadRequestError, match="tool"):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )


# ---- raw HTTP ----------------------------------------------------------------------------


@pytest.mark.slow
def test_open_and_protected_routes(server: ServerProcess) -> None:
    assert _get(server, "/health", key=None)[0] == 200
    assert _get(server, "/ping", key=None)[0] == 200
    assert _get(server, "/version", key=None)[0] == 200
    for path in ("/v1/models", "/metrics", "/load", "/openapi.json"):
        status, body = _get(server, path, key=None)
        assert status == 401 and json.loads(body)["error"]["type"]
        assert _get(server, path)[0] == 200
    spec = json.loads(_get(server, "/openapi.json")[1])
    assert "/v1/chat/completions" in spec["paths"]


@pytest.mark.slow
def test_client_disconnect_mid_stream_frees_the_kv_cache(server: ServerProcess) -> None:
    body = json.dumps({"model": MODEL, "prompt": "Count to one thousand: 1, 2, 3,",
                       "max_tokens": 1500, "temperature": 0, "stream": True}).encode()  # fmt: skip
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        received = b""
        while received.count(b"data:") < 3:
            received += sock.recv(65536)
        assert _metric(server, "llmcore_num_requests_running") == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _metric(server, "llmcore_num_requests_running") == 0:
            break
        time.sleep(0.05)
    assert _metric(server, "llmcore_num_requests_running") == 0
    assert _metric(server, "llmcore_kv_cache_usage_perc") == 0.0


def _raw(server: ServerProcess, head: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """One request on its own connection (the head says Connection: close): read to EOF."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    response_head, _, response_body = data.partition(b"\r\n\r\n")
    return int(response_head.split(b" ", 2)[1]), json.loads(response_body or b"{}")


@pytest.mark.slow
def test_bad_json_wrong_content_type_and_oversized_body(server: ServerProcess) -> None:
    def head(length: int, content_type: str = "application/json") -> str:
        return (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                f"Authorization: Bearer {API_KEY}\r\nContent-Length: {length}\r\n"
                "Connection: close\r\n\r\n")  # fmt: skip

    status, body = _raw(server, head(9), b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    payload = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1}).encode()
    status, body = _raw(server, head(len(payload), "text/plain"), payload)
    assert status == 415 and "error" in body
    status, body = _raw(server, head(64 << 20), b"")  # refused before the body is sent
    assert status == 413 and "error" in body
    status, _ = _raw(server, head(len(payload)), payload)
    assert status == 200  # and the server still serves


def _post(server: ServerProcess, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(server.url + path, data=json.dumps(payload).encode(),
                                 headers={"Authorization": f"Bearer {API_KEY}",
                                          "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.mark.slow
def test_tokenize_detokenize(server: ServerProcess) -> None:
    tokens = _post(server, "/tokenize", {"model": MODEL, "prompt": "Hello world"})
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 2048
    assert _post(server, "/detokenize", {"model": MODEL, "tokens": tokens["tokens"]}) == {
        "prompt": "Hello world"
    }
    chat = _post(server, "/tokenize",
                 {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})  # fmt: skip
    assert chat["count"] > 3


@pytest.mark.slow
def test_pipelined_requests_are_answered_in_order(server: ServerProcess) -> None:
    request = (f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\r\n"
               "GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 2
    assert data.index(MODEL.encode()) < data.index(b'"version"')


@pytest.mark.slow
def test_slow_headers_are_cut_off_while_others_are_served(server: ServerProcess) -> None:
    """One header byte every 0.1 s: the server closes the connection at its 1.5 s
    header deadline, and serves other clients meanwhile."""
    payload = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 60
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
        slow.settimeout(0.05)
        started = time.monotonic()
        closed_after: float | None = None
        for byte in payload:
            try:
                slow.sendall(bytes([byte]))
                slow.recv(1024)  # EOF (or any answer) means the server gave up on us
                closed_after = time.monotonic() - started
                break
            except TimeoutError:
                pass  # nothing to read: still open
            except OSError:
                closed_after = time.monotonic() - started
                break
            assert _get(server, "/ping", key=None)[0] == 200  # others are not affected
            time.sleep(0.05)
    assert closed_after is not None, "the server kept a dribbling client for 6+ s"
    assert 1.0 < closed_after < 3.0


def test_environment_and_flags(tmp_path: Any) -> None:
    """A flag wins over its LLMCORE_ variable; a bad model path exits 2 with one line."""
    out = subprocess.run(
        [sys.executable, "-m", "llmcore.http", str(tmp_path / "missing.gguf")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "LLMCORE_PORT": "1"},
    )  # fmt: skip
    assert out.returncode == 2 and "does not exist" in out.stderr
    from llmcore.cli.serve import build_parser

    os.environ["LLMCORE_MAX_NUM_SEQS"] = "7"
    try:
        assert build_parser().parse_args([]).max_num_seqs == 7
        assert build_parser().parse_args(["--max-num-seqs", "9"]).max_num_seqs == 9
    finally:
        del os.environ["LLMCORE_MAX_NUM_SEQS"]
