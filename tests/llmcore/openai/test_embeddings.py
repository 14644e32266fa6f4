"""/v1/embeddings, /pooling, /score and /rerank through the service, with SmolLM2
(chat) and all-MiniLM-L6-v2 (embeddings) served side by side: embeddings equal
sentence-transformers' (cosine >= 0.9999, float and base64, one request of 200
inputs and single inputs); scores and rerank relevance equal the cosine of the
reference embeddings; each model refuses what it cannot do with a 400 naming
the models that can."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import llmcore
from llmcore.engine.async_engine import AsyncEngine
from llmcore.openai.embeddings import decode_base64

from .conftest import Client

pytestmark = pytest.mark.slow  # SmolLM2 and all-MiniLM, sentence-transformers as the reference

MINILM = "all-MiniLM-L6-v2"
CHAT = "SmolLM2-135M-Instruct"
MIN_COSINE = 0.9999


def _vectors(data: list[dict[str, Any]], key: str = "embedding") -> np.ndarray:
    rows = [d[key] for d in sorted(data, key=lambda d: d["index"])]
    return np.stack([decode_base64(r) if isinstance(r, str) else np.array(r) for r in rows])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_embeddings_match_sentence_transformers(
    both: Client, minilm_sentences: list[str], minilm_reference: Any, encoding_format: str
) -> None:
    reference, _ = minilm_reference
    body = {"model": MINILM, "input": minilm_sentences, "encoding_format": encoding_format}
    batched = both.ok("/v1/embeddings", body)
    assert batched["object"] == "list" and batched["model"] == MINILM
    assert [d["index"] for d in batched["data"]] == list(range(200))
    assert batched["usage"]["prompt_tokens"] == batched["usage"]["total_tokens"] > 200
    assert _cosines(_vectors(batched["data"]), reference).min() >= MIN_COSINE
    singles = [
        both.ok("/v1/embeddings", {**body, "input": s})["data"][0]
        for s in minilm_sentences[:: 10 if encoding_format == "base64" else 1]
    ]
    ref = reference[:: 10 if encoding_format == "base64" else 1]
    assert _cosines(_vectors(singles), ref).min() >= MIN_COSINE


def test_token_ids_pooling_and_truncation(both: Client, minilm_reference: Any) -> None:
    _, encode = minilm_reference
    ids = both.ok("/tokenize", {"model": MINILM, "prompt": "Hello world"})["tokens"]
    by_ids = both.ok("/v1/embeddings", {"input": [ids, ids]})  # no model: the embedding one
    by_text = both.ok("/pooling", {"model": MINILM, "input": "Hello world"})
    assert np.allclose(_vectors(by_ids["data"])[0], _vectors(by_text["data"], "data")[0])
    long_text = " ".join(f"word{i}" for i in range(400))
    status, error = both.post("/v1/embeddings", {"model": MINILM, "input": long_text})
    assert status == 400 and "256" in error["error"]["message"]
    assert error["error"]["code"] == "context_length_exceeded"
    cut = both.ok("/v1/embeddings", {"input": long_text, "truncate_prompt_tokens": 256})
    assert cut["usage"]["prompt_tokens"] == 256
    assert _cosines(_vectors(cut["data"]), encode([long_text]))[0] >= MIN_COSINE  # as ST cuts


def test_score_equals_cosine_of_reference_embeddings(both: Client, minilm_reference: Any) -> None:
    _, encode = minilm_reference
    query, docs = "A man is eating food.", ["A man eats pasta.", "A cheetah runs.", "Rain."]
    ref_q, ref_d = encode([query])[0], encode(docs)
    expected = ref_d @ ref_q
    one_to_many = both.ok("/score", {"model": MINILM, "text_1": query, "text_2": docs})
    assert np.allclose([d["score"] for d in one_to_many["data"]], expected, atol=1e-4)
    one = both.ok("/v1/score", {"text_1": query, "text_2": docs[0]})
    assert one["data"][0]["score"] == pytest.approx(expected[0], abs=1e-4)
    zipped = both.ok("/v1/score", {"text_1": docs, "text_2": docs[::-1]})
    ref_zip = (ref_d * ref_d[::-1]).sum(1)
    assert np.allclose([d["score"] for d in zipped["data"]], ref_zip, atol=1e-4)
    status, _ = both.post("/score", {"text_1": docs[:2], "text_2": docs})
    assert status == 400


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_orders_by_reference_cosine(both: Client, minilm_reference: Any, path: str) -> None:
    _, encode = minilm_reference
    query = "How do plants make energy?"
    docs = ["The stock market fell.", "Photosynthesis turns light into chemical energy.",
            "Plants need water.", "Cats sleep a lot."]  # fmt: skip
    expected = encode(docs) @ encode([query])[0]
    out = both.ok(path, {"model": MINILM, "query": query, "documents": docs})
    assert [r["index"] for r in out["results"]] == list(np.argsort(-expected))
    assert np.allclose([r["relevance_score"] for r in out["results"]],
                       np.sort(expected)[::-1], atol=1e-4)  # fmt: skip
    assert out["results"][0]["document"] == {"text": docs[1]} and out["usage"]["total_tokens"]
    top = both.ok(path, {"query": query, "documents": [{"text": d} for d in docs], "top_n": 2,
                         "return_documents": False})  # fmt: skip
    assert [r["index"] for r in top["results"]] == list(np.argsort(-expected)[:2])
    assert all("document" not in r for r in top["results"])


def test_each_model_refuses_what_it_cannot_do(both: Client) -> None:
    status, body = both.post("/v1/embeddings", {"model": CHAT, "input": "hi"})
    assert status == 400 and MINILM in body["error"]["message"]
    assert body["error"]["param"] == "model"
    chat = {"model": MINILM, "messages": [{"role": "user", "content": "hi"}]}
    status, body = both.post("/v1/chat/completions", chat)
    assert status == 400 and CHAT in body["error"]["message"]
    status, _ = both.post("/v1/completions", {"model": MINILM, "prompt": "hi"})
    assert status == 400
    for bad in ({"input": ""}, {"input": []}, {"input": "hi", "dimensions": 64},
                {"input": "hi", "encoding_format": "int8"},
                {"input": "hi", "truncate_prompt_tokens": 1000}):  # fmt: skip
        status, body = both.post("/v1/embeddings", {"model": MINILM, **bad})
        assert status == 400, (bad, body)


def test_models_say_what_each_can_do(both: Client) -> None:
    _, listing = both.call("GET", "/v1/models")
    cards = {m["id"]: m for m in listing["data"]}
    assert cards[CHAT]["task"] == "generate" and "chat" in cards[CHAT]["capabilities"]
    assert cards[MINILM]["task"] == "embed" and cards[MINILM]["max_model_len"] == 256
    assert {"embeddings", "score", "rerank"} <= set(cards[MINILM]["capabilities"])


def test_in_process_client_embeddings(both: Client, minilm_reference: Any) -> None:
    reference, _ = minilm_reference
    client = llmcore.Client(both.service)
    out = both.run(client.embeddings.create(model=MINILM, input="Hello world!"))
    assert out.data[0].index == 0 and len(out.data[0].embedding) == 384
    vec = np.array(out.data[0].embedding)
    assert float(vec @ reference[0]) >= MIN_COSINE  # "Hello world!" is sentence 0


def test_text_truncation_keeps_the_special_tokens(minilm_engine: AsyncEngine) -> None:
    from llmcore.openai.embeddings import truncated

    tok = minilm_engine.core.tokenizer
    ids = truncated(tok, "one two three four five", 4, True)
    assert ids == [*tok.encode("one two", add_special_tokens=True)]
    assert truncated(tok, "one", 4, True) == tok.encode("one")


def test_jsonl_batch_accepts_embeddings_score_and_rerank(both: Client, tmp_path: Path) -> None:
    import io
    import json

    from llmcore.openai import ServiceRequest
    from transports.jsonl import BatchConfig, ProgressMode, run_batch

    lines = [
        {"url": "/v1/embeddings", "body": {"model": MINILM, "input": ["a", "b"]}},
        {"url": "/v1/score", "body": {"text_1": "a", "text_2": ["a", "b"]}},
        {"url": "/v1/rerank", "body": {"query": "a", "documents": ["b", "a"]}},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(
        json.dumps({"custom_id": str(i), "method": "POST", **line}) + "\n"
        for i, line in enumerate(lines)
    ))  # fmt: skip
    config = BatchConfig(input=str(source), output=str(tmp_path / "out.jsonl"),
                         progress=ProgressMode.OFF)  # fmt: skip
    both.run(run_batch(both.service, config, request_factory=ServiceRequest,
                       stderr=io.StringIO(), handle_signals=False))  # fmt: skip
    results = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["response"]["status_code"] for r in results] == [200, 200, 200]
    assert len(results[0]["response"]["body"]["data"]) == 2
    assert results[2]["response"]["body"]["results"][0]["index"] == 1
