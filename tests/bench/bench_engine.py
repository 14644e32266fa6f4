"""Offline throughput of the engine: SmolLM2-135M-Instruct at float32, 64 prompts of
~128 tokens, 128 greedy output tokens each, through `llmcore.LLM`; beside HF
transformers `generate` at batch 8 (left-padded) and batch 1 in the same run, and
the model FLOP/s achieved (whole run, and the steps where all sequences decode) as a
fraction of this machine's best fp32 matmul rate (MKL or oneDNN, 2048^3).

    python tests/bench/bench_engine.py [--prompts 64] [--hf-batch1-prompts 4]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time

import torch

import llmcore
from llmcore.cpu_malloc import tune_malloc
from llmcore.default_model import default_chat_model_path
from ops.linear import onednn_available

WORDS = ("the river city night music code light winter garden stone letter morning ocean "
         "bridge story machine forest a of and to in is was for on with").split()  # fmt: skip


def make_prompts(tokenizer: llmcore.Tokenizer, n: int, length: int) -> list[list[int]]:
    rng = random.Random(0)
    prompts = []
    for i in range(n):
        ids = tokenizer.encode(f"Story {i}: " + " ".join(rng.choice(WORDS) for _ in range(200)))
        prompts.append(ids[: length + rng.randrange(-8, 9)])
    return prompts


def matmul_rates(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """The machine's fp32 GEMM rate, n^3, best of `repeats`, through each library torch
    has: MKL (`torch.mm`) and oneDNN (what llmcore's matmuls use, when present)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    calls = {"MKL torch.mm": lambda: a @ b}
    if onednn_available():
        bt = b.t().contiguous()
        calls["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], "")
    rates = {}
    for name, call in calls.items():
        call()
        rates[name] = 2 * n**3 / min(_timed(call) for _ in range(repeats))
    return rates


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def matmul_params(loaded: llmcore.LoadedModel) -> tuple[int, int]:
    """(weights every token multiplies, the lm_head's: only tokens that are sampled)."""
    m = loaded.model
    per_layer = sum(t.numel() for t in (m.layers[0].qkv, m.layers[0].o_proj,
                                         m.layers[0].gate_up, m.layers[0].down))  # fmt: skip
    return per_layer * len(m.layers), m.lm_head.numel()


def decode_phase(llm: llmcore.LLM, prompts: list[list[int]], new: int) -> tuple[float, int]:
    """Seconds and count of the engine steps in which every sequence decodes one token
    (no prefill in the step): the steady state at len(prompts) concurrent sequences."""
    core = llm.core
    params = llmcore.SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        core.add(core.make_requests(prompt, params, f"decode-phase-{i}"))
    seconds, steps = 0.0, 0
    while core.has_work():
        before, t0 = core.statistics(), time.perf_counter()
        core.step()
        elapsed, after = time.perf_counter() - t0, core.statistics()
        decoded = after.num_generated_tokens - before.num_generated_tokens
        if after.num_prompt_tokens_computed == before.num_prompt_tokens_computed and decoded == len(
            prompts
        ):
            seconds, steps = seconds + elapsed, steps + 1
    return seconds, steps


def hf_rate(model: object, prompts: list[list[int]], batch: int, new: int) -> float:
    tokens, t0 = 0, time.perf_counter()
    for i in range(0, len(prompts), batch):
        group = prompts[i : i + batch]
        width = max(len(p) for p in group)
        ids = torch.tensor([[2] * (width - len(p)) + p for p in group])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new,  # type: ignore[attr-defined]
                                 min_new_tokens=new, do_sample=False, pad_token_id=2)  # fmt: skip
        tokens += (out.shape[1] - width) * len(group)
    return tokens / (time.perf_counter() - t0)


def run_hf(args: argparse.Namespace) -> dict[str, float]:
    import transformers

    transformers.logging.set_verbosity_error()
    path = default_chat_model_path()
    prompts = make_prompts(llmcore.load_tokenizer(path), args.prompts, args.prompt_len)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    return {
        "batch8": hf_rate(hf, prompts, 8, args.new),
        "batch1": hf_rate(hf, prompts[: args.hf_batch1_prompts], 1, args.new),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--hf-batch1-prompts", type=int, default=4)
    parser.add_argument("--hf-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_only:
        print(json.dumps(run_hf(args)))
        return

    llm = llmcore.LLM(kv_cache_memory=2 << 30, max_num_seqs=args.prompts)
    prompts = make_prompts(llm.tokenizer, args.prompts, args.prompt_len)
    params = llmcore.SamplingParams(temperature=0, max_tokens=args.new, ignore_eos=True)
    llm.generate(prompts[:2], llmcore.SamplingParams(temperature=0, max_tokens=4))  # warm-up
    stats0 = llm.core.statistics()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - t0
    stats = llm.core.statistics()
    generated = sum(len(o.outputs[0].token_ids) for o in outs)
    prompt_tokens = sum(len(p) for p in prompts)
    ours = generated / elapsed
    body, head = matmul_params(llm.core.loaded)
    flops = 2 * (body * (prompt_tokens + generated) + head * generated) / elapsed
    decode_seconds, decode_steps = decode_phase(llm, prompts, 64)
    decode_flops = 2 * (body + head) * args.prompts * decode_steps / decode_seconds
    gemms = matmul_rates()
    gemm = max(gemms.values())
    cfg = llm.core.loaded.config
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4
    rss_llmcore = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # HF runs in a child process: a fresh heap, with glibc's malloc as it comes.
    command = [sys.executable, __file__, "--hf-only", "--prompts", str(args.prompts),
               "--prompt-len", str(args.prompt_len), "--new", str(args.new),
               "--hf-batch1-prompts", str(args.hf_batch1_prompts)]  # fmt: skip
    hf = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    hf8, hf1 = hf["batch8"], hf["batch1"]

    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"malloc tuning {'on' if tune_malloc() else 'off'} (llmcore; HF in a child process "
          "with glibc's defaults)")  # fmt: skip
    print(f"workload: {args.prompts} prompts x ~{args.prompt_len} tokens, {args.new} greedy "
          f"output tokens each; {stats.num_steps - stats0.num_steps} engine steps")  # fmt: skip
    print("| figure | value | ratio |")
    print("|---|---|---|")
    print(f"| llmcore `LLM.generate` output tokens/s | {ours:.0f} | {ours / hf8:.2f}x HF batch 8, "
          f"{ours / hf1:.1f}x HF batch 1 |")  # fmt: skip
    print(f"| HF `generate`, batch 8 (padded) | {hf8:.0f} | 1.00 |")
    print(f"| HF `generate`, batch 1 ({args.hf_batch1_prompts} prompts) | {hf1:.0f} | |")
    print(f"| model FLOP/s (weight matmuls; lm_head on sampled tokens) | {flops / 1e9:.1f} G | "
          f"{flops / gemm:.2f} of the machine's best fp32 GEMM |")  # fmt: skip
    print(f"| model FLOP/s in decode steps, {args.prompts} sequences ({decode_steps} steps, "
          f"{1000 * decode_seconds / decode_steps:.0f} ms each) | {decode_flops / 1e9:.1f} G | "
          f"{decode_flops / gemm:.2f} of the machine's best fp32 GEMM |")  # fmt: skip
    for name, rate in gemms.items():
        print(f"| fp32 GEMM rate, 2048^3, {name} | {rate / 1e9:.1f} G | {rate / gemm:.2f} |")
    print(f"| peak RSS after the llmcore run | {rss_llmcore:.0f} MiB | |")
    print(f"| KV cache bytes per token (f32) | {kv_per_token} | |")


if __name__ == "__main__":
    main()
