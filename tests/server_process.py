"""`ServerProcess`: a real `python -m llmcore.http` subprocess on loopback, for the
tests and benchmarks that drive the server from outside (the `openai` client, raw
sockets). Its stderr goes to a log file, so a chatty server never blocks on a full
pipe; `url` is known once the server says it is serving."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

_SERVING = re.compile(r"serving .* at (http://\S+)")
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    def __init__(
        self,
        log_path: Path,
        *args: str,
        env: dict[str, str] | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmcore.http", "--port", "0", *args],
            stderr=self._log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.url = self._wait_for_url(startup_timeout)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _SERVING.search(self.log)
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + self.log)
            time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError("server did not start:\n" + self.log)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> int:
        """SIGTERM (a graceful shutdown), then the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._log.close()
        return code


# The embedded SmolLM2 as the end-to-end tests serve it: float32 (the reference
# dtype), a small KV cache, a context that holds every test's conversation.
SMOLLM2_FLAGS = ("--dtype", "float32", "--kv-cache-memory", "256MiB", "--max-model-len", "2048")


@contextlib.contextmanager
def smollm2_server(model: Path, log_dir: Path, *flags: str) -> Iterator[ServerProcess]:
    """A server on SmolLM2 with `flags` beside SMOLLM2_FLAGS; afterwards it must stop
    cleanly (exit 0) with no traceback in its log."""
    server = ServerProcess(log_dir / "server.log", str(model), *SMOLLM2_FLAGS, *flags)
    try:
        yield server
    except BaseException:
        server.stop()  # a failed test leaves no server running for the next ones
        raise
    assert server.stop() == 0
    assert "Traceback" not in server.log


def run_openai(base_url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """`work(client)` with a fresh `openai.AsyncOpenAI` on `base_url`, on a fresh loop."""
    import openai

    async def main() -> T:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="-", max_retries=0,
                                      timeout=600) as client:  # fmt: skip
            return await work(client)

    return asyncio.run(main())
