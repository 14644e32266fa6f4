"""Issue 21's GPU figures, each beside its reference from the same run:

1. one decode step through `ModelRunner` at batch 1 and 64, eager and from decode
   graphs: wall time per step, and the GPU's busy time (the kernels' summed
   durations, from torch's profiler) as a share of it;
2. offline `LLM.generate` of 256 prompts x 256 tokens, eager and with graphs,
   against Hugging Face `generate` at batch 64 on the same weights;
3. a single stream through `LLM`, against HF at batch 1;
4. paged decode attention at six shapes, as GB/s of K/V read, against torch's
   SDPA on the same K/V laid out contiguously;
5. prefill of 8 x 1024 tokens, tokens/s, and prefill attention against SDPA causal
   (TFLOP/s); `--attention-only` runs the attention parts alone, with a sweep of the
   decode planner's knobs (blocks per SM, minimum partition).

Models are built here with real shapes and random weights (transformers
`LlamaForCausalLM`, saved as safetensors, bfloat16): `--shape 135m` (SmolLM2-135M's)
or `1b` (Llama-3.2-1B's). The HTTP server's figures come from
`tests/bench/bench_serving.py --side-by-side --llmcore-variants "--device cuda"`.

    python tests/bench/bench_gpu.py --shape 135m            # on a GPU
    python tests/bench/bench_gpu.py --device cpu --smoke    # the code paths, tiny, on the CPU

On the CPU there are no graphs, and busy time is not measured; the smoke run checks
that every part runs and prints."""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SHAPES: dict[str, dict[str, Any]] = {
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
             "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
             "tie_word_embeddings": True, "rope_theta": 100000.0},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
           "tie_word_embeddings": True, "rope_theta": 500000.0},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
             "tie_word_embeddings": True, "rope_theta": 10000.0},
}  # fmt: skip
# (batch, context, query heads, kv heads, head dim) of the attention comparison
ATTENTION_SHAPES = [
    (1, 512, 9, 3, 64), (8, 1024, 9, 3, 64), (64, 1024, 9, 3, 64),
    (1, 2048, 32, 8, 128), (16, 2048, 32, 8, 128), (64, 2048, 32, 8, 128),
]  # fmt: skip
# (sequences, new tokens each, query heads, kv heads, head dim) of the prefill comparison
PREFILL_SHAPES = [(8, 1024, 9, 3, 64), (4, 2048, 32, 8, 128)]
BLOCK = 16


def host_bench_start() -> None:
    """What the host-side benchmarks do first: one torch thread, and the machine."""
    import os
    import platform

    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} cpus ({platform.machine()}), python "
          f"{platform.python_version()}, torch {torch.__version__}")  # fmt: skip


@contextlib.contextmanager
def tiny_model() -> Iterator[Path]:
    """The tiny random model (float32) in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="llmcore-tiny-") as tmp:
        build_model("tiny", Path(tmp), torch.float32)
        yield Path(tmp)


def build_model(shape: str, folder: Path, dtype: torch.dtype) -> Any:
    """A Llama with `shape`'s dimensions and random weights, saved to `folder`
    with a word-level tokenizer over its vocabulary; the HF model."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = transformers.LlamaConfig(
        **SHAPES[shape], max_position_embeddings=8192, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, initializer_range=0.02,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(dtype).eval()
    model.save_pretrained(folder, safe_serialization=True)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """The median seconds of `fn` over `repeats` (after one warm-up)."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def busy_seconds(fn: Callable[[], Any], device: torch.device, steps: int) -> float | None:
    """The GPU kernels' summed time over `steps` calls of `fn` (None on the CPU)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    total_us = 0.0
    for event in prof.events():
        if getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA:
            total_us += event.device_time if hasattr(event, "device_time") else event.cuda_time
    return total_us / 1e6


# ---- 1. one decode step -----------------------------------------------------------------


def decode_step(
    loaded: Any, batch: int, context: int, graphs: bool, repeats: int
) -> dict[str, Any]:
    from llmcore.decode_graphs import cuda_backend
    from llmcore.model_runner import ModelRunner, SequenceChunk

    per_seq = math.ceil((context + repeats + 8) / BLOCK)
    runner = ModelRunner(loaded, batch * per_seq, BLOCK, scratch_block=graphs)
    if graphs:
        runner.enable_decode_graphs(batch, per_seq * BLOCK, cuda_backend())
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)]
    gen = torch.Generator().manual_seed(0)
    vocab = loaded.config.vocab_size
    for i in range(batch):  # the contexts, prefilled one at a time
        ids = torch.randint(3, vocab, (context,), generator=gen).tolist()
        runner.execute([SequenceChunk(ids, 0, tables[i])])
    cached = [context] * batch

    def step() -> None:
        chunks = [SequenceChunk([5], cached[i], tables[i]) for i in range(batch)]
        runner.execute(chunks)
        for i in range(batch):
            cached[i] += 1

    wall = timed(step, loaded.device, repeats)
    busy = busy_seconds(step, loaded.device, repeats)
    result: dict[str, Any] = {"wall_ms": wall * 1e3}
    result["busy_ms"] = None if busy is None else busy / repeats * 1e3
    if runner.graphs is not None:
        result["graphs"] = (
            f"replays {runner.graphs.stats.replays}, off: {runner.graphs.stats.disabled}"
        )
    return result


# ---- 2, 3, 5. through LLM ---------------------------------------------------------------


def offline(
    folder: Path, device: str, prompts: int, tokens: int, eager: bool, *,
    sampling: dict[str, Any] | None = None, narrow_windows: bool | None = None, **options: Any,
) -> float:  # fmt: skip
    """Output tokens/s of `LLM.generate` over `prompts` random 64-token prompts,
    greedy unless `sampling` gives SamplingParams fields (`narrow_windows`: the
    sampler's, for top_k/top_p rows; `options`: more `EngineConfig` fields, as
    `async_scheduling=False`)."""
    from llmcore import LLM, SamplingParams

    kv = prompts * (64 + tokens + 32) * _kv_bytes(folder) + (64 << 20)
    llm = LLM(folder, device=device, max_num_seqs=prompts, enforce_eager=eager, kv_cache_memory=kv,
              **options)  # fmt: skip
    llm.core.sampler.narrow_windows = narrow_windows
    gen = torch.Generator().manual_seed(1)
    vocab = llm.core.loaded.config.vocab_size
    batch = [torch.randint(3, vocab, (64,), generator=gen).tolist() for _ in range(prompts)]
    params = SamplingParams(**(sampling or {"temperature": 0}), max_tokens=tokens, ignore_eos=True)
    llm.generate(batch[:1], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(batch, params)
    elapsed = time.perf_counter() - t0
    assert all(len(o.outputs[0].token_ids) == tokens for o in outs)
    return prompts * tokens / elapsed


def _kv_bytes(folder: Path) -> int:
    import json

    c = json.loads((folder / "config.json").read_text())
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * head_dim * 4


def hf_generate(model: Any, device: torch.device, batch: int, tokens: int) -> float:
    """Output tokens/s of Hugging Face `generate` (greedy, a fixed length)."""
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, model.config.vocab_size, (batch, 64), generator=gen).to(device)
    kwargs = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False,
              "pad_token_id": 0}  # fmt: skip
    with torch.inference_mode():
        model.generate(ids[:1], **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
        sync(device)
        t0 = time.perf_counter()
        model.generate(ids, **kwargs)
        sync(device)
    return batch * tokens / (time.perf_counter() - t0)


def prefill(loaded: Any, sequences: int, length: int) -> float:
    """Prompt tokens/s of one step of `sequences` prompts of `length` tokens."""
    from llmcore.model_runner import ModelRunner, SequenceChunk

    per_seq = math.ceil(length / BLOCK)
    runner = ModelRunner(loaded, sequences * per_seq, BLOCK)
    gen = torch.Generator().manual_seed(3)
    chunks = [
        SequenceChunk(torch.randint(3, loaded.config.vocab_size, (length,), generator=gen).tolist(),
                      0, list(range(i * per_seq, (i + 1) * per_seq)))
        for i in range(sequences)
    ]  # fmt: skip
    return sequences * length / timed(lambda: runner.execute(chunks), loaded.device, 3)


# ---- 4. attention -----------------------------------------------------------------------


def attention(
    shape: tuple[int, int, int, int, int], device: torch.device, dtype: torch.dtype
) -> dict[str, float]:
    """GB/s of K/V read: the paged decode op, and SDPA on contiguous K/V."""
    import ops

    batch, context, hq, hkv, d = shape
    per_seq = math.ceil(context / BLOCK)
    blocks = batch * per_seq
    k_cache = torch.randn(blocks, BLOCK, hkv, d, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    order = torch.randperm(blocks, device=device)  # scattered blocks, as a real cache
    tables = order.view(batch, per_seq).to(torch.int32)
    lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    query = torch.randn(batch, hq, d, device=device, dtype=dtype)
    scale = d**-0.5
    k = (
        k_cache[order]
        .view(batch, per_seq * BLOCK, hkv, d)[:, :context]
        .transpose(1, 2)
        .contiguous()
    )
    v = (
        v_cache[order]
        .view(batch, per_seq * BLOCK, hkv, d)[:, :context]
        .transpose(1, 2)
        .contiguous()
    )
    q = query.unsqueeze(2)  # [B, Hq, 1, D]
    kv_bytes = 2 * batch * context * hkv * d * k_cache.element_size()

    def paged() -> torch.Tensor:
        return ops.paged_attention_decode(query, k_cache, v_cache, tables, lens, scale)

    def sdpa() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, scale=scale, enable_gqa=hq != hkv
        )

    ref = sdpa().squeeze(2)
    err = float((paged().float() - ref.float()).abs().max())
    t_paged, t_sdpa = timed(paged, device, 20), timed(sdpa, device, 20)
    return {"paged": kv_bytes / t_paged / 1e9, "sdpa": kv_bytes / t_sdpa / 1e9, "max_err": err}


def prefill_attention(
    shape: tuple[int, int, int, int, int], device: torch.device, dtype: torch.dtype
) -> dict[str, float]:
    """TFLOP/s of causal prefill attention (B sequences of L new tokens, no cached
    context): the paged prefill op against SDPA's causal attention on the same
    contiguous Q/K/V."""
    import ops

    batch, context, hq, hkv, d = shape
    per_seq = math.ceil(context / BLOCK)
    k_cache = torch.randn(batch * per_seq, BLOCK, hkv, d, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    tables = torch.arange(batch * per_seq, device=device, dtype=torch.int32).view(batch, per_seq)
    lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    starts = torch.arange(batch + 1, device=device, dtype=torch.int32) * context
    query = torch.randn(batch * context, hq, d, device=device, dtype=dtype)
    scale = d**-0.5

    def contiguous(cache: torch.Tensor) -> torch.Tensor:
        return cache.view(batch, per_seq * BLOCK, hkv, d)[:, :context].transpose(1, 2)

    q = query.view(batch, context, hq, d).transpose(1, 2)
    k, v = contiguous(k_cache).contiguous(), contiguous(v_cache).contiguous()
    flops = 4 * batch * hq * d * context * (context + 1) / 2  # QK and PV, causal half

    def paged() -> torch.Tensor:
        return ops.paged_attention_prefill(query, k_cache, v_cache, tables, starts, lens, scale)

    def sdpa() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, scale=scale, is_causal=True, enable_gqa=hq != hkv
        )

    ref = sdpa().transpose(1, 2).reshape(batch * context, hq, d)
    err = float((paged().float() - ref.float()).abs().max())
    t_paged, t_sdpa = timed(paged, device, 5), timed(sdpa, device, 5)
    return {"paged": flops / t_paged / 1e12, "sdpa": flops / t_sdpa / 1e12, "max_err": err}


def comparison(title: str, unit: str, measure: Callable[..., dict[str, float]],
               device: torch.device, dtype: torch.dtype, shapes: list[Any]) -> None:  # fmt: skip
    """A table of `measure(shape, device, dtype)` over the shapes: ours against SDPA."""
    print(f"\n| {title} (B, L, Hq, Hkv, D) | paged {unit} | SDPA {unit} | ratio | max err |")
    print("|---|---:|---:|---:|---:|")
    for s in shapes:
        r = measure(s, device, dtype)
        ratio = r["paged"] / r["sdpa"]
        row(s, f"{r['paged']:.2f}", f"{r['sdpa']:.2f}", f"{ratio:.2f}", f"{r['max_err']:.2e}")


def attention_sweep(device: torch.device, dtype: torch.dtype, shapes: list[Any]) -> None:
    """The decode planner's knobs (ops/cuda/attention.py) against the six shapes:
    GB/s for each (blocks per SM, minimum partition) pair."""
    from ops.cuda import attention as planner

    pairs = [(b, m) for b in (2, 4, 8, 16) for m in (32, 64, 128, 256)]
    print("\n| blocks/SM, min partition | " + " | ".join(str(s) for s in shapes) + " |")
    print("|---|" + "---:|" * len(shapes))
    saved = planner.BLOCKS_PER_SM, planner.MIN_PARTITION
    try:
        for blocks, minimum in pairs:
            planner.BLOCKS_PER_SM, planner.MIN_PARTITION = blocks, minimum
            row(
                f"{blocks}, {minimum}",
                *(f"{attention(s, device, dtype)['paged']:.0f}" for s in shapes),
            )
    finally:
        planner.BLOCKS_PER_SM, planner.MIN_PARTITION = saved


# ---- the run ----------------------------------------------------------------------------


def row(*cells: object) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |")


@contextlib.contextmanager
def model_folder(shape: str, dtype: torch.dtype) -> Iterator[tuple[Path, Any]]:
    with tempfile.TemporaryDirectory(prefix="llmcore-gpu-") as tmp:
        folder = Path(tmp)
        yield folder, build_model(shape, folder, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="135m", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the CPU dry run)")
    parser.add_argument("--attention-only", action="store_true",
                        help="only the attention kernels: decode at the six shapes, the "
                        "planner sweep, prefill")  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device, nothing measured (--device cpu --smoke is the dry run)")
        return
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = "tiny" if args.smoke else args.shape
    big = 1 if args.smoke else 0
    n_prompts, n_tokens = (8, 16) if args.smoke else (256, 256)
    import llmcore

    attention_shapes = ATTENTION_SHAPES[:2] if args.smoke else ATTENTION_SHAPES
    prefill_shapes = [(1, 64, 4, 2, 64)] if args.smoke else PREFILL_SHAPES
    if args.attention_only:
        comparison("attention", "GB/s", attention, device, dtype, attention_shapes)
        attention_sweep(device, dtype, attention_shapes)
        comparison("prefill attention", "TFLOP/s", prefill_attention, device, dtype,
                   prefill_shapes)  # fmt: skip
        return
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"shape {shape}; dtype {dtype}; torch {torch.__version__}")  # fmt: skip
    with model_folder(shape, dtype) as (folder, hf):
        hf = hf.to(device)
        loaded = llmcore.load_model(folder, dtype="auto" if device.type == "cuda" else "float32",
                                    device=args.device)  # fmt: skip
        print("\n| decode step | batch | wall ms | GPU busy ms | busy share | notes |")
        print("|---|---:|---:|---:|---:|---|")
        for batch in (1, 8 if big else 64):
            for graphs in (False, True) if device.type == "cuda" else (False,):
                r = decode_step(loaded, batch, 128 if big else 512, graphs, 5 if big else 50)
                share = "" if r["busy_ms"] is None else f"{r['busy_ms'] / r['wall_ms']:.0%}"
                busy = "" if r["busy_ms"] is None else f"{r['busy_ms']:.2f}"
                name = "graphs" if graphs else "eager"
                row(name, batch, f"{r['wall_ms']:.2f}", busy, share, r.get("graphs", ""))
        print("\n| offline | tok/s | reference |")
        print("|---|---:|---|")
        hf_batch = hf_generate(hf, device, min(64, n_prompts), n_tokens)
        hf_single = hf_generate(hf, device, 1, n_tokens)
        for eager in (True, False) if device.type == "cuda" else (True,):
            many = offline(folder, args.device, n_prompts, n_tokens, eager)
            one = offline(folder, args.device, 1, n_tokens, eager)
            name = "eager" if eager else "graphs"
            row(f"LLM.generate {n_prompts} x {n_tokens}, {name}", f"{many:.0f}",
                f"HF batch {min(64, n_prompts)}: {hf_batch:.0f}")  # fmt: skip
            row(f"single stream, {name}", f"{one:.1f}", f"HF batch 1: {hf_single:.1f}")
        if device.type == "cuda":  # what async scheduling and overlapped steps give
            ahead_off: tuple[tuple[str, dict[str, Any]], ...] = (
                ("not scheduled ahead", {"async_scheduling": False}),
                ("steps not overlapped", {"async_scheduling": False, "overlap_steps": False}),
            )
            for name, options in ahead_off:
                many = offline(folder, args.device, n_prompts, n_tokens, False, **options)
                one = offline(folder, args.device, 1, n_tokens, False, **options)
                row(f"LLM.generate {n_prompts} x {n_tokens}, graphs, {name}", f"{many:.0f}",
                    f"HF batch {min(64, n_prompts)}: {hf_batch:.0f}")  # fmt: skip
                row(f"single stream, graphs, {name}", f"{one:.1f}", f"HF batch 1: {hf_single:.1f}")
            # sampled rows: top_p over the whole vocabulary sorted (no read back: the
            # default on a GPU) against widening windows (each step reads back)
            nucleus = {"temperature": 0.8, "top_p": 0.9}
            for windows, name in ((False, "whole vocabulary"), (True, "windows, read back")):
                many = offline(folder, args.device, n_prompts, n_tokens, False,
                               sampling=nucleus, narrow_windows=windows)  # fmt: skip
                row(f"LLM.generate {n_prompts} x {n_tokens}, graphs, top_p 0.9, {name}",
                    f"{many:.0f}", "greedy above")  # fmt: skip
        print(f"\nprefill {2 if big else 8} x {128 if big else 1024}: "
              f"{prefill(loaded, 2 if big else 8, 128 if big else 1024):.0f} tok/s")  # fmt: skip
        comparison("attention", "GB/s", attention, device, dtype, attention_shapes)
        comparison("prefill attention", "TFLOP/s", prefill_attention, device, dtype,
                   prefill_shapes)  # fmt: skip


if __name__ == "__main__":
    main()
