"""The Unix-socket sidecar: peer credentials (SO_PEERCRED) logged per connection and
in the access log, the uid allow-list (403 without reading the request), the
`--uds-mode` / `--uds-allow-uid` flags, and a real `python -m llmcore.http --uds`
process driven by the official `openai` client through an httpx transport bound to
the socket.

Already covered in test_lifecycle.py, so not repeated here: mode 0600 by default
and 0660 when widened (test_uds_mode_can_be_widened), a stale socket file replaced
and a live one refused with "another server is listening on PATH" (FakeService)."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import transports.http.config as http_config
from llmcore.cli.serve import build_http_config, build_parser
from llmcore.http import main
from transports.http import HTTPConfig
from transports.http.peers import PEERCRED_SUPPORTED, PeerCredentials, check_peer

if TYPE_CHECKING:
    from conftest import FakeService

needs_peercred = pytest.mark.skipif(not PEERCRED_SUPPORTED, reason="no SO_PEERCRED here")
ME = PeerCredentials(os.getpid(), os.getuid(), os.getgid())


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "llm.sock"


# -- peer credentials and the uid allow-list (FakeService) ---------------------------------


@needs_peercred
@pytest.mark.anyio
async def test_peer_credentials_are_logged_per_connection_and_in_the_access_log(
    running: Any, connect_unix: Any, sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmcore.http")
    async with running(uds=str(sock_path)), connect_unix(sock_path) as client:
        assert (await client.request("GET", "/health")).status == 200
        client.next_cycle()  # the same connection: one "uds connection" line
        assert (await client.request("POST", "/echo", body=b"x")).status == 200
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count(f"uds connection from {ME}") == 1  # once per connection
    access = [record for record in caplog.records if record.getMessage().startswith('"')]
    assert len(access) == 2
    assert all(re.search(rf" uid={ME.uid}( |$)", r.getMessage()) for r in access)
    assert all(getattr(r, "uid", None) == ME.uid for r in access)


@pytest.mark.anyio
async def test_tcp_connections_have_no_peer_uid(
    running: Any, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llmcore.http")
    async with running() as server, connect(server) as client:
        assert (await client.request("GET", "/health")).status == 200
    messages = [record.getMessage() for record in caplog.records]
    assert not any("uid=" in message for message in messages)


@needs_peercred
@pytest.mark.anyio
async def test_an_allowed_uid_is_served(
    running: Any, connect_unix: Any, sock_path: Path, fake: FakeService
) -> None:
    async with running(uds=str(sock_path), uds_allowed_uids=(ME.uid,)) as server:
        async with connect_unix(sock_path) as client:
            reply = await client.request("POST", "/echo", body=b"let in")
        assert server.statistics().forbidden_connections == 0
    assert reply.status == 200 and reply.json()["body"] == "let in"
    assert len(fake.requests) == 1


@needs_peercred
@pytest.mark.anyio
async def test_another_uid_gets_403_and_a_closed_connection_unread(
    running: Any,
    connect_unix: Any,
    sock_path: Path,
    fake: FakeService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = ME.uid + 12345
    async with running(uds=str(sock_path), uds_allowed_uids=(other,)) as server:
        async with connect_unix(sock_path) as client:
            client.expect_response_to("GET")  # nothing is sent: the answer comes first
            reply = await client.read_response()
            assert await client.closed_within(2.0)
        assert server.statistics().forbidden_connections == 1
        assert server.statistics().connections == 0  # it never took a connection slot
    assert reply.status == 403
    assert reply.headers["connection"] == "close"
    assert reply.json() == {
        "error": {
            "message": f"uid {ME.uid} may not use this socket",
            "type": "permission_error",
            "param": None,
            "code": None,
        }
    }
    assert fake.requests == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"refused uds connection from {ME}: uid {ME.uid} may not use this socket" in warnings


@needs_peercred
@pytest.mark.anyio
async def test_a_refused_peer_that_sends_a_request_still_gets_403(
    running: Any, connect_unix: Any, sock_path: Path, fake: FakeService
) -> None:
    async with running(uds=str(sock_path), uds_allowed_uids=(ME.uid + 1,)):
        async with connect_unix(sock_path) as client:
            reply = await client.request("POST", "/echo", body=b"ignored")
            assert await client.closed_within(2.0)
    assert reply.status == 403
    assert fake.requests == []


def test_unreadable_credentials_fail_closed_only_with_an_allow_list() -> None:
    class Unreadable:
        family = socket.AF_UNIX

        def getsockopt(self, *args: Any) -> bytes:
            raise OSError("nope")

    class Stream:
        def extra(self, attribute: Any, default: Any = None) -> Any:
            return Unreadable()

    stream: Any = Stream()
    if PEERCRED_SUPPORTED:
        refused = check_peer(stream, (ME.uid,))
        assert refused.peer is None and refused.refusal and "nope" in refused.refusal
    assert check_peer(stream, ()).refusal is None


# -- configuration and flags ------------------------------------------------------------------


def test_config_checks_the_allow_list(sock_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="needs a Unix socket"):
        HTTPConfig(uds_allowed_uids=(1,))
    with pytest.raises(ValueError, match="uids"):
        HTTPConfig(uds=str(sock_path), uds_allowed_uids=(-1,))
    monkeypatch.setattr(http_config, "PEERCRED_SUPPORTED", False)
    with pytest.raises(ValueError, match="SO_PEERCRED"):
        HTTPConfig(uds=str(sock_path), uds_allowed_uids=(1,))
    assert HTTPConfig(uds=str(sock_path)).uds_allowed_uids == ()  # no list: fine anywhere


def test_flags_reach_the_config(sock_path: Path) -> None:
    argv = ["--uds", str(sock_path), "--uds-mode", "0660", "--uds-allow-uid", "1000,1001"]
    config = build_http_config(build_parser().parse_args([*argv, "--uds-allow-uid", "7"]))
    assert config.uds_mode == 0o660
    assert config.uds_allowed_uids == (1000, 1001, 7)
    default = build_http_config(build_parser().parse_args(["--uds", str(sock_path)]))
    assert (default.uds_mode, default.uds_allowed_uids) == (0o600, ())


def test_environment_sets_the_flags(sock_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCORE_UDS_MODE", "0640")
    monkeypatch.setenv("LLMCORE_UDS_ALLOW_UID", "5, 6")
    config = build_http_config(build_parser().parse_args(["--uds", str(sock_path)]))
    assert (config.uds_mode, config.uds_allowed_uids) == (0o640, (5, 6))


def test_bad_flag_values_are_refused(sock_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--uds-mode", "0986"])
    assert exit_info.value.code == 2
    assert "not an octal mode: '0986'" in capsys.readouterr().err
    assert main(["--uds", str(sock_path), "--uds-allow-uid", "www"]) == 2
    assert "--uds-allow-uid takes numeric uids, not 'www'" in capsys.readouterr().err


def test_allow_list_is_refused_at_startup_without_peercred(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(http_config, "PEERCRED_SUPPORTED", False)
    assert main(["--uds", str(sock_path), "--uds-allow-uid", "1000"]) == 2  # before loading
    assert "SO_PEERCRED" in capsys.readouterr().err
    assert not sock_path.exists()


# -- a real server on a Unix socket ----------------------------------------------------------

MODEL = "SmolLM2-135M-Instruct"
START_TIMEOUT = 120


class UnixServer:
    """`python -m llmcore.http --uds PATH` in a subprocess, its stderr drained by a
    thread (so debug logging can never fill the pipe and stall the server)."""

    def __init__(self, path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.path = path
        clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMCORE_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmcore.http", "--uds", str(path), *args],
            stderr=subprocess.PIPE,
            text=True,
            env={**clean, **(env or {})},
        )
        self.lines: list[str] = []
        self.serving = False
        self._settled = threading.Event()  # serving, or exited
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self._settled.wait(START_TIMEOUT)
        if not self.serving:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + self.log)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if re.search(r"llmcore serving .* at http\+unix://", line):
                self.serving = True
                self._settled.set()
        self._settled.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=5)
        return code


@pytest.fixture(scope="module")
def real_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A socket file nobody listens on (left by a server that died)."""
    path = tmp_path_factory.mktemp("uds") / "llm.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    return path


@pytest.fixture(scope="module")
def real_server(real_path: Path) -> Iterator[UnixServer]:
    """Started on top of a stale socket file; lets in only our uid (through the
    environment) and logs at debug, so the peer lines can be checked."""
    pytest.importorskip("openai")
    allow = {"LLMCORE_UDS_ALLOW_UID": str(os.getuid())} if PEERCRED_SUPPORTED else {}
    server = UnixServer(
        real_path, "--kv-cache-memory", "256MiB", "--log-level", "debug", env=allow
    )  # fmt: skip
    yield server
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(real_server: UnixServer) -> Iterator[Any]:
    openai = pytest.importorskip("openai")
    httpx2 = pytest.importorskip("httpx2")  # the openai package's HTTP client
    transport = httpx2.HTTPTransport(uds=str(real_server.path))
    http_client = httpx2.Client(transport=transport, timeout=60.0)
    yield openai.OpenAI(
        base_url="http://localhost/v1", api_key="x", http_client=http_client, max_retries=0
    )
    http_client.close()


@pytest.mark.slow
def test_real_server_replaced_the_stale_socket_with_a_0600_one(
    real_server: UnixServer, real_path: Path
) -> None:
    st = os.stat(real_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(str(real_path))  # the stale file refused this; now a server answers


@pytest.mark.slow
def test_real_server_models_and_chat(client: Any) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL, "all-MiniLM-L6-v2"]
    vectors = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a", "b"])
    assert [len(d.embedding) for d in vectors.data] == [384, 384]
    messages = [{"role": "user", "content": "Name a colour."}]
    full = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0
    )
    text = full.choices[0].message.content
    assert text and full.usage.completion_tokens <= 8
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


@pytest.mark.slow
@needs_peercred
def test_real_server_logs_the_peer(real_server: UnixServer, client: Any) -> None:
    client.models.list()
    deadline = time.monotonic() + 5
    while '"GET /v1/models" 200' not in real_server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    peer = rf"uds connection from pid=\d+ uid={os.getuid()} gid={os.getgid()}"
    assert re.search(peer, real_server.log)
    assert re.search(rf'"GET /v1/models" 200 .* uid={os.getuid()}', real_server.log)


@pytest.mark.slow
def test_a_second_server_on_the_live_socket_exits_2(real_server: UnixServer) -> None:
    """The socket is bound before any model loads: the live socket is the error even
    though the second server's model path does not exist."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMCORE_")}
    argv = ["/nonexistent/model.gguf", "--uds", str(real_server.path)]
    second = subprocess.run(
        [sys.executable, "-m", "llmcore.http", *argv],
        capture_output=True,
        text=True,
        env=clean,
        timeout=START_TIMEOUT,
    )
    assert second.returncode == 2, second.stderr
    assert f"another server is listening on {real_server.path}" in second.stderr
    assert "Traceback" not in second.stderr
    assert real_server.proc.poll() is None and real_server.path.exists()  # ours still


@pytest.mark.slow
def test_real_server_sigterm_exits_0_and_removes_the_socket(real_server: UnixServer) -> None:
    assert real_server.stop() == 0
    assert not real_server.path.exists()
