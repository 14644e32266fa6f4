"""llmcore's numbers against llama.cpp's on the same GGUF (SmolLM2-135M-Instruct Q4_1
by default): next-token logits and greedy continuations of 10 fixed prompts.

Both sides get the same token ids (llmcore's tokenizer, no chat template applied by
either side; the chat prompts are written out in ChatML with their special tokens).
llama.cpp runs through llama-cpp-python (`Llama(model_path, logits_all=True,
n_threads=2)`): each prompt is evaluated, its logits read from `scores`, then 32
tokens are chosen by argmax over the raw logits and fed back one at a time; llmcore
does the same through its `ModelRunner` (the prompt's logits at every position,
then `greedy_generate`). Neither side's sampler is involved.

Per prompt: the largest absolute difference of the next-token logits (and of the
logits at every prompt position), whether the next token (argmax) agrees, the share
of prompt positions whose argmax agrees, and whether the 32 greedy tokens are
identical (else the first position that differs). The goal (issue 19): greedy
tokens identical for at least 9 prompts of 10; the exit status is 1 when missed.

Run where both llmcore and llama_cpp import (`nox -s llamacpp`), or from llmcore's
environment with llama.cpp's python named, which runs the llama.cpp side in a child
process (this file again, with `--llamacpp-side`; it imports only llama_cpp and
numpy there):

    nox -s llamacpp
    python tests/bench/fidelity_llamacpp.py [--llamacpp-python /work/venv-llamacpp/bin/python]
        [--model FILE.gguf] [--dtype auto] [--new-tokens 32] [--f32-reference]
        [--llamacpp-kv f16|f32]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CHATML = "<|im_start|>{role}\n{content}<|im_end|>\n"
PLAIN = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "1, 2, 3, 5, 8, 13,",
    "The three laws of thermodynamics state that",
    "import numpy as np\n\n# compute the mean of each row\n",
]
CHATS = [
    [("user", "What is the boiling point of water?")],
    [("system", "You are a terse assistant."), ("user", "Name three primary colours.")],
    [("user", "Translate 'good morning' into German and Spanish.")],
    [
        ("user", "Hi!"),
        ("assistant", "Hello! How can I help you today?"),
        ("user", "Write a haiku about autumn leaves."),
    ],
]


def prompt_texts() -> list[str]:
    chats = [
        "".join(CHATML.format(role=r, content=c) for r, c in turns) + "<|im_start|>assistant\n"
        for turns in CHATS
    ]
    return PLAIN + chats


# ---- the llama.cpp side (imports llama_cpp and numpy only) ------------------------------


@dataclass(slots=True)
class SideResult:
    logits: list[np.ndarray]  # per prompt, [prompt length, vocab] float32
    greedy: list[list[int]]


def llamacpp_side(
    model: Path, prompts: list[list[int]], new_tokens: int, kv: str = "f16"
) -> SideResult:
    import llama_cpp

    longest = max(len(p) for p in prompts) + new_tokens
    kv_type = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[kv]
    llm = llama_cpp.Llama(
        str(model),
        logits_all=True,
        n_threads=2,
        n_threads_batch=2,
        n_ctx=max(512, longest),
        n_batch=512,
        type_k=kv_type,
        type_v=kv_type,
        verbose=False,
    )
    result = SideResult([], [])
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        result.logits.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
        tokens: list[int] = []
        for _ in range(new_tokens):
            tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if len(tokens) < new_tokens:
                llm.eval([tokens[-1]])
        result.greedy.append(tokens)
    return result


def llamacpp_version() -> str:
    import llama_cpp

    return f"llama-cpp-python {llama_cpp.__version__}"


def run_llamacpp_child(
    python: str,
    model: Path,
    prompts: list[list[int]],
    new_tokens: int,
    kv: str,
    lib: Path | None = None,
) -> tuple[SideResult, str]:
    """This file in `python` with --llamacpp-side; arrays come back in an .npz.
    `lib`: another build of llama.cpp's shared libraries (LLAMA_CPP_LIB_PATH)."""
    with tempfile.TemporaryDirectory() as tmp:
        request, out = Path(tmp) / "prompts.json", Path(tmp) / "out.npz"
        spec = {"prompts": prompts, "new_tokens": new_tokens, "kv": kv}
        request.write_text(json.dumps(spec))
        env = dict(os.environ)
        if lib is not None:
            env["LLAMA_CPP_LIB_PATH"] = str(lib)
        subprocess.run(
            [python, __file__, "--llamacpp-side", str(request), str(out), "--model", str(model)],
            check=True,
            env=env,
        )
        data = np.load(out)
        count = len(prompts)
        side = SideResult(
            [data[f"logits{i}"] for i in range(count)],
            [data[f"greedy{i}"].tolist() for i in range(count)],
        )
        return side, str(data["version"])


def child_main(request: Path, out: Path, model: Path) -> None:
    spec = json.loads(request.read_text())
    side = llamacpp_side(model, spec["prompts"], spec["new_tokens"], spec["kv"])
    arrays: dict[str, Any] = {"version": np.array(llamacpp_version())}
    for i, (logits, greedy) in enumerate(zip(side.logits, side.greedy, strict=True)):
        arrays[f"logits{i}"] = logits
        arrays[f"greedy{i}"] = np.array(greedy, dtype=np.int64)
    np.savez(out, **arrays)


# ---- the llmcore side ------------------------------------------------------------------


def llmcore_side(model: Path, dtype: str, prompts: list[list[int]], new_tokens: int) -> SideResult:
    import llmcore
    from llmcore.model_runner import greedy_generate

    loaded = llmcore.load_model(model, dtype=dtype)
    block = 16
    longest = max(len(p) for p in prompts) + new_tokens
    runner = llmcore.ModelRunner(loaded, num_blocks=-(-longest // block) + 1, block_size=block)
    result = SideResult([], [])
    for ids in prompts:
        table = list(range(-(-(len(ids) + new_tokens) // block)))
        chunk = llmcore.SequenceChunk(ids, 0, table, all_logits=True)
        step = runner.execute_detailed([chunk])
        result.logits.append(step.all[0].float().numpy())
        result.greedy.append(greedy_generate(runner, ids, new_tokens))
    return result


def dequantized_copy(source: Path, target: Path) -> None:
    """`source` with every tensor dequantized to float32 (metadata kept; file type
    set to ALL_F32), through the `gguf` package."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(target, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = 0 if key == "general.file_type" else field.contents()
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        writer.add_tensor(tensor.name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---- comparison ------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    tokens: int
    next_max_abs: float
    next_scale: float  # the largest |logit| llama.cpp gives the next token
    next_agree: bool
    all_max_abs: float
    all_agree: float  # share of prompt positions whose argmax agrees
    first_diff: int | None  # first greedy position that differs, None if identical


def compare(ours: SideResult, theirs: SideResult, prompts: list[list[int]]) -> list[Row]:
    rows = []
    for i, ids in enumerate(prompts):
        a, b = ours.logits[i], theirs.logits[i]
        assert a.shape == b.shape, (a.shape, b.shape)
        pairs = zip(ours.greedy[i], theirs.greedy[i], strict=True)
        diffs = [j for j, (x, y) in enumerate(pairs) if x != y]
        rows.append(
            Row(
                tokens=len(ids),
                next_max_abs=float(np.abs(a[-1] - b[-1]).max()),
                next_scale=float(np.abs(b[-1]).max()),
                next_agree=int(a[-1].argmax()) == int(b[-1].argmax()),
                all_max_abs=float(np.abs(a - b).max()),
                all_agree=float((a.argmax(-1) == b.argmax(-1)).mean()),
                first_diff=diffs[0] if diffs else None,
            )
        )
    return rows


def report(rows: list[Row], texts: list[str], new_tokens: int) -> int:
    print(
        "| # | prompt | tokens | next-token max abs diff (max abs logit) | next token agrees "
        f"| all positions: max abs diff, argmax agrees | {new_tokens} greedy tokens |"
    )
    print("|---|---|---:|---:|---|---|---|")
    for i, (row, text) in enumerate(zip(rows, texts, strict=True)):
        shown = text.replace("\n", "\\n")
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        greedy = "identical" if row.first_diff is None else f"differ at {row.first_diff}"
        print(
            f"| {i} | `{shown}` | {row.tokens} | {row.next_max_abs:.3g} ({row.next_scale:.1f}) "
            f"| {'yes' if row.next_agree else 'NO'} "
            f"| {row.all_max_abs:.3g}, {row.all_agree:.0%} | {greedy} |"
        )
    identical = sum(r.first_diff is None for r in rows)
    agree = sum(r.next_agree for r in rows)
    print(
        f"\nnext token agrees on {agree}/{len(rows)} prompts; greedy tokens identical on "
        f"{identical}/{len(rows)}; worst next-token max abs diff "
        f"{max(r.next_max_abs for r in rows):.3g}"
    )
    return identical


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a GGUF file (default: the embedded SmolLM2)")
    parser.add_argument("--dtype", default="auto", help="llmcore's --dtype")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--min-identical", type=int, default=9, help="exit 1 below this")
    parser.add_argument(
        "--llamacpp-python", help="a python with llama_cpp, for the llama.cpp side (a child)"
    )
    parser.add_argument(
        "--f32-reference", action="store_true", help="also compare on a float32 copy of the GGUF"
    )
    parser.add_argument("--llamacpp-kv", choices=("f16", "f32"), default="f16")
    parser.add_argument(
        "--llamacpp-lib",
        type=Path,
        help="another build of llama.cpp's shared libraries (e.g. AVX2 only): also compare "
        "llama.cpp against itself (needs --llamacpp-python)",
    )
    parser.add_argument("--llamacpp-side", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.llamacpp_side:
        child_main(*args.llamacpp_side, args.model)
        return
    if not args.llamacpp_python and importlib.util.find_spec("llama_cpp") is None:
        sys.exit(
            "llama_cpp does not import here: pass --llamacpp-python PYTHON, or nox -s llamacpp"
        )

    sys.path.insert(0, str(ROOT))
    from llmcore.default_model import default_chat_model_path

    model = args.model or default_chat_model_path()
    identical = run_comparison(model, args)
    if args.f32_reference:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / (model.stem + ".f32.gguf")
            dequantized_copy(model, copy)
            print(f"\n## the same, on a float32 copy of {model.name}\n")
            run_comparison(copy, args)
    if identical < args.min_identical:
        print(f"FAILED: fewer than {args.min_identical} prompts with identical greedy tokens")
        sys.exit(1)


def run_comparison(model: Path, args: argparse.Namespace) -> int:
    """Both sides on `model`; prints the table and returns how many prompts gave
    identical greedy tokens."""
    import torch

    import llmcore

    tokenizer = llmcore.load_tokenizer(model)
    texts = prompt_texts()
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    new, kv = args.new_tokens, args.llamacpp_kv
    if args.llamacpp_python:
        theirs, version = run_llamacpp_child(args.llamacpp_python, model, prompts, new, kv)
    else:
        theirs, version = llamacpp_side(model, prompts, new, kv), llamacpp_version()
    if args.llamacpp_lib and args.llamacpp_python:
        other, _ = run_llamacpp_child(
            args.llamacpp_python, model, prompts, new, kv, args.llamacpp_lib
        )
        print(
            f"llama.cpp built from {args.llamacpp_lib} against llama.cpp's own build "
            f"({version}, KV cache {kv}), the same protocol:\n"
        )
        report(compare(other, theirs, prompts), texts, new)
        print()
    ours = llmcore_side(model, args.dtype, prompts, new)
    print(
        f"model: {model.name}; llmcore --dtype {args.dtype} (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads) against {version} (n_threads=2, KV cache {kv}); "
        f"{len(prompts)} prompts, {new} greedy tokens each (argmax of the raw logits on "
        "both sides)\n"
    )
    return report(compare(ours, theirs, prompts), texts, new)


if __name__ == "__main__":
    main()
