"""`python -m llmcore.http --engine-process on`, driven by the official `openai`
client: two SmolLM2 models, each engine core in its own process. Chat answers
(plain and streamed) come through the cores; killing one core mid-stream ends
that stream with an error event, turns /health to 503 and refuses that model's
new requests with 503 while the other model keeps serving; SIGTERM then stops
the server (exit 0, no traceback) and the live core with it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.server_process import free_port, run_openai, smollm2_server

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow  # SmolLM2 in two core processes behind a server

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


def test_server_with_engine_processes(smollm2_path: Path, tmp_path: Path) -> None:
    flags = ("--model", str(smollm2_path), "--served-model-name", "a,b",
             "--engine-process", "on")  # fmt: skip
    with smollm2_server(smollm2_path, tmp_path, *flags) as server:
        pids = [int(p) for p in re.findall(r"engine core process (\d+) serves", server.log)]
        assert len(pids) == 2 and server.proc.pid not in pids
        base = server.url + "/v1"
        assert _health(server.url) == 200

        async def answers(client: Any) -> tuple[str, str]:
            plain = await client.chat.completions.create(
                model="a", messages=CHAT, temperature=0, max_tokens=16
            )
            chunks = await client.chat.completions.create(
                model="a", messages=CHAT, temperature=0, max_tokens=16, stream=True
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in chunks
                                if c.choices])  # fmt: skip
            return plain.choices[0].message.content, streamed

        plain, streamed = run_openai(base, answers)
        assert "Paris" in plain and streamed == plain

        async def killed_mid_stream(client: Any) -> str:
            chunks = await client.chat.completions.create(
                model="b", messages=CHAT, max_tokens=1000, stream=True,
                extra_body={"ignore_eos": True},
            )  # fmt: skip
            seen = 0
            start = 0.0
            with pytest.raises(openai.APIError) as failed:
                async for _ in chunks:
                    seen += 1
                    if seen == 3:
                        os.kill(pids[1], signal.SIGKILL)
                        start = time.monotonic()
            assert time.monotonic() - start < 5.0
            return str(failed.value)

        assert "engine core" in run_openai(base, killed_mid_stream)
        assert _health(server.url) == 503

        async def after(client: Any) -> str:
            with pytest.raises(openai.InternalServerError) as refused:
                await client.chat.completions.create(model="b", messages=CHAT, max_tokens=4)
            assert refused.value.status_code == 503
            ok = await client.chat.completions.create(
                model="a", messages=CHAT, temperature=0, max_tokens=16
            )
            return str(ok.choices[0].message.content)

        assert run_openai(base, after) == plain
    assert _gone(pids[0], 5.0) and _gone(pids[1], 1.0)  # the server stopped its live core


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as answer:
        text = answer.read().decode()
    match = re.search(rf"^vllm:{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def test_api_servers_share_one_engine_core(smollm2_path: Path, tmp_path: Path) -> None:
    """`--api-server-count 2` without Ray: two HTTP server processes on one port in
    front of one engine core process. Clients on connections of their own are
    answered by both processes; an extra server killed with streams in flight has
    its requests aborted in the core (every block free again) while the first
    server serves on; SIGTERM stops the server and the core."""
    port = free_port()
    flags = ("--port", str(port), "--api-server-count", "2")
    with smollm2_server(smollm2_path, tmp_path, *flags) as server:
        deadline = time.monotonic() + 120
        while server.log.count("llmcore serving") < 2:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.2)
        cores = [int(p) for p in re.findall(r"engine core process (\d+) serves", server.log)]
        assert len(cores) == 1
        servers = {int(p) for p in re.findall(r"\[api server pid (\d+)\]: llmcore serving",
                                              server.log)}  # fmt: skip
        assert len(servers) == 2 and server.proc.pid in servers
        (extra,) = servers - {server.proc.pid}
        url = f"http://127.0.0.1:{port}"

        async def one(i: int) -> str:
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="-", max_retries=0
                                          ) as client:  # fmt: skip
                chunks = await client.chat.completions.create(
                    model="SmolLM2-135M-Instruct", messages=CHAT, temperature=0,
                    max_tokens=12, stream=True,
                )  # fmt: skip
                return "".join([c.choices[0].delta.content or "" async for c in chunks
                                if c.choices])  # fmt: skip

        async def many(count: int) -> list[str]:
            return list(await asyncio.gather(*(one(i) for i in range(count))))

        answers = asyncio.run(many(16))
        assert all("Paris" in a for a in answers), answers
        served = {int(p) for p in re.findall(
            r'\[api server pid (\d+)\]: "POST /v1/chat/completions" 200', server.log)}  # fmt: skip
        assert served == servers  # the kernel spread the connections over both

        async def killed(i: int) -> str:
            try:
                async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="-",
                                              max_retries=0) as client:  # fmt: skip
                    chunks = await client.chat.completions.create(
                        model="SmolLM2-135M-Instruct", messages=CHAT, max_tokens=60,
                        stream=True, extra_body={"ignore_eos": True},
                    )  # fmt: skip
                    async for _ in chunks:
                        await asyncio.sleep(0)
            except Exception as exc:  # the openai client's error, or its HTTP library's
                return f"cut: {type(exc).__name__}"
            return "done"

        async def kill_extra_mid_stream() -> list[str]:
            tasks = [asyncio.create_task(killed(i)) for i in range(8)]
            while _metric(url, "num_requests_running") < 4:
                await asyncio.sleep(0.05)
            os.kill(extra, signal.SIGKILL)
            return list(await asyncio.gather(*tasks))

        ends = asyncio.run(kill_extra_mid_stream())
        assert "done" in ends and any(e.startswith("cut") for e in ends), ends
        assert _gone(extra, 5.0)  # reaped by the first server
        assert f"API server process {extra} exited (killed by SIGKILL)" in server.log
        deadline = time.monotonic() + 30  # only the first server listens now
        while _metric(url, "num_requests_running") > 0 or _metric(url, "kv_cache_usage_perc") > 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert all("Paris" in a for a in asyncio.run(many(2)))
    assert _gone(cores[0], 5.0)
