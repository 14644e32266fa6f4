"""`llmcore chat`, `llmcore generate` and `llmcore info`: one model, in this process,
without the engine.

`chat` and `generate` decode greedily, one sequence at a time, over a paged KV
cache as long as the model's context; `chat` renders each turn through
`llmcore.chat_template` as the server does. Invariant: a model that cannot be
loaded, or has no chat template for `chat`, fails before anything is read from
stdin (the caller turns the error into one line and exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from llmcore.cli import flags

DEFAULT_BLOCK_SIZE = 16


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `chat`, `generate` and `info` subcommands, each with its handler as `func`."""
    chat = sub.add_parser("chat", help="talk to a model in the terminal")
    flags.add_single_model_flags(chat)
    chat.add_argument("--system", help="a system message")
    chat.set_defaults(func=chat_command)
    generate = sub.add_parser("generate", help="complete one prompt")
    flags.add_single_model_flags(generate)
    generate.add_argument("prompt")
    generate.set_defaults(func=generate_command)
    info = sub.add_parser("info", help="print what llmcore read from a model")
    flags.add_single_model_flags(info)
    info.set_defaults(func=info_command)


class GreedySession:
    """A loaded model, its tokenizer and chat template, and a model runner that
    decodes one sequence greedily."""

    def __init__(self, args: argparse.Namespace) -> None:
        from llmcore.chat_template import ChatTemplate
        from llmcore.model_loader import load_model
        from llmcore.model_runner import ModelRunner
        from llmcore.tokenization.tokenizer import load_tokenizer
        from llmcore.weights.gguf_file import shared_parses

        with shared_parses():
            self.loaded = load_model(args.model, dtype=args.dtype)
            self.tokenizer = load_tokenizer(self.loaded.path)
        self.template = ChatTemplate.resolve(
            self.loaded.path, args.chat_template, gguf_template=self.tokenizer.chat_template
        )
        self.max_tokens: int = args.max_tokens
        max_len = self.loaded.max_model_len
        self.runner = ModelRunner(self.loaded, num_blocks=-(-max_len // DEFAULT_BLOCK_SIZE))

    def stream(self, prompt_ids: list[int]) -> Iterator[str]:
        """The completion's text, piece by piece, until a stop token or the limit."""
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


def chat_command(args: argparse.Namespace) -> int:
    from llmcore.chat_template import render_conversation, require_template
    from llmcore.openai.protocol import AssistantMessage, ChatMessage, SystemMessage, UserMessage

    session = GreedySession(args)
    template = require_template(session.template)
    messages: list[ChatMessage] = []
    if args.system:
        messages.append(SystemMessage(args.system))
    print(f"llmcore chat: {session.loaded.path.name} (Ctrl-D to quit)", file=sys.stderr)
    for line in sys.stdin if not sys.stdin.isatty() else iter(lambda: input("> "), None):
        if not line.strip():
            continue
        messages.append(UserMessage(line.rstrip("\n")))
        text = render_conversation(
            template, messages, session.tokenizer, add_generation_prompt=True
        )
        prompt = session.tokenizer.encode(text, add_special_tokens=False)
        reply = ""
        for delta in session.stream(prompt):
            reply += delta
            print(delta, end="", flush=True)
        print()
        messages.append(AssistantMessage(reply))
    return 0


def generate_command(args: argparse.Namespace) -> int:
    session = GreedySession(args)
    prompt = session.tokenizer.encode(args.prompt)
    for delta in session.stream(prompt):
        print(delta, end="", flush=True)
    print()
    return 0


def info_command(args: argparse.Namespace) -> int:
    from llmcore.model_loader import load_model

    loaded = load_model(args.model, dtype=args.dtype)
    print(f"path: {loaded.path}\ndtype: {loaded.dtype}\nmax_model_len: {loaded.max_model_len}")
    for name in loaded.config.__slots__:  # type: ignore[attr-defined]
        if name != "raw":
            print(f"{name}: {getattr(loaded.config, name)}")
    return 0
