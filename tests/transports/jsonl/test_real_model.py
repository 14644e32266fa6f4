"""`python -m llmcore.jsonl` on SmolLM2-135M-Instruct: a 1,000-line batch (chat and
completions mixed, max_tokens 4, 20 malformed lines spread through it) answered in
input order, and the same batch killed with SIGKILL half-way and finished with
--resume. (Pipe mode over stdin/stdout is tested without a model in test_job.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # python -m llmcore.jsonl on SmolLM2, in a subprocess

LINES = 1000
MALFORMED_EVERY = 50  # line i is malformed when i % 50 == 25: 20 lines
CHAT_EVERY = 4  # the rest: a chat request every 4th line, else a completion
ENGINE_FLAGS = ("--kv-cache-memory", "256MiB", "--max-model-len", "512")
TIMEOUT = 300


def _malformed(i: int) -> bytes:
    kind = (i // MALFORMED_EVERY) % 5
    cid = f"bad-{i}"
    good = {"custom_id": cid, "method": "POST", "url": "/v1/completions",
            "body": {"prompt": "x", "max_tokens": 4}}  # fmt: skip
    if kind == 0:
        return b'{"custom_id": "' + cid.encode() + b'", "method": "POST", oops'
    if kind == 1:
        return json.dumps({k: v for k, v in good.items() if k != "body"}).encode()
    if kind == 2:
        return json.dumps({**good, "method": "GET"}).encode()
    if kind == 3:
        return json.dumps({**good, "body": {"prompt": "x", "stream": True}}).encode()
    return json.dumps({**good, "url": "/v1/nowhere"}).encode()


def _request(i: int) -> bytes:
    if i % MALFORMED_EVERY == 25:
        return _malformed(i)
    if i % CHAT_EVERY:
        body: dict[str, Any] = {"prompt": f"Item {i}:", "max_tokens": 4, "temperature": 0}
        url = "/v1/completions"
    else:
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": f"Say {i}."}]  # fmt: skip
        body = {"messages": messages, "max_tokens": 4, "temperature": 0}
        url = "/v1/chat/completions"
    return json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url,
                       "body": body}).encode()  # fmt: skip


@pytest.fixture(scope="module")
def batch_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("batch") / "in.jsonl"
    path.write_bytes(b"".join(_request(i) + b"\n" for i in range(LINES)))
    return path


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmcore.jsonl", *ENGINE_FLAGS, "--progress-interval", "2", *args]


def _line_number(record: dict[str, Any]) -> int:
    """The input line (1-based) a record answers."""
    if record["error"] is not None:
        return int(record["error"]["line"])
    return int(record["custom_id"].removeprefix("req-")) + 1


def _check_complete(out: Path) -> list[dict[str, Any]]:
    data = out.read_bytes()
    assert data.endswith(b"\n")
    records = [json.loads(x) for x in data.splitlines()]
    assert [_line_number(r) for r in records] == list(range(1, LINES + 1))  # input order
    ids = Counter(r["custom_id"] for r in records)
    assert ids.pop(None) == 4  # the bad-JSON lines have no custom_id
    assert set(ids.values()) == {1} and len(ids) == LINES - 4
    ok = [r for r in records if r["error"] is None]
    errors = [r for r in records if r["error"] is not None]
    assert len(ok) == 980 and len(errors) == 20
    assert all(r["response"]["status_code"] == 200 for r in ok)
    assert all(r["response"]["body"]["usage"]["completion_tokens"] <= 4 for r in ok)
    assert Counter(r["error"]["code"] for r in errors) == {
        "invalid_json_line": 4, "invalid_request_line": 4, "invalid_method": 4,
        "stream_unsupported": 4, "invalid_url": 4}  # fmt: skip
    return records


def test_a_thousand_line_batch(batch_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = subprocess.run(_command("-i", str(batch_file), "-o", str(out)),
                          capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "llmcore batch: 1000 lines, 980 ok, 20 errors (20 not executed" in done.stderr
    assert "/1000 lines (" in done.stderr  # progress lines (stderr is not a terminal)
    records = _check_complete(out)
    chat = next(r for r in records if r["custom_id"] == "req-0")["response"]["body"]
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["content"]
    text = next(r for r in records if r["custom_id"] == "req-1")["response"]["body"]
    assert text["object"] == "text_completion" and text["choices"][0]["text"]


def test_killed_half_way_then_resumed(batch_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(_command("-q", "-i", str(batch_file), "-o", str(out)),
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (out.exists() and out.read_bytes().count(b"\n") >= LINES // 2 - 50):
            assert proc.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = out.read_bytes()
    written = first.count(b"\n")
    assert written < LINES

    done = subprocess.run(_command("--resume", "-i", str(batch_file), "-o", str(out)),
                          capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "llmcore batch: 1000 lines, 980 ok, 20 errors" in done.stderr
    assert f"{written} lines from an earlier run" in done.stderr
    _check_complete(out)
    assert out.read_bytes().startswith(first[: first.rfind(b"\n") + 1])


def test_structured_outputs_in_a_batch(tmp_path: Path) -> None:
    """A json_schema `response_format` and a `guided_choice` travel in batch bodies."""
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
              "properties": {"name": {"type": "string", "maxLength": 20},
                             "age": {"type": "integer", "minimum": 0, "maximum": 120}}}  # fmt: skip
    json_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    bodies = {
        "schema": {"messages": [{"role": "user", "content": "Describe a person as JSON."}],
                   "response_format": json_format, "max_tokens": 200, "temperature": 0},
        "choice": {"messages": [{"role": "user", "content": "Classify: I love it!"}],
                   "guided_choice": ["positive", "negative"], "max_tokens": 200},
        "completion": {"prompt": "A person as JSON:", "max_tokens": 200, "temperature": 1,
                       "seed": 3, "response_format": json_format},
    }  # fmt: skip
    source = tmp_path / "in.jsonl"
    lines = [{"custom_id": cid, "method": "POST", "body": body,
              "url": "/v1/completions" if "prompt" in body else "/v1/chat/completions"}
             for cid, body in bodies.items()]  # fmt: skip
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    done = subprocess.run(_command("-q", "-i", str(source), "-o", str(out)),
                          capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = {r["custom_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    choices = {cid: r["response"]["body"]["choices"][0] for cid, r in records.items()}
    assert all(c["finish_reason"] == "stop" for c in choices.values()), choices
    for text in (choices["schema"]["message"]["content"], choices["completion"]["text"]):
        person = json.loads(text)
        assert set(person) == {"name", "age"} and 0 <= person["age"] <= 120, text
        assert isinstance(person["name"], str) and len(person["name"]) <= 20, text
    assert choices["choice"]["message"]["content"] in ("positive", "negative")
