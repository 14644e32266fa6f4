"""A front end that loses its Ray cluster (the head's GCS and raylet killed under
it) answers 503 on `/health` and on requests, in OpenAI's error shape, instead of
hanging or exiting; SIGTERM still stops it cleanly.

The cluster is a `ray start --head` of this test's own (its own port and temp
dir), and only its processes are killed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.server_process import ServerProcess, free_port

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ENV = {"RAY_AUTH_MODE": "disabled"}  # a head of our own: no token to share


def _get(url: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return int(response.status), json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _cluster_processes(marker: str, *kinds: bytes) -> list[int]:
    """The processes of our head: those whose command line names `marker` (its GCS
    port, or its temp dir) and, if `kinds` are given, one of them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in cmdline and (not kinds or any(k in cmdline for k in kinds)):
            found.append(int(entry.name))
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_losing_ray_turns_health_to_503_and_the_server_stays_up(
    smollm2_path: Path, tmp_path: Path
) -> None:
    gcs_port = free_port()
    env = {**os.environ, **ENV}
    temp_dir = tempfile.mkdtemp(prefix="llmcore-ray-")  # short: Ray's socket paths
    head = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head"]
    subprocess.run(
        [*head, f"--port={gcs_port}", "--num-cpus=1", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    server = None
    try:
        server = ServerProcess(
            tmp_path / "server.log",
            str(smollm2_path),
            *("--ray-address", f"127.0.0.1:{gcs_port}", "--kv-cache-memory", "32MiB"),
            env=ENV,
        )
        assert _get(server.url + "/health")[0] == 200
        prompt = {"model": "SmolLM2-135M-Instruct", "prompt": "Hello", "max_tokens": 3}
        assert _get(server.url + "/v1/completions", prompt)[0] == 200
        _kill(_cluster_processes(str(gcs_port), b"gcs_server", b"raylet"))
        deadline = time.monotonic() + 60
        while _get(server.url + "/health")[0] != 503:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.5)
        status, body = _get(server.url + "/v1/completions", prompt)
        assert status == 503
        assert body["error"]["type"] == "service_unavailable"  # type: ignore[index]
        time.sleep(5)  # still up, still answering
        assert server.proc.poll() is None
        assert _get(server.url + "/health")[0] == 503
        assert server.stop() == 0
        server = None
    finally:
        if server is not None:
            server.proc.kill()
        # the rest of the head (its monitors, dashboard agents, workers) and the GCS
        # and raylet if the test failed before killing them
        _kill(
            _cluster_processes(temp_dir)
            + _cluster_processes(str(gcs_port), b"gcs_server", b"raylet")
        )
        shutil.rmtree(temp_dir, ignore_errors=True)
