"""The layering rules of ARCHITECTURE.md, checked on the source: `ops` imports
nothing of ours; `llmcore` imports `ops` only from model code and `plugins` only
through the registry; `transports` uses llmcore's public API only and is imported
only, lazily, by the commands behind `python -m llmcore.http` and `python -m
llmcore.jsonl` (`llmcore/cli/serve.py`, `llmcore/cli/run_batch.py`); and the four
packages import without CuPy or Ray (the imports are blocked to prove it), and the
default server never imports Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("llmcore", "transports", "ops", "plugins")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


def _package_imports(package: str) -> dict[Path, set[str]]:
    return {p: _imports(p) for p in sorted((ROOT / package).rglob("*.py"))}


def test_ops_is_a_leaf() -> None:
    for path, names in _package_imports("ops").items():
        ours = {n for n in names if _top(n) in OURS and _top(n) != "ops"}
        assert not ours, f"{path} imports {ours}"


# The commands behind the thin entry points (`python -m llmcore.http` / `llmcore serve`,
# `python -m llmcore.jsonl` / `llmcore run-batch`): they may import transports, lazily only.
ENTRY_POINTS = {ROOT / "llmcore" / "cli" / "serve.py", ROOT / "llmcore" / "cli" / "run_batch.py"}
THIN_ENTRY_POINTS = {
    ROOT / "llmcore" / "http.py": "serve",
    ROOT / "llmcore" / "jsonl.py": "run_batch",
}


def _module_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_entry_points_import_transports_and_only_lazily() -> None:
    for path in ENTRY_POINTS:
        assert {n for n in _imports(path) if _top(n) == "transports"}, f"{path} moved?"
    for package in ("llmcore", "ops", "plugins"):
        for path, names in _package_imports(package).items():
            if path in ENTRY_POINTS:
                assert not {n for n in _module_level_imports(path) if _top(n) == "transports"}
            else:
                assert not {n for n in names if _top(n) == "transports"}, path


def test_thin_entry_points_only_call_the_cli() -> None:
    for path, command in THIN_ENTRY_POINTS.items():
        ours = {n for n in _imports(path) if _top(n) in OURS}
        assert ours == {f"llmcore.cli.{command}"}, f"{path} imports {ours}"


def test_llmcore_reaches_plugins_only_through_the_registry() -> None:
    for path, names in _package_imports("llmcore").items():
        assert not {n for n in names if _top(n) == "plugins"}, path
        if {n for n in names if _top(n) == "ops"}:
            # Model code, and the weight loader (GGUF blocks as QuantWeights, ops.quant).
            assert path.parent.name in ("models", "weights"), f"{path} imports ops"


def test_transports_use_llmcore_public_api_only() -> None:
    for path, names in _package_imports("transports").items():
        deep = {n for n in names if _top(n) == "llmcore" and n != "llmcore"}
        assert not deep, f"{path} imports {deep}"
        assert not {n for n in names if _top(n) in ("ops", "plugins")}, path


_BLOCK_OPTIONAL = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('cupy', 'ray'): raise ImportError(name + ' blocked')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _run_blocked(code: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _BLOCK_OPTIONAL + code], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_import_without_cupy_or_ray() -> None:
    _run_blocked(
        "import llmcore, transports, ops, plugins, plugins.models.llama, transports.http\n"
        "import llmcore.http, llmcore.jsonl, llmcore.cli, llmcore.openai\n"
        "import llmcore.ray, llmcore.ray.routing, llmcore.ray.statistics\n"
        "assert 'cupy' not in sys.modules and 'ray' not in sys.modules\n"
        "print('ok')\n"
    )


@pytest.mark.slow
def test_the_default_server_never_imports_ray() -> None:
    """`llmcore serve`'s service over the embedded models, built with Ray blocked."""
    _run_blocked(
        "from llmcore.cli.serve import build_parser\n"
        "from llmcore.cli.service import build_service\n"
        "import asyncio\n"
        "loaded = build_service(build_parser().parse_args(['--kv-cache-memory', '32MiB']))\n"
        "asyncio.run(loaded.aclose())\n"
        "assert 'ray' not in sys.modules\n"
        "print('ok')\n"
    )
