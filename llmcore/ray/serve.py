"""`build_app(config)`: llmcore as a Ray Serve application, for teams that deploy
with Serve. `serve run llmcore.ray.serve:build_app model=PATH engine_args="..."`
runs it (Serve's application-builder convention: one dict of arguments), and so
does a `serve deploy` config whose `import_path` is `llmcore.ray.serve:build_app`.

- The config (`LLMCoreServeConfig`, or a dict of its fields): `model` (a path; None
  for the embedded defaults), `served_model_name`, `engine_args` (the flags of
  `llmcore serve`, as a list or one shell-quoted string, parsed by the same parser,
  so every engine and service flag means what it means there) and `deployment`
  (Serve's deployment options, passed through: `num_replicas`,
  `autoscaling_config`, `ray_actor_options`, `max_ongoing_requests`, `name`, ...).
- One application is one deployment (`LLMCoreServer`): each replica loads the
  models on its own engines and serves them through `llmcore.ray.asgi`, a
  framework-free ASGI app (`@serve.ingress()` with `__serve_build_asgi_app__`, so
  the app is built after the models load), which hands the request bytes to the
  OpenAI service unchanged. Serve's `check_health` is the engines' `check_health`.
- Several models: `--model` repeated in `engine_args` serves them from one
  deployment (they scale together, as in `llmcore serve`); models that should
  scale apart are one application each, under their own `route_prefix` (Serve
  config's `applications:` list). An ingress that routes one URL to several
  deployments by the body's `model` is not built.
- The request id is the X-Request-Id header as `llmcore serve` takes it; Serve's
  proxy sets that header (and echoes it in the response) when the client did not,
  so behind Serve a request runs under Serve's request id and the body's
  `request_id` is not used.
- The HTTP transport's own flags (address, TLS, API keys, CORS, header limits and
  timeouts, `--root-path`, `--shutdown-grace`) are Serve's proxy's job here and
  are refused, so none is silently ignored; `--max-body-size` applies (413).

Invariant: the config is parsed on the driver first, so a bad flag fails
`build_app` (a ValueError), not a replica; a replica's engines are the ones
`LLMCoreServer.__del__` closes. Only this module imports Ray (at its top).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from ray import serve
from ray.serve import Application

from llmcore.cli import flags, vllm_flags
from llmcore.cli.arguments import parse_serving_args
from llmcore.cli.serve import build_parser
from llmcore.cli.service import LoadedService, build_service
from llmcore.openai.stats_log import log_engine_statistics
from llmcore.ray.asgi import OpenAIASGIApp

log = logging.getLogger("llmcore.ray")

PROG = "llmcore.ray.serve"
DEFAULT_DEPLOYMENT_NAME = "llmcore"

# The HTTP transport's flags: Serve's proxy listens, and owns TLS, CORS, limits.
TRANSPORT_FLAGS = (
    "host",
    "port",
    "uds",
    "uds_mode",
    "uds_allow_uid",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_ca_certs",
    "ssl_cert_reqs",
    "ssl_ciphers",
    "root_path",
    "shutdown_grace",
    "max_header_count",
    "max_header_size",
    "header_timeout",
    "body_timeout",
    "keep_alive_timeout",
    "max_connections",
    "allowed_origins",
    "allowed_methods",
    "allowed_headers",
    "allow_credentials",
)
# Scale-out is Serve's own here (num_replicas, autoscaling_config): llmcore's
# replicas and extra server processes would nest a second cluster inside it.
SCALE_OUT_FLAGS = (
    "replicas",
    "ray_address",
    "routing",
    "replica_num_cpus",
    "replica_num_gpus",
    "replica_memory",
    "api_server_count",
)


class LLMCoreServeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What `build_app` takes (a dict with these keys works too)."""

    model: str | None = None  # None: the embedded default models, as `llmcore serve`
    served_model_name: str | None = None
    engine_args: list[str] | str = []  # `llmcore serve` flags; a string is shell-split
    deployment: dict[str, Any] = {}  # Serve's deployment options, passed through

    def argv(self) -> list[str]:
        """The command line of `llmcore serve` this config stands for."""
        extra = self.engine_args
        return [
            *([self.model] if self.model else []),
            *(["--served-model-name", self.served_model_name] if self.served_model_name else []),
            *(shlex.split(extra) if isinstance(extra, str) else extra),
        ]


def build_app(config: Mapping[str, Any] | LLMCoreServeConfig) -> Application:
    """The Serve application for `config` (see the module's docstring)."""
    if not isinstance(config, LLMCoreServeConfig):
        config = msgspec.convert(dict(config), LLMCoreServeConfig)
    argv = config.argv()
    args = parse_engine_args(argv)
    options: dict[str, Any] = {
        "name": DEFAULT_DEPLOYMENT_NAME,
        # Serve's default (5) would cap the running batch; keep the engine's batch
        # full with as many again waiting in its queue.
        "max_ongoing_requests": 2 * args.max_num_seqs,
        **config.deployment,
    }
    deployment = serve.deployment(**options)(serve.ingress()(LLMCoreServer))
    return deployment.bind(argv)


def parse_engine_args(argv: Sequence[str]) -> argparse.Namespace:
    """`argv` parsed and checked as `llmcore serve` does; ValueError (with the
    parser's message) where `llmcore serve` would exit with a usage error."""
    parser = build_parser(PROG)
    message = io.StringIO()
    try:
        with contextlib.redirect_stderr(message), contextlib.redirect_stdout(message):
            args = parse_serving_args(parser, list(argv))
            vllm_flags.check_vllm_flags(parser, args)
            flags.check_parsers(parser, args)
    except SystemExit:
        raise ValueError(f"engine_args {list(argv)}: {message.getvalue().strip()}") from None
    refused = [
        "--" + dest.replace("_", "-")
        for dest in (*TRANSPORT_FLAGS, *SCALE_OUT_FLAGS)
        if getattr(args, dest) != parser.get_default(dest)
    ]
    if args.api_key:  # also from the environment: never serve unprotected by surprise
        refused.append("--api-key")
    if refused:
        raise ValueError(
            f"engine_args: {', '.join(refused)}: the HTTP server's and llmcore's "
            "scale-out flags do not apply under Ray Serve (its proxy listens, its "
            "num_replicas and autoscaling_config scale; put authentication, TLS and "
            "CORS in front of it)"
        )
    return args


class LLMCoreServer:
    """One replica: the models `argv` names, loaded on this replica's engines,
    behind `OpenAIASGIApp` (the deployment class; `build_app` wraps it for Serve)."""

    def __init__(self, argv: list[str]) -> None:
        self._args = parse_engine_args(argv)
        self._loaded: LoadedService | None = None
        self._stats_log: asyncio.Task[None] | None = None

    async def __serve_build_asgi_app__(self) -> OpenAIASGIApp:
        """Serve calls it once, after `__init__`: load the models (off the event
        loop) and return the ingress app over them."""
        self._loaded = await asyncio.to_thread(build_service, self._args)
        if not self._args.disable_log_stats:
            models = self._loaded.service.models
            self._stats_log = asyncio.create_task(log_engine_statistics(models))
        log.info("llmcore replica serving %s", self._loaded.description)
        return OpenAIASGIApp(self._loaded.service, max_body_size=int(self._args.max_body_size))

    async def check_health(self) -> None:
        """Serve's health check: raises (EngineDeadError) if an engine cannot serve."""
        if self._loaded is None:
            raise RuntimeError("the models are not loaded")
        for model in self._loaded.service.models:
            await model.engine.check_health()

    async def __del__(self) -> None:
        """Serve awaits it when the replica stops (the wrapper class Serve builds
        has its own `__del__`, which awaits this one): close the engines."""
        if self._stats_log is not None:
            self._stats_log.cancel()
        if self._loaded is not None:
            await self._loaded.aclose()
