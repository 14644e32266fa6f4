"""Scale-out on Ray (the optional extra `llmcore[ray]`): many engine replicas, on
one machine or many, behind one `Engine`.

- `llmcore.ray.routing`: which replica serves a request (prefix-cache affinity
  bounded by load, power of two choices otherwise); pure Python, no Ray.
- `llmcore.ray.replica`: the replica actor (an llmcore engine in its own Ray worker).
- `llmcore.ray.engine`: `RayEngine`, the `Engine` protocol over the replicas.
- `llmcore.ray.serve`: `build_app(config)`, a Ray Serve application whose ingress
  hands the request bytes to llmcore's OpenAI service.
- `llmcore.ray.asgi`: that ingress, a framework-free ASGI app over the OpenAI
  service; no Ray.

Invariant: importing this package (or `llmcore`) never imports Ray; the modules
that need it import it themselves, and `import llmcore` never imports them.
"""

from __future__ import annotations
