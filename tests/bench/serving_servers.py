"""Server subprocesses for the serving benchmarks: `python -m llmcore.http`, llama.cpp's
`llama-server` binary and llama-cpp-python's `python -m llama_cpp.server`, each
started with its output in a log file, known ready when it says so (llmcore) or
answers `GET /v1/models` (the others), and measured from /proc: CPU seconds and
resident memory of the server and its children.

A `Server` is stopped with SIGINT (all three shut down cleanly on it), then killed
if it has not exited in 30 s.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STARTUP_TIMEOUT = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# "llmcore serving NAME[, NAME...] at URL": the chat model is named first.
LLMCORE_READY = re.compile(r"llmcore serving ([^,\s]+)\S*(?:, \S+)* at (http://\S+)")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(slots=True)
class Server:
    process: subprocess.Popen[bytes]
    log_path: Path
    name: str  # the model name requests carry
    host: str
    port: int

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its children so far."""
        total = 0
        for pid in process_tree(self.process.pid):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(stat[11]) + int(stat[12])
        return total / CLK_TCK

    def rss_bytes(self) -> int:
        """Resident memory (VmRSS) of the server and its children now."""
        return 1024 * sum(_status_kib(p, "VmRSS") for p in process_tree(self.process.pid))

    def peak_rss_bytes(self) -> int:
        """The high-water mark of resident memory (VmHWM), summed over the tree."""
        return 1024 * sum(_status_kib(p, "VmHWM") for p in process_tree(self.process.pid))

    def get_json(self, path: str) -> object:
        return self._call("GET", path, None)

    def post_json(self, path: str, request: object) -> object:
        return self._call("POST", path, json.dumps(request).encode())

    def _call(self, method: str, path: str, body: bytes | None) -> object:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            headers = {"content-type": "application/json"} if body is not None else {}
            conn.request(method, path, body, headers)
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                raise OSError(f"{method} {path}: HTTP {response.status}: {answer[:200]!r}")
            return json.loads(answer)
        finally:
            conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _popen(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _wait(process: subprocess.Popen[bytes], log_path: Path, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if ready():
            return
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}): see {log_path}")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not start in {STARTUP_TIMEOUT:.0f} s: see {log_path}")


def start_llmcore(args: list[str], log_path: Path, python: str = sys.executable) -> Server:
    """`python -m llmcore.http --port 0 ARGS`, ready when it logs where it serves
    (every server process of an `--api-server-count N` in ARGS)."""
    process = _popen([python, "-m", "llmcore.http", "--port", "0", *args], log_path)
    found: list[re.Match[str]] = []
    count = _last_value(args, "--api-server-count", 1)

    def ready() -> bool:
        matches = list(LLMCORE_READY.finditer(log_path.read_text(errors="replace")))
        if len(matches) >= count:
            found.append(matches[0])
        return bool(found)

    _wait(process, log_path, ready)
    host, _, port = found[0].group(2).removeprefix("http://").rpartition(":")
    return Server(process, log_path, found[0].group(1), host, int(port))


def _last_value(args: list[str], flag: str, default: int) -> int:
    """The value of an int flag in `args` (the last one given wins, as in argparse)."""
    values = [int(args[i + 1]) for i, a in enumerate(args[:-1]) if a == flag]
    values += [int(a.split("=", 1)[1]) for a in args if a.startswith(flag + "=")]
    return values[-1] if values else default


def start_foreign(command: list[str], port: int, log_path: Path) -> Server:
    """A server that listens on 127.0.0.1:`port` once `command` has started it; ready
    when `GET /v1/models` answers 200 (llama-server answers 503 while loading). The
    model name requests carry is the first it lists."""
    process = _popen(command, log_path)
    server = Server(process, log_path, "", "127.0.0.1", port)

    def ready() -> bool:
        try:
            listing = server.get_json("/v1/models")
        except (OSError, ValueError, http.client.HTTPException):
            return False
        assert isinstance(listing, dict)
        server.name = str(listing["data"][0]["id"])
        return True

    _wait(process, log_path, ready)
    return server


def llama_server_command(binary: str, model: Path, port: int, n_ctx: int, slots: int) -> list[str]:
    """llama.cpp's own server: `slots` parallel sequences (continuous batching), the
    context split between them, 2 threads for decode and prefill, no web UI."""
    return [
        binary, "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--ctx-size", str(n_ctx), "--parallel", str(slots), "--threads", "2",
        "--threads-batch", "2", "--no-webui",
    ]  # fmt: skip


def llamacpp_python_command(python: str, model: Path, port: int, n_ctx: int) -> list[str]:
    """llama-cpp-python's server: one sequence at a time (a lock around one
    `Llama`); `--interrupt_requests False` so a new request queues instead of cutting
    the streaming one short."""
    return [
        python, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "2",
        "--n_threads_batch", "2", "--interrupt_requests", "False",
    ]  # fmt: skip


def stop_server(server: Server) -> int:
    server.process.send_signal(signal.SIGINT)
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return server.process.wait()


def log_problems(log_path: Path) -> list[str]:
    problems = []
    for line in log_path.read_text(errors="replace").splitlines():
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Exception", line):
            problems.append(line)
    return problems
