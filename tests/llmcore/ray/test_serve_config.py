"""`llmcore.ray.serve` without a Ray cluster: the config, the flags it takes and
refuses, the deployment options passed through, and the replica's health check
and shutdown over fake engines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

pytest.importorskip("ray.serve")

from llmcore.ray.serve import (
    LLMCoreServeConfig,
    LLMCoreServer,
    build_app,
    parse_engine_args,
)

ROOT = Path(__file__).resolve().parents[3]


def test_the_config_is_the_command_line_of_llmcore_serve() -> None:
    config = LLMCoreServeConfig(
        model="/m.gguf", served_model_name="m", engine_args="--max-num-seqs 8 --seed '1'"
    )
    assert config.argv() == [
        "/m.gguf",
        "--served-model-name",
        "m",
        "--max-num-seqs",
        "8",
        "--seed",
        "1",
    ]
    args = parse_engine_args(config.argv())
    assert (args.model, args.served_model_name, args.max_num_seqs) == ("/m.gguf", ["m"], 8)
    assert LLMCoreServeConfig().argv() == []  # the embedded defaults


def test_build_app_passes_the_deployment_options_through() -> None:
    app = build_app(
        {
            "engine_args": ["--max-num-seqs", "4"],
            "deployment": {"num_replicas": 3, "ray_actor_options": {"num_cpus": 2}},
        }
    )
    deployment = app._bound_deployment
    assert deployment.name == "llmcore"
    assert deployment.num_replicas == 3
    assert deployment.ray_actor_options["num_cpus"] == 2
    assert deployment.max_ongoing_requests == 8  # twice the engine's batch by default
    assert deployment.init_args == (["--max-num-seqs", "4"],)
    options = {"name": "smol", "max_ongoing_requests": 3}
    renamed = build_app({"deployment": options})._bound_deployment
    assert (renamed.name, renamed.max_ongoing_requests) == ("smol", 3)
    autoscaling = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16}
    scaled = build_app({"deployment": {"autoscaling_config": autoscaling}})._bound_deployment
    assert scaled._deployment_config.autoscaling_config.max_replicas == 4


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"engine_args": ["--max-num-seqs", "many"]}, "invalid int value"),
        ({"engine_args": ["--no-such-flag"]}, "unrecognized arguments"),
        (
            {"engine_args": ["--port", "9000", "--allowed-origins", "*"]},
            "--port, --allowed-origins",
        ),
        ({"engine_args": ["--api-key", "k"]}, "--api-key"),
        ({"engine_args": ["--replicas", "2", "--api-server-count", "2"]}, "--replicas, --api"),
    ],
)
def test_bad_or_transport_flags_fail_build_app(config: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        build_app(config)


def test_build_app_is_an_application_builder_for_serve_run() -> None:
    """`serve run llmcore.ray.serve:build_app key=value ...` hands it a dict of strings."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    args = {"served_model_name": "m", "engine_args": "--max-num-seqs 2"}
    app = call_user_app_builder_with_args_if_necessary(build_app, args)
    assert app._bound_deployment.init_args == (["--served-model-name", "m", "--max-num-seqs", "2"],)


def test_unknown_config_keys_fail_build_app() -> None:
    with pytest.raises(msgspec.ValidationError, match="num_replicas"):
        build_app({"num_replicas": 2})


class FakeEngine:
    def __init__(self, healthy: bool) -> None:
        self.healthy, self.closed = healthy, False

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine dead")


class FakeLoaded:
    """A `LoadedService` over fake engines."""

    def __init__(self, *engines: FakeEngine) -> None:
        self.engines = engines
        self.service = SimpleNamespace(models=[SimpleNamespace(engine=e) for e in engines])

    async def aclose(self) -> None:
        for engine in self.engines:
            engine.closed = True


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
# Serve awaits the async __del__; Python's own call, when `server` goes, is not awaited.
@pytest.mark.filterwarnings("ignore:coroutine 'LLMCoreServer.__del__' was never awaited")
async def test_the_replica_is_as_healthy_as_its_engines_and_closes_them(anyio_backend: str) -> None:
    server = LLMCoreServer([])
    with pytest.raises(RuntimeError, match="not loaded"):
        await server.check_health()
    good, bad = FakeEngine(True), FakeEngine(False)
    server._loaded = FakeLoaded(good)  # type: ignore[assignment]
    await server.check_health()
    server._loaded = FakeLoaded(good, bad)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="engine dead"):
        await server.check_health()
    await server.__del__()
    assert good.closed and bad.closed


def test_import_llmcore_never_imports_ray() -> None:
    code = (
        "import sys, llmcore, llmcore.ray, llmcore.ray.asgi, llmcore.cli.serve\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'ray'], 'ray imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
