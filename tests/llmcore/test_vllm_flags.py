"""`llmcore serve` takes `vllm serve`'s command line: every vLLM flag is same, alias,
accepted with no effect (a warning) or refused (one line, exit 2); `--config
FILE.yaml`; `VLLM_API_KEY`; and docs/cli.md's table is the code's table."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from llmcore.cli.arguments import parse_serving_args
from llmcore.cli.serve import build_http_config, build_parser
from llmcore.cli.vllm_flags import VLLM_FLAGS, Disposition, check_vllm_flags, markdown_table

DOCS = Path(__file__).parents[2] / "docs" / "cli.md"
START, END = "<!-- vllm-flags:start -->\n", "<!-- vllm-flags:end -->"


def test_docs_table_is_the_code_table() -> None:
    text = DOCS.read_text()
    assert START in text and END in text, "docs/cli.md lost its vLLM flag table markers"
    table = text.split(START, 1)[1].split(END, 1)[0]
    assert table == markdown_table(), (
        "docs/cli.md's vLLM table differs from llmcore/cli/vllm_flags.py: regenerate it with "
        "python -c 'from llmcore.cli.vllm_flags import markdown_table; print(markdown_table())'"
    )


def test_each_flag_is_listed_once_and_same_or_alias_flags_are_real_options() -> None:
    names = [flag.name for flag in VLLM_FLAGS]
    assert len(names) == len(set(names))
    actions = {opt: a for a in build_parser()._actions for opt in a.option_strings}
    for flag in VLLM_FLAGS:
        if flag.disposition in (Disposition.SAME, Disposition.ALIAS):
            assert flag.name in actions and not actions[flag.name].dest.startswith("vllm_")
            if flag.disposition is Disposition.ALIAS:
                target = flag.note.split(" ")[0]
                assert actions[target].dest == actions[flag.name].dest


def test_every_vllm_flag_is_recognized(caplog: pytest.LogCaptureFixture) -> None:
    """No vLLM flag is an 'unrecognized argument'; harmless ones warn, refused ones exit 2."""
    parser = build_parser()
    actions = {opt: a for a in parser._actions for opt in a.option_strings}
    for flag in VLLM_FLAGS:
        action = actions[flag.name]
        if action.nargs == 0:
            argv = [flag.name]
        elif action.choices:
            argv = [flag.name, str(next(iter(action.choices)))]
        else:
            argv = [flag.name, flag.accepts[0] if flag.accepts else "1"]
        args = parser.parse_args(argv)
        if flag.disposition is Disposition.REFUSED:
            with pytest.raises(SystemExit) as exc:
                check_vllm_flags(parser, args)
            assert exc.value.code == 2
        else:
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                check_vllm_flags(parser, args)
            warned = any(flag.name in r.getMessage() for r in caplog.records)
            assert warned == (flag.disposition is Disposition.HARMLESS), flag.name


def test_vllm_spellings_map_onto_llmcore_flags() -> None:
    args = parse_serving_args(build_parser(), [
        "--model", "m.gguf", "--max_model_len", "32K", "--no-enable-prefix-caching",
        "--kv-cache-memory-bytes", "1GiB", "--uvicorn-log-level", "warning",
        "--disable-uvicorn-access-log", "--dtype", "half", "--shutdown-timeout", "3",
        "--h11-max-header-count", "50", "--allowed-origins", '["https://a", "https://b"]',
        "-tp", "1", "--no-enable-chunked-prefill",
    ])  # fmt: skip
    assert (args.model, args.models) == (None, ["m.gguf"])
    assert args.max_model_len == 32 * 1024 and args.no_prefix_caching
    assert args.kv_cache_memory == 1 << 30 and args.log_level == "warning"
    assert args.dtype == "float16" and args.shutdown_grace == 3.0
    assert not args.enable_chunked_prefill
    config = build_http_config(args)
    assert not config.access_log and config.max_header_count == 50
    assert config.allowed_origins == ("https://a", "https://b")


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(
        "model: /models/a.gguf\nmax_model_len: 512\nmax-num-seqs: 4\napi-key: [k1, k2]\n"
        "enable_prompt_tokens_details: true\nenable-prefix-caching: false\n"
        "tensor-parallel-size: 1\nport: 9000\n"
    )
    args = parse_serving_args(build_parser(), ["--config", str(config), "--port", "9001"])
    assert args.model == "/models/a.gguf" and args.max_model_len == 512
    assert args.max_num_seqs == 4 and args.api_key == ["k1", "k2"]
    assert args.enable_prompt_tokens_details and args.no_prefix_caching
    assert args.port == 9001  # the command line wins
    assert args.vllm_tensor_parallel_size == "1"
    named = parse_serving_args(build_parser(), ["b.gguf", f"--config={config}"])
    assert named.model == "b.gguf"  # a model on the command line wins over the config's


def test_vllm_api_key_is_read_when_llmcore_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMCORE_API_KEY", raising=False)
    monkeypatch.setenv("VLLM_API_KEY", "from-vllm")
    assert build_http_config(build_parser().parse_args([])).api_keys == ("from-vllm",)
    assert build_http_config(build_parser().parse_args(["--api-key", "x"])).api_keys == ("x",)
    monkeypatch.setenv("LLMCORE_API_KEY", "from-llmcore")
    assert build_http_config(build_parser().parse_args([])).api_keys == ("from-llmcore",)


@pytest.mark.parametrize(
    ("argv", "files", "message"),
    [
        (["--config", "missing.yaml"], {}, "--config missing.yaml: No such file"),
        (["--config", "list.yaml"], {"list.yaml": "- a\n- b\n"}, "must be a mapping"),
        (["--config", "unknown.yaml"], {"unknown.yaml": "no-such-flag: 1\n"}, "unknown key"),
        (["--config", "bad.yaml"], {"bad.yaml": "a: [\n"}, "not valid YAML"),
        (["--max-model-len", "abc"], {}, "--max-model-len"),
        (["--tensor-parallel-size", "2"], {}, "--tensor-parallel-size 2 is not supported"),
        (["--speculative-config", "{}"], {}, "speculative decoding"),
        (["--enable-lora"], {}, "LoRA"),
    ],
)
def test_bad_flags_and_files_are_one_line_and_exit_2(
    tmp_path: Path, argv: list[str], files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "llmcore.http", *argv, "--port", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmcore: error: "), out.stderr
    assert message in lines[0] and "Traceback" not in out.stderr
