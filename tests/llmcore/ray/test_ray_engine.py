"""`RayEngine` on a simulated two-node Ray cluster (Ray's own `cluster_utils`: a
head without CPUs and two one-CPU nodes, so the two replicas of the embedded model
land on different nodes), behind the real HTTP server and the real openai client.

The server runs on a thread of this process (its own event loop) so the tests can
reach the replicas (kill one) and the router's view of each request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
ENGINE_FLAGS = ["--max-num-seqs", "16", "--kv-cache-memory", "96MiB", "--seed", "0"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    nodes.add_node(num_cpus=1)
    nodes.add_node(num_cpus=1)
    ray.init(address=nodes.address, namespace="llmcore")
    try:
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


class ThreadServer:
    """`llmcore serve`'s service over a `RayEngine`, behind the h11 server on a
    thread of this process."""

    def __init__(self, argv: list[str]) -> None:
        from llmcore.cli.serve import build_parser
        from llmcore.cli.service import build_service

        args = build_parser().parse_args(argv)
        self.loaded = build_service(args)
        self.engine: Any = self.loaded.service.models[0].engine
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(60), "the server did not start"

    async def _main(self) -> None:
        from transports.http import HTTPConfig, HTTPServer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        config = HTTPConfig(host="127.0.0.1", port=0, access_log=False)
        async with HTTPServer(self.loaded.service, config) as server:
            self.url = server.urls[0]
            self._ready.set()
            await self._stop.wait()
        await self.loaded.aclose()

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop (where the engine lives)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def in_flight(self) -> dict[str, int]:
        """The router's replica for each request in flight (read on the server's loop)."""

        async def snapshot() -> dict[str, int]:
            return {rid: f.replica for rid, f in self.engine._requests.items()}

        return dict(self.call(snapshot()))

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


@pytest.fixture(scope="module")
def served(cluster: Any, smollm2_path: Path) -> Iterator[ThreadServer]:
    server = ThreadServer(
        [str(smollm2_path), "--replicas", "2", "--ray-address", cluster.address, *ENGINE_FLAGS]
    )
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def client(served: ThreadServer) -> Any:
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def single_process(smollm2_path: Path) -> Iterator[Any]:
    """The same model on one in-process engine: the reference for greedy outputs."""
    from llmcore.engine.async_engine import AsyncEngine

    engine = AsyncEngine.load(smollm2_path, max_num_seqs=16, kv_cache_memory=96 << 20, seed=0)
    yield engine
    asyncio.run(engine.aclose())


def _chat(client: Any, text: str, **kw: Any) -> Any:
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **kw
    )


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_replicas_run_on_two_nodes(served: ThreadServer) -> None:
    nodes = {r.ready.node_id for r in served.engine._replicas}
    assert len(nodes) == 2
    assert served.engine.info.model_path.endswith(".gguf")


def test_openai_client_requests_all_answered(served: ThreadServer, client: Any) -> None:
    prompts = [f"Write one short sentence about the number {i}." for i in range(12)]

    def ask(i: int) -> tuple[str, str | None]:
        if i % 3 == 0:
            chunks = list(_chat(client, prompts[i], stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return text, [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        if i % 3 == 1:  # greedy may end at once here (EOS first): the reason still comes
            out = client.completions.create(
                model=MODEL, prompt=prompts[i], max_tokens=12, temperature=0
            )
            return "(completion)", out.choices[0].finish_reason
        chat = _chat(client, prompts[i])
        return str(chat.choices[0].message.content), chat.choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(12)))
    assert all(text and reason in ("stop", "length") for text, reason in answers), answers
    decisions = served.engine.router.statistics().decisions
    assert sum(decisions.values()) >= 12
    models = [m.id for m in client.models.list()]
    assert models == [MODEL]


def test_greedy_equals_the_single_process_engine(served: ThreadServer, single_process: Any) -> None:
    from llmcore.sampling_params import SamplingParams

    tok = served.engine.tokenizer
    prompts = [tok.encode(t) for t in ("The capital of France is", "def fib(n):", "1, 2, 3,")]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)

    async def tokens(engine: Any, prompt: list[int], rid: str) -> list[int]:
        out: list[int] = []
        async for delta in engine.generate(prompt, params, rid):
            out += delta.outputs[0].token_ids
        return out

    async def both(engine: Any) -> list[list[int]]:
        return list(
            await asyncio.gather(*(tokens(engine, p, f"g{i}") for i, p in enumerate(prompts)))
        )

    reference = asyncio.run(both(single_process))
    on_ray = served.call(both(served.engine))
    assert on_ray == reference
    assert all(len(t) == 24 for t in on_ray)


def test_shared_system_prompt_lands_on_one_replica_and_hits_its_cache(
    served: ThreadServer, client: Any
) -> None:
    system = "You are a meticulous assistant for a bookshop. " * 24  # ~12 blocks
    engine = served.engine
    before = {i: s.prefix_cache_hits for i, _, s in engine.replica_statistics()}
    for i in range(6):
        client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": f"Question {i}: do you sell maps?"},
            ],
            max_tokens=4,
            temperature=0,
        )
    time.sleep(1.5)  # a heartbeat: every replica has pushed its statistics since
    hits = {i: s.prefix_cache_hits - before[i] for i, _, s in engine.replica_statistics()}
    warm = max(hits, key=lambda i: hits[i])
    system_tokens = len(engine.tokenizer.encode(system))
    # The five requests after the first find the system prompt's blocks cached.
    assert hits[warm] >= 5 * (system_tokens // 16 - 1) * 16
    assert hits[1 - warm] == 0


def test_a_killed_replica_fails_only_its_own_streams_and_the_service_recovers(
    served: ThreadServer, client: Any
) -> None:
    engine = served.engine
    results: dict[int, str] = {}
    started = threading.Barrier(17)

    def stream(i: int) -> None:
        text = ""
        try:
            chunks = _chat(
                client,
                f"Tell me a long story about ship number {i}.",
                stream=True,
                max_tokens=400,
                extra_body={"ignore_eos": True},
            )
            first = True
            for chunk in chunks:
                if first:
                    started.wait(60)
                    first = False
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
            results[i] = "ok" if len(text) > 100 else "short"
        except openai.APIError as exc:
            results[i] = f"error: {exc}"

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    started.wait(120)  # every stream has its first chunk
    where = served.in_flight()
    victim = engine._replicas[0]
    on_victim = sum(1 for r in where.values() if r == 0)
    assert 0 < on_victim < 16, where
    ray.kill(victim.handle, no_restart=False)
    for t in threads:
        t.join(180)
    errors = [i for i, r in results.items() if r.startswith("error")]
    assert len(results) == 16
    assert len(errors) == on_victim, results
    assert all(r == "ok" for r in results.values() if not r.startswith("error")), results

    # New requests go to the survivor at once, then the restarted replica rejoins.
    assert _chat(client, "Still there?").choices[0].message.content
    _wait_until(lambda: all(up for _, up, _ in engine.replica_statistics()), 120, "the rejoin")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _chat(client, f"Count to {i}."), range(8)))
    assert served.call(engine.check_health()) is None


def test_health_is_503_when_no_replica_is_left(served: ThreadServer, client: Any) -> None:
    engine = served.engine
    assert _status(served.url + "/health") == 200
    for replica in engine._replicas:
        ray.kill(replica.handle, no_restart=True)
    _wait_until(lambda: _status(served.url + "/health") == 503, 60, "503")
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(client, "Anyone?")
    assert caught.value.status_code == 503
    assert caught.value.body["type"] == "service_unavailable"  # type: ignore[index]


def test_a_json_lines_batch_runs_on_replicas(
    cluster: Any, smollm2_path: Path, tmp_path: Path
) -> None:
    """`llmcore run-batch --replicas 2` in front of replicas of its own (no CPUs
    reserved: the two nodes' CPUs are the served replicas'); a bad line gets its
    error line and the rest are answered."""
    import json

    from llmcore.cli.run_batch import main

    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Name a colour ({i})."}],
                "max_tokens": 6,
                "temperature": 0,
            },
        }
        for i in range(6)
    ]
    lines[3]["body"] = {"model": MODEL, "messages": "not a list"}
    batch_in, batch_out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch_in.write_text("".join(json.dumps(line) + "\n" for line in lines))
    argv = [str(smollm2_path), "-i", str(batch_in), "-o", str(batch_out)]
    argv += ["--replicas", "2", "--replica-num-cpus", "0", *ENGINE_FLAGS]
    assert main(argv) == 1  # one line is an error
    results = {r["custom_id"]: r for r in map(json.loads, batch_out.read_text().splitlines())}
    assert sorted(results) == [f"q{i}" for i in range(6)]
    assert results["q3"]["response"]["status_code"] == 400
    for i in (0, 1, 2, 4, 5):
        body = results[f"q{i}"]["response"]["body"]
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
