"""`RayEngine`: the `Engine` protocol over engine replicas on Ray.

The front end (this object, in the API process: transports, OpenAI service,
templates, tokenization) owns `EngineReplica` actor handles. Each request is
routed (llmcore/ray/routing.py) and streamed back from its replica through a Ray
streaming generator; leaving a stream early cancels it there, which aborts the
request. One watcher task per replica consumes the replica's pushed statistics:
they feed the router's load counts, `statistics()` (their sum) and the replica's
up/down state.

Faults: a Ray error on a request's stream means its replica (or Ray) is gone: the
request fails with `ReplicaLostError` (503, OpenAI's error shape), the replica is
marked down so new requests go to the survivors, and Ray restarts it (actors have
`max_restarts`); the watcher reconnects when the restarted replica answers and
marks it up again. `check_health` raises (503 on `/health`) when Ray is gone or
no replica answers.

Invariants: a request id is in flight at most once; every routed request is
`finished` in the router on every way out; an error on a replica's stream marks it
down only if it has not rejoined since the request was sent (its epoch); the
asyncio side binds to the event loop of its first use; `aclose` kills the
replicas this engine created and stops the Ray instance it started.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import ray
from ray.exceptions import RayError, RayTaskError

from llmcore.engine import ipc
from llmcore.engine.core import EngineStatistics
from llmcore.engine.protocol import EngineInfo
from llmcore.errors import EngineDeadError, InvalidRequestError
from llmcore.outputs import Logprob, RequestOutput
from llmcore.pooling import PoolingOutput, PoolingParams
from llmcore.ray.replica import ReplicaReady, replica_actor_class
from llmcore.ray.routing import Router, make_router
from llmcore.ray.statistics import sum_statistics
from llmcore.sampling_params import SamplingParams
from llmcore.tokenization.tokenizer import Tokenizer

log = logging.getLogger("llmcore.ray")

NAMESPACE = "llmcore"
WATCH_INTERVAL_S = 0.05  # how often a replica looks at its load (it pushes changes)
HEARTBEAT_S = 1.0  # a replica pushes at least this often
SILENCE_S = 30.0  # a replica silent this long is taken as down
RETRY_S = 0.5  # between a watcher's reconnection attempts
HEALTH_TIMEOUT_S = 10.0
GCS_RECONNECT_S = 86400  # how long a front end that lost Ray keeps waiting for it
MAX_CONCURRENCY = 4096  # calls in flight on one replica actor (streams included)

_FROM_STREAM = msgspec.msgpack.Decoder(ipc.WireOutput | ipc.Rejected)
_FROM_ENCODE = msgspec.msgpack.Decoder(ipc.WirePooling | ipc.Rejected)
_READY = msgspec.msgpack.Decoder(ReplicaReady | ipc.StartFailed)
_STATS = msgspec.msgpack.Decoder(EngineStatistics)


class ReplicaLostError(EngineDeadError):
    """The replica serving a request died (or Ray was lost) mid-request (HTTP 503);
    the service goes on with the other replicas."""


@dataclass(frozen=True, slots=True)
class RayOptions:
    """Where and how the replicas run (the `--ray-*` and `--replica-*` flags)."""

    replicas: int = 1
    address: str | None = None  # None: start a local Ray instance; "auto": join one
    routing: str = "prefix-affinity"
    spill_margin: int | None = None  # the router's default when None
    num_cpus: float | None = None  # per replica; None: 1 on the CPU, 0 with a GPU
    num_gpus: float = 0.0
    memory: int | None = None  # bytes reserved per replica
    max_restarts: int = -1  # Ray restarts a dead replica this often (-1: always)
    name: str | None = None  # named actors (f"{name}-{i}") that other front ends attach to
    attach: bool = False  # use the named replicas another front end started
    local_num_cpus: int | None = None  # logical CPUs of a local instance (None: the machine's)


@dataclass(slots=True, eq=False)
class _Replica:
    index: int
    handle: Any  # the actor handle
    ready: ReplicaReady
    statistics: EngineStatistics
    up: bool = True
    epoch: int = 0  # rejoins since start
    watcher: asyncio.Task[None] | None = None


@dataclass(slots=True, eq=False)
class _InFlight:
    replica: int
    engine_id: str
    logprobs: list[Logprob | None] | None = None
    done: bool = False


@dataclass(frozen=True, slots=True)
class _Ownership:
    replicas: bool  # created here: killed at aclose
    ray: bool  # ray.init called here: ray.shutdown at aclose


class RayEngine:
    def __init__(
        self,
        replicas: list[_Replica],
        router: Router,
        tokenizer: Tokenizer,
        owns: _Ownership,
    ) -> None:
        """Wrap started replicas (use `load` or `from_pretrained`)."""
        self.info: EngineInfo = replicas[0].ready.info
        self.tokenizer = tokenizer
        self.router = router
        self._replicas = replicas
        self._owns = owns
        self._requests: dict[str, _InFlight] = {}
        self._prefix = uuid.uuid4().hex[:8]  # engine ids unique across front ends
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ---- start-up (blocking) -------------------------------------------------------------

    @classmethod
    async def from_pretrained(
        cls, model: str | os.PathLike[str] | None = None, **options: Any
    ) -> RayEngine:
        """`load` on a thread (it waits for every replica to load its model)."""
        return await asyncio.to_thread(functools.partial(cls.load, model, **options))

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        ray_options: RayOptions | None = None,
        tokenizer: str | os.PathLike[str] | None = None,
        **load_options: Any,
    ) -> RayEngine:
        """Start (or join) Ray, start `ray_options.replicas` replicas of `model`
        (`load_options` are `AsyncEngine.load`'s: dtype, device, EngineConfig's
        fields), wait until each has loaded it (its load error is raised here), and
        load the same tokenizer here."""
        opts = ray_options or RayOptions()
        if opts.replicas < 1:
            raise ValueError("--replicas must be at least 1")
        started_ray = _ensure_ray(opts.address, opts.local_num_cpus)
        owns = _Ownership(replicas=not opts.attach, ray=started_ray)
        handles: list[Any] = []
        try:
            if opts.attach:
                handles = _attach_actors(opts)
            else:
                handles = _start_actors(opts, model, tokenizer, load_options)
            readies = _wait_ready(handles)
            from llmcore.tokenization.tokenizer import load_tokenizer

            tok = load_tokenizer(readies[0].info.tokenizer_path)
        except BaseException:
            _kill(handles if owns.replicas else [])
            if started_ray:
                ray.shutdown()
            raise
        replicas = [
            _Replica(r.index, h, r, r.statistics) for h, r in zip(handles, readies, strict=True)
        ]
        extra = {} if opts.spill_margin is None else {"spill_margin": opts.spill_margin}
        block_size = int(load_options.get("block_size", 16))
        router = make_router(opts.routing, opts.replicas, block_size=block_size, **extra)
        nodes = len({r.node_id for r in readies})
        log.info(
            "%d engine replica(s) of %s on %d Ray node(s), routed by %s",
            opts.replicas,
            readies[0].info.model_path,
            nodes,
            opts.routing,
        )
        return cls(replicas, router, tok, owns)

    # ---- the Engine protocol -------------------------------------------------------------

    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream output deltas of one request from the replica the router picks;
        leaving the iteration early cancels it there."""
        raw = ipc.encode_params(params)
        prompt = list(prompt_token_ids)
        replica, flight = self._open(request_id, prompt, cache_salt)
        stream = replica.handle.generate.remote(flight.engine_id, prompt, raw, priority, cache_salt)
        try:
            async for ref in stream:
                item = _FROM_STREAM.decode(await self._get(ref, replica))
                if isinstance(item, ipc.Rejected):
                    flight.done = True
                    raise ipc.rebuild_error(item.error)
                flight.done = item.finished
                yield self._output(request_id, prompt, flight, item)
        except RayError as exc:
            flight.done = True
            raise self._lost(replica, exc) from exc
        finally:
            self._close(request_id, replica, flight, stream)

    async def encode(
        self,
        prompt_token_ids: Sequence[int],
        params: PoolingParams,
        request_id: str,
        *,
        priority: int = 0,
    ) -> PoolingOutput:
        """Pool one input on the replica the router picks."""
        raw = ipc.encode_params(params)
        prompt = list(prompt_token_ids)
        replica, flight = self._open(request_id, prompt, None)
        ref = replica.handle.encode.remote(flight.engine_id, prompt, raw, priority)
        try:
            item = _FROM_ENCODE.decode(await self._get(ref, replica))
        except RayError as exc:
            raise self._lost(replica, exc) from exc
        except BaseException:
            replica.handle.abort.remote(flight.engine_id)
            raise
        finally:
            flight.done = True
            self._close(request_id, replica, flight, None)
        if isinstance(item, ipc.Rejected):
            raise ipc.rebuild_error(item.error)
        return ipc.pooling_of(item, prompt)

    def abort(self, request_id: str) -> None:
        """Abort a request on its replica; unknown ids are ignored."""
        flight = self._requests.get(request_id)
        if flight is not None and not flight.done:
            self._replicas[flight.replica].handle.abort.remote(flight.engine_id)

    async def check_health(self) -> None:
        """Raise EngineDeadError when Ray is gone or no replica answers."""
        self._check_alive()
        self._bind()
        if not ray.is_initialized():
            raise EngineDeadError("the front end is not connected to Ray")
        up = [r for r in self._replicas if r.up]
        if not up:
            raise EngineDeadError("no engine replica is up")
        calls = [self._get(r.handle.check_health.remote(), r) for r in up]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True), HEALTH_TIMEOUT_S
            )
        except TimeoutError:
            raise EngineDeadError(
                f"no engine replica answered within {HEALTH_TIMEOUT_S:.0f} s"
            ) from None
        if all(isinstance(result, BaseException) for result in results):
            raise EngineDeadError(f"no engine replica is healthy: {results[0]!r}")

    def statistics(self) -> EngineStatistics:
        """The sum of the replicas' statistics as they last pushed them."""
        return sum_statistics([r.statistics for r in self._replicas])

    def replica_statistics(self) -> list[tuple[int, bool, EngineStatistics]]:
        """(index, up, statistics) of each replica."""
        return [(r.index, r.up, r.statistics) for r in self._replicas]

    async def reset_prefix_cache(self) -> bool:
        """Forget every replica's prefix cache; False if one could not."""
        calls = [self._get(r.handle.reset_prefix_cache.remote(), r) for r in self._replicas]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return all(result is True for result in results)

    async def aclose(self) -> None:
        """Stop the watchers; kill the replicas (and stop Ray) if started here."""
        if self._closed:
            return
        self._closed = True
        for replica in self._replicas:
            if replica.watcher is not None:
                replica.watcher.cancel()
        watchers = [r.watcher for r in self._replicas if r.watcher is not None]
        await asyncio.gather(*watchers, return_exceptions=True)
        if self._owns.replicas:
            await asyncio.to_thread(_kill, [r.handle for r in self._replicas])
        if self._owns.ray:
            await asyncio.to_thread(ray.shutdown)

    # ---- requests ------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._closed:
            raise EngineDeadError("the engine is closed")

    def _open(
        self, request_id: str, prompt: list[int], cache_salt: str | None
    ) -> tuple[_Replica, _InFlight]:
        self._check_alive()
        self._bind()
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        decision = self.router.choose(prompt, cache_salt)
        replica = self._replicas[decision.replica]
        flight = _InFlight(replica.index, f"{request_id}#{self._prefix}.{next(self._seq)}")
        self._requests[request_id] = flight
        self.router.started(replica.index)
        return replica, flight

    def _close(
        self, request_id: str, replica: _Replica, flight: _InFlight, stream: Any | None
    ) -> None:
        self.router.finished(replica.index)
        if self._requests.get(request_id) is flight:
            del self._requests[request_id]
        if stream is not None and not flight.done:
            try:
                ray.cancel(stream)  # the replica's generator aborts the request
            except Exception as exc:  # Ray is gone: nothing to cancel
                log.debug("cancelling %s failed: %r", flight.engine_id, exc)

    async def _get(self, ref: Any, replica: _Replica) -> Any:
        """The value of a replica call; a task error there (a bug, not a death) is
        raised as a RuntimeError naming the replica."""
        try:
            return await ref
        except RayTaskError as exc:
            raise RuntimeError(f"engine replica {replica.index} failed: {exc.cause!r}") from exc

    def _output(
        self, request_id: str, prompt: list[int], flight: _InFlight, item: ipc.WireOutput
    ) -> RequestOutput:
        if item.prompt_logprobs is not None:
            flight.logprobs = item.prompt_logprobs
        return RequestOutput(
            request_id=request_id,
            prompt_token_ids=prompt,
            outputs=[ipc.completion_of(c) for c in item.outputs],
            finished=item.finished,
            prompt_logprobs=flight.logprobs,
            num_cached_tokens=item.num_cached_tokens,
        )

    def _lost(self, replica: _Replica, exc: BaseException) -> EngineDeadError:
        """A Ray error on a replica call: mark it down (unless it has rejoined since)
        and the error its request gets."""
        if self._closed:
            return EngineDeadError("the engine is closed")
        self._mark_down(replica, replica.epoch, exc)
        return ReplicaLostError(
            f"the engine replica serving this request was lost ({type(exc).__name__}); "
            "the service goes on with the others: retry the request"
        )

    def _mark_down(self, replica: _Replica, epoch: int, exc: BaseException) -> None:
        if replica.up and replica.epoch == epoch:
            replica.up = False
            self.router.mark_down(replica.index)
            log.error("engine replica %d is down: %s", replica.index, exc)

    # ---- the watchers --------------------------------------------------------------------

    def _bind(self) -> None:
        """Start the watchers on the first event loop that uses the engine."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None:
            raise RuntimeError("a RayEngine serves the event loop it was first used on")
        self._loop = loop
        for replica in self._replicas:
            replica.watcher = loop.create_task(
                self._watch(replica), name=f"llmcore-ray-watch-{replica.index}"
            )

    async def _watch(self, replica: _Replica) -> None:
        while not self._closed:
            epoch = replica.epoch
            stream = replica.handle.watch.remote(WATCH_INTERVAL_S, HEARTBEAT_S)
            try:
                while True:
                    ref = await asyncio.wait_for(stream.__anext__(), SILENCE_S)
                    self._pushed(replica, _STATS.decode(await ref))
            except asyncio.CancelledError:
                _cancel_quietly(stream)
                raise
            except StopAsyncIteration:
                pass
            except TimeoutError as exc:
                _cancel_quietly(stream)
                self._mark_down(replica, epoch, exc)
            except Exception as exc:  # RayError: the replica died (Ray restarts it)
                self._mark_down(replica, epoch, exc)
            await asyncio.sleep(RETRY_S)

    def _pushed(self, replica: _Replica, stats: EngineStatistics) -> None:
        if not replica.up:
            replica.up = True
            replica.epoch += 1
            self.router.mark_up(replica.index)
            log.info("engine replica %d is up again", replica.index)
        replica.statistics = stats
        self.router.report_load(replica.index, stats.num_running + stats.num_waiting)


# ---- Ray -----------------------------------------------------------------------------------


def _ensure_ray(address: str | None, local_num_cpus: int | None) -> bool:
    """Connect to Ray (`address`; None: a new local instance with `local_num_cpus`
    logical CPUs); True if started here."""
    if ray.is_initialized():
        return False
    # Ray ends a driver that cannot reach its cluster's GCS for this long (60 s by
    # default); a front end should stay up answering 503 until told to stop.
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(GCS_RECONNECT_S))
    ray.init(
        address=address,
        num_cpus=local_num_cpus if address is None else None,
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
    )
    return address is None


def _start_actors(
    opts: RayOptions,
    model: str | os.PathLike[str] | None,
    tokenizer: str | os.PathLike[str] | None,
    load_options: dict[str, Any],
) -> list[Any]:
    cls = replica_actor_class(opts.max_restarts)
    on_gpu = opts.num_gpus > 0
    num_cpus = opts.num_cpus if opts.num_cpus is not None else (0 if on_gpu else 1)
    options = {
        **load_options,
        "tokenizer": None if tokenizer is None else str(tokenizer),
        "num_threads": max(1, int(num_cpus)),
    }
    path = None if model is None else str(model)
    level = logging.getLogger("llmcore").getEffectiveLevel()
    handles = []
    for i in range(opts.replicas):
        actor_options: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": opts.num_gpus,
            "max_concurrency": MAX_CONCURRENCY,
            "scheduling_strategy": "SPREAD",
        }
        if opts.memory is not None:
            actor_options["memory"] = opts.memory
        if opts.name is not None:
            actor_options.update(name=f"{opts.name}-{i}", namespace=NAMESPACE)
        handles.append(cls.options(**actor_options).remote(i, path, dict(options), level))
    return handles


def _attach_actors(opts: RayOptions) -> list[Any]:
    """The named replicas another front end started."""
    if opts.name is None:
        raise ValueError("attaching to replicas needs their name")
    try:
        return [ray.get_actor(f"{opts.name}-{i}", NAMESPACE) for i in range(opts.replicas)]
    except ValueError as exc:
        raise EngineDeadError(f"the engine replicas to attach to are gone: {exc}") from exc


def _wait_ready(handles: list[Any]) -> list[ReplicaReady]:
    """Each replica's `ReplicaReady`; the first load error is raised as itself."""
    readies = []
    for handle in handles:
        try:
            answer = _READY.decode(ray.get(handle.ready.remote()))
        except RayError as exc:
            raise EngineDeadError(f"an engine replica failed to start: {exc}") from exc
        if isinstance(answer, ipc.StartFailed):
            raise ipc.rebuild_error(answer.error)
        readies.append(answer)
    return readies


def _kill(handles: list[Any]) -> None:
    for handle in handles:
        try:
            ray.kill(handle, no_restart=True)
        except Exception as exc:  # already gone, or Ray is
            log.debug("killing a replica failed: %r", exc)


def _cancel_quietly(stream: Any) -> None:
    try:
        ray.cancel(stream)
    except Exception as exc:
        log.debug("cancelling a watch failed: %r", exc)
