"""Tokenization throughput on ~1 MB of text: llmcore's tokenizer beside
transformers' AutoTokenizer on the same files, in the same run.

    python tests/bench/bench_tokenizer.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import transformers

from llmcore.default_model import default_chat_model_path
from llmcore.tokenization.tokenizer import load_tokenizer
from tests.llmcore.tokenization.corpus import CORPUS


def _text(size: int = 1 << 20) -> str:
    base = "\n".join(CORPUS)
    return (base * (size // len(base.encode()) + 1))[:size]


def _rate(fn: object, text: str, repeats: int = 3) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        n = len(fn(text))  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return n / statistics.median(times), n


def main() -> None:
    text = _text()
    gguf = default_chat_model_path()
    ours = load_tokenizer(gguf)
    with tempfile.TemporaryDirectory() as folder:
        ours.backend.save(f"{folder}/tokenizer.json")  # type: ignore[attr-defined]
        Path(folder, "tokenizer_config.json").write_text(
            '{"tokenizer_class": "PreTrainedTokenizerFast"}'
        )
        theirs = transformers.AutoTokenizer.from_pretrained(folder)
        ours_rate, n = _rate(lambda t: ours.encode(t, add_special_tokens=False), text)
        theirs_rate, m = _rate(lambda t: theirs.encode(t, add_special_tokens=False), text)
    assert n == m, (n, m)
    print(f"text: {len(text.encode()) / 1e6:.2f} MB, {n} tokens (SmolLM2 vocabulary)")
    print("| tokenizer | tokens/s | ratio |")
    print("|---|---|---|")
    print(f"| llmcore `encode` | {ours_rate / 1e6:.2f} M | {ours_rate / theirs_rate:.2f}x |")
    print(f"| transformers `encode` | {theirs_rate / 1e6:.2f} M | 1.00x |")


if __name__ == "__main__":
    main()
