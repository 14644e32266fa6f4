"""`llmcore.ray.serve.build_app` on a local Ray: the embedded SmolLM2 as one Serve
deployment, driven through Serve's HTTP proxy with the `openai` client and raw
HTTP; greedy output equals the same request served in process."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server_process import free_port

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[3]
NAME = "smol"
ENGINE_ARGS = ["--max-num-seqs", "4", "--kv-cache-memory", "64MiB", "--max-body-size", "64KiB"]
CHAT = {"messages": [{"role": "user", "content": "Name three colours."}]}
GREEDY = {"temperature": 0, "max_tokens": 16}


def _http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET, or a POST of `body`."""
    headers = {"content-type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def _post(url: str, body: dict[str, Any], **headers: str) -> urllib.request.Request:
    data = json.dumps(body).encode()
    return urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **headers}
    )


@pytest.fixture(scope="module")
def url(smollm2_path: Path) -> Iterator[str]:
    from llmcore.ray.serve import build_app

    # The replica's worker imports llmcore from this checkout, as this process does.
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "RAY_USAGE_STATS_ENABLED")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    port = free_port()
    # address="local": a cluster of its own, never one another process started here.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(
            {
                "model": str(smollm2_path),
                "served_model_name": NAME,
                "engine_args": ENGINE_ARGS,
                "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
            }
        )
        serve.run(app, name="llmcore", route_prefix="/llm")  # paths below it reach llmcore
        yield f"http://127.0.0.1:{port}/llm"
    finally:
        serve.shutdown()
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def client(url: str) -> Any:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_completion(client: Any) -> None:
    response = client.chat.completions.create(model=NAME, **CHAT, **GREEDY)
    assert response.model == NAME
    assert response.id.startswith("chatcmpl-")
    assert response.choices[0].message.content
    assert response.usage.completion_tokens <= 16


def test_streamed_chat_completion(client: Any, url: str) -> None:
    chunks = list(client.chat.completions.create(model=NAME, stream=True, **CHAT, **GREEDY))
    assert len(chunks) > 2
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    body = {"model": NAME, "stream": True, **CHAT, **GREEDY}
    with urllib.request.urlopen(_post(url + "/v1/chat/completions", body), timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]\n"
    assert len(events) > 2


def test_models(client: Any) -> None:
    assert [m.id for m in client.models.list()] == [NAME]


def test_bad_request_is_400_in_openais_shape(client: Any, url: str) -> None:
    status, _, body = _http(url + "/v1/chat/completions", b"{not json")
    assert status == 400
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=NAME, messages=[], max_tokens=-1)


def test_oversized_body_is_413(url: str) -> None:
    body = json.dumps({"model": NAME, **CHAT, "user": "x" * (70 << 10)}).encode()
    status, _, answer = _http(url + "/v1/chat/completions", body)
    assert status == 413
    assert json.loads(answer)["error"]["code"] == "payload_too_large"


def test_the_request_id_header_names_the_request(url: str) -> None:
    body = json.dumps({"model": NAME, **CHAT, "max_tokens": 2}).encode()
    status, headers, answer = _http(url + "/v1/chat/completions", body, {"x-request-id": "ray-42"})
    assert status == 200
    assert json.loads(answer)["id"] == "chatcmpl-ray-42"
    assert {k.lower(): v for k, v in headers.items()}["x-request-id"] == "ray-42"  # Serve's proxy


def test_a_client_that_goes_away_aborts_its_request(url: str) -> None:
    """The stream is closed unfinished (counted as an abort) and leaves the engine's
    running set, long before its 1000 tokens."""
    body = {"model": NAME, "stream": True, **CHAT, "max_tokens": 1000, "ignore_eos": True}
    aborted = _metric(url, ABORTED)
    with urllib.request.urlopen(_post(url + "/v1/chat/completions", body), timeout=60) as response:
        response.readline()  # generating; then the connection closes
    deadline = time.monotonic() + 30
    while _metric(url, ABORTED) != aborted + 1 or _metric(url, RUNNING) != 0:
        assert time.monotonic() < deadline, "the abandoned request was not aborted"
        time.sleep(0.2)


RUNNING = r"llmcore_num_requests_running\{[^}]*\}"
ABORTED = r'vllm:request_success_total\{[^}]*finished_reason="abort"[^}]*\}'


def _metric(url: str, name: str) -> float:
    text = _http(url + "/metrics")[2].decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match is not None, name
    return float(match.group(1))


def test_greedy_output_equals_the_in_process_service(client: Any, smollm2_path: Path) -> None:
    import llmcore

    served = client.chat.completions.create(model=NAME, **CHAT, **GREEDY)
    local = llmcore.SyncClient(smollm2_path, max_num_seqs=4, kv_cache_memory=64 << 20)
    try:
        here = local.chat.completions.create(**CHAT, **GREEDY)
    finally:
        local.close()
    assert served.choices[0].message.content == here.choices[0].message.content
    assert served.usage.completion_tokens == here.usage.completion_tokens
