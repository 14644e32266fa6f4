"""The `llmcore` command line, run as a real process on the embedded default model."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmcore.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_generate_and_chat_on_the_default_model() -> None:
    out = _cli("generate", "The capital of France is", "--max-tokens", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(" Paris")
    chat = _cli("chat", "--max-tokens", "30", stdin="What is 2+2?\n")
    assert chat.returncode == 0, chat.stderr
    assert "4" in chat.stdout


def test_errors_are_one_line_and_exit_2() -> None:
    out = _cli("generate", "x", "--model", "/nonexistent/model.gguf")
    assert out.returncode == 2
    expected = "llmcore: error: model path '/nonexistent/model.gguf' does not exist"
    assert out.stderr.strip() == expected
