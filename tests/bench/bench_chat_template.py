"""Chat template rendering benchmark: llmcore's ChatTemplate.render against
transformers' apply_chat_template(..., tokenize=False), on the same templates.

One request = rendering a typical 4-message conversation (system, user, assistant,
user) with the generation prompt. Both sides reuse their compiled template (llmcore's
ChatTemplate object is built once per model; transformers caches by template text),
so the figures are the per-request cost. Prints a markdown table (for
docs/benchmarks.md) of median microseconds over many iterations.

    python tests/bench/bench_chat_template.py [--iterations 3000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jinja2
import tokenizers
import transformers

from llmcore.chat_template import ChatTemplate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
TEMPLATES = [
    "meta-llama-Llama-3.1-8B-Instruct",
    "Qwen-Qwen2.5-7B-Instruct",
    "openai-gpt-oss-120b",
]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And how many people live there, roughly?"},
]
SPECIAL_TOKENS: dict[str, Any] = {"bos_token": "<s>", "eos_token": "</s>"}


def median_us(fn: Callable[[], Any], iterations: int) -> float:
    """Median wall time of one call, in microseconds (after a short warm-up)."""
    for _ in range(min(100, iterations)):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def hf_tokenizer() -> Any:
    model = tokenizers.models.WordLevel({"<unk>": 0}, unk_token="<unk>")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(model), **SPECIAL_TOKENS
    )


def bench_one(name: str, tokenizer: Any, iterations: int) -> tuple[float, float]:
    source = (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")
    template = ChatTemplate(source)

    def ours() -> str:
        return template.render(MESSAGES, add_generation_prompt=True, **SPECIAL_TOKENS)

    def theirs() -> str:
        return str(
            tokenizer.apply_chat_template(
                MESSAGES, chat_template=source, tokenize=False, add_generation_prompt=True
            )
        )

    if ours() != theirs():
        raise SystemExit(f"{name}: llmcore and transformers render differently")
    return median_us(ours, iterations), median_us(theirs, iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000)
    args = parser.parse_args()
    if not FIXTURES.is_dir():
        print(f"no chat template fixtures at {FIXTURES}; nothing to measure")
        return
    tokenizer = hf_tokenizer()
    print(
        f"Chat template rendering, 4-message conversation, median of {args.iterations} "
        f"renders (python {platform.python_version()}, jinja2 {jinja2.__version__}, "
        f"transformers {transformers.__version__}, {platform.machine()})\n"
    )
    print("| template | llmcore µs | transformers µs | transformers / llmcore |")
    print("|---|---:|---:|---:|")
    for name in TEMPLATES:
        ours, theirs = bench_one(name, tokenizer, args.iterations)
        print(f"| {name} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.2f}x |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
