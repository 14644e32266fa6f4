"""`llmcore serve --replicas 2 --api-server-count 2`: two HTTP server processes
on one port (SO_REUSEPORT) in front of the same two replicas on a local Ray
instance, driven by the openai client; SIGTERM stops both and the replicas."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest

from tests.server_process import ServerProcess, free_port

pytest.importorskip("ray")
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` and that run an extra server."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"--ray-attach" in cmdline:
            found.append(int(entry.name))
    return found


def test_two_api_servers_share_the_port_and_the_replicas(
    smollm2_path: Path, tmp_path: Path
) -> None:
    port = free_port()
    server = ServerProcess(
        tmp_path / "server.log",
        str(smollm2_path),
        *("--replicas", "2", "--api-server-count", "2", "--port", str(port)),
        *("--kv-cache-memory", "64MiB", "--max-num-seqs", "8"),
    )
    try:
        deadline = time.monotonic() + 120
        while server.log.count("llmcore serving") < 2:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.2)
        extra = _children(server.proc.pid)
        assert len(extra) == 1

        def ask(i: int) -> str | None:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
            with client:  # a connection of its own: the kernel picks the process
                chat = client.chat.completions.create(
                    model="SmolLM2-135M-Instruct",
                    messages=[{"role": "user", "content": f"Say hello to {i}."}],
                    max_tokens=6,
                    temperature=0,
                )
            return chat.choices[0].message.content

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(16)))
        assert all(answers), answers
    finally:
        code = server.stop()
    assert code == 0, server.log
    assert "Traceback" not in server.log
    for pid in extra:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert server.log.count("SIGTERM: shutting down") == 2
