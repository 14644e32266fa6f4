"""Extra HTTP server processes in front of the same replicas (`--api-server-count`).

The first server process starts the replicas under a name of its own making; each
extra one is `python -m llmcore.http` with the same arguments, joined to the same
Ray cluster and attached (`--ray-attach`) to those replicas, listening on the same
port with SO_REUSEPORT, so the kernel spreads connections over the processes. Each
process routes with its own router (its own view of prefixes; the load every
replica pushes is the same for all).

Invariants: the extra processes are started only once the replicas are up
(`llmcore.cli.api_servers.stop_servers` stops them); an extra server whose parent
dies stops itself (llmcore/cli/serve.py watches).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Sequence


def replica_base_name() -> str:
    """A name no other server on the cluster uses for its replicas."""
    return f"llmcore-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def start_extra_servers(
    argv: Sequence[str], count: int, base: str
) -> list[subprocess.Popen[bytes]]:
    """`count` more server processes with `argv`, attached to the replicas `base`."""
    import ray

    address = ray.get_runtime_context().gcs_address
    command = [
        sys.executable, "-m", "llmcore.http", *argv,
        "--api-server-count", "1", "--ray-address", address, "--ray-attach", base,
    ]  # fmt: skip
    return [subprocess.Popen(command) for _ in range(count)]
