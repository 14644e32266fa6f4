"""The real server started with a vLLM command line (`--model PATH --served-model-name
NAME --api-key K --max-model-len 1024 --enable-prompt-tokens-details --config
FILE.yaml`), driven with the `openai` client; its `/metrics` has vLLM's names."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow

API_KEY = "vllm-style-key"
NAME = "smol"


class Server(ServerProcess):
    """The server under a vLLM-style command line (`port: 0` in the YAML is
    overridden by the command line's, as the command line wins)."""

    def __init__(self, model: Path, folder: Path) -> None:
        config = folder / "serve.yaml"
        config.write_text(
            "port: 0\nmax_num_seqs: 8\nkv-cache-memory-bytes: 256MiB\n"
            "enable_log_requests: true\nmax-log-len: 20\ntensor-parallel-size: 1\n"
            "enable-tokenizer-info-endpoint: true\nenable-prefix-caching: true\n"
        )
        argv = ["--model", str(model), "--served-model-name", NAME, "--api-key", API_KEY,
                "--max-model-len", "1024", "--enable-prompt-tokens-details",
                "--config", str(config)]  # fmt: skip
        super().__init__(folder / "server.log", *argv)

    def get(self, path: str, method: str = "GET", key: str | None = API_KEY) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, method=method)
        if key is not None:
            request.add_header("authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def client(self, key: str = API_KEY) -> Any:
        openai = pytest.importorskip("openai")
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(smollm2_path, tmp_path_factory.mktemp("vllm-style"))
    yield srv
    assert srv.stop() == 0


def test_chat_completion_models_and_auth(server: Server) -> None:
    openai = pytest.importorskip("openai")
    client = server.client()
    assert [m.id for m in client.models.list().data] == [NAME]
    chat = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Say hi"}], max_tokens=5
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens > 0
    text = client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=4)
    assert text.choices[0].text and text.usage.prompt_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong-key").models.list()
    assert server.get("/v1/models", key=None)[0] == 401
    assert "Received request" in server.log  # --enable-log-requests, from the YAML
    assert "tensor-parallel-size 1 has no effect" in server.log


def test_extra_endpoints(server: Server) -> None:
    assert server.get("/ping", key=None)[0] == 200
    assert server.get("/ping", "POST", key=None)[0] == 200
    status, body = server.get("/tokenizer_info")
    assert status == 200 and '"tokenizer_class"' in body and '"chat_template"' in body
    assert server.get("/reset_prefix_cache", "POST", key=None)[0] == 401
    status, body = server.get("/reset_prefix_cache", "POST")
    assert status == 200 and body == '{"success":true}'


def _samples(text: str, name: str) -> dict[str, float]:
    """`name{labels} value` lines of a metric, by their label text."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.M)
    return {labels or "": float(value) for labels, value in pattern.findall(text)}


def test_metrics_have_vllm_names(server: Server) -> None:
    client = server.client()
    _, before = server.get("/metrics")
    success_before = sum(_samples(before, "vllm:request_success_total").values())
    prompt_before = sum(_samples(before, "vllm:prompt_tokens_total").values())
    prompt_tokens = 0
    for i in range(3):
        out = client.completions.create(model=NAME, prompt=f"Count to {i + 3}:", max_tokens=3)
        prompt_tokens += out.usage.prompt_tokens
    status, text = server.get("/metrics")
    assert status == 200
    label = f'engine="0",model_name="{NAME}"'
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                  "vllm:kv_cache_usage_perc"):  # fmt: skip
        assert f"# TYPE {gauge} gauge" in text and _samples(text, gauge)
    for counter in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                    "vllm:num_preemptions_total", "vllm:generation_tokens_total"):  # fmt: skip
        assert counter in text, counter
    assert sum(_samples(text, "vllm:prompt_tokens_total").values()) - prompt_before == (
        prompt_tokens
    )
    assert _samples(text, "vllm:prefix_cache_queries_total")["{" + label + "}"] > 0
    success = _samples(text, "vllm:request_success_total")
    assert sum(success.values()) - success_before == 3
    assert any('finished_reason="length"' in k for k, v in success.items() if v > 0)
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                      "vllm:time_per_output_token_seconds", "vllm:e2e_request_latency_seconds",
                      "vllm:request_queue_time_seconds", "vllm:request_inference_time_seconds",
                      "vllm:request_prompt_tokens", "vllm:request_generation_tokens",
                      "vllm:iteration_tokens_total"):  # fmt: skip
        assert f"# TYPE {histogram} histogram" in text, histogram
        assert _samples(text, histogram + "_count")["{" + label + "}"] >= 3, histogram
    assert 'vllm:cache_config_info{block_size="16"' in text
    assert "llmcore_requests_total" in text  # llmcore's own names stay


def test_cached_tokens_and_token_ids(server: Server) -> None:
    """These need the other half of issue #15 (per-request behaviour of the flags):
    usage.prompt_tokens_details with --enable-prompt-tokens-details, and vLLM's
    return_token_ids."""
    client = server.client()
    prompt = "A long shared preamble about the sea and the ships on it. " * 12
    for _ in range(2):
        out = client.completions.create(model=NAME, prompt=prompt, max_tokens=2)
    assert out.usage.prompt_tokens_details.cached_tokens > 0
    chat = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
        extra_body={"return_token_ids": True},
    )  # fmt: skip
    data = chat.model_dump()
    assert data["prompt_token_ids"] and data["choices"][0]["token_ids"]
