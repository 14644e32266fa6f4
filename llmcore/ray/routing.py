"""Which replica serves a request: prefix-cache affinity bounded by load.

A prompt's leading full blocks (of the engines' block size) are hashed in a chain,
as the KV cache manager hashes them: block i's hash covers every token before its
end (and the request's cache salt). The router remembers, for each chained hash it
has seen, the last few replicas (`max_holders`) it sent that prefix to, in a bounded
LRU map. A new request goes to the least loaded of the replicas holding its longest
remembered prefix, so shared system prompts and the turns of one conversation find a
warm cache, unless that replica is busier than the mean by more than `spill_ratio`
of the mean plus `spill_margin` requests: then the request spills to the
least-loaded replica, which joins the prefix's holders (its cache warms in turn). A
request whose remembered prefix covers less than `min_match` of its full blocks, or
none, takes the less loaded of two replicas drawn at random (power of two choices).

Why these rules (tests/bench/bench_routing.py, docs/benchmarks.md "Routing across
replicas"): with one remembered replica per prefix, a prompt that matches only the
chat template's header (one block every request shares) followed whichever replica
took the last request, and the popular system prompts pulled their new conversations
to one replica each, so only spilling kept the load spread; and spilling against
the least-loaded replica, an extreme of many, moved 10-18% of requests off the
replica holding their conversation. Several holders spread a popular prefix over
the replicas that have it; the minimum match sends header-only matches to the power
of two choices; the mean is a reference that does not fall as replicas are added.

Load is what the router knows without asking: the replica's own count of running
and waiting requests as it last pushed it, or the requests this router has sent
it and not seen finish, whichever is larger (a burst sent between two pushes still
counts). Nothing here does I/O; `RayEngine` feeds it, and the routing simulation
drives it with modelled replicas.

Invariants: `choose` returns a replica that is up (RoutingError when none is);
`in_flight` counts `started` minus `finished` per replica and never goes below
zero; a replica marked down leaves every prefix's holders (its cache is gone when
Ray restarts it), and its in-flight count restarts at zero; a prefix's holders are
distinct, at most `max_holders`, the most recent last.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmcore.errors import EngineDeadError

DEFAULT_SPILL_MARGIN = 4  # requests beyond the mean load (and the ratio) before spilling
DEFAULT_SPILL_RATIO = 0.25  # of the mean load, beyond it before spilling
DEFAULT_MIN_MATCH = 0.25  # of the prompt's full blocks, remembered for affinity to count
DEFAULT_MAX_HOLDERS = 4  # replicas remembered for each prefix block
DEFAULT_MAX_PREFIXES = 1 << 20  # chained block hashes remembered (about 150 MB at most)
_SEED = 0x6C6C6D636F7265  # the chain's start without a cache salt


class RoutingError(EngineDeadError):
    """No replica is up to take the request."""


class Reason(enum.Enum):
    AFFINITY = "affinity"  # the replica that holds the longest remembered prefix
    SPILL = "spill"  # that replica was too busy: the least-loaded one instead
    LEAST_LOAD = "least_load"  # no remembered prefix: power of two choices
    ROUND_ROBIN = "round_robin"


@dataclass(frozen=True, slots=True)
class Decision:
    replica: int
    reason: Reason
    matched_blocks: int = 0  # leading blocks remembered on the chosen replica


@dataclass(slots=True)
class RouterStatistics:
    decisions: dict[str, int] = field(default_factory=dict)  # by Reason value
    matched_blocks: int = 0  # summed over decisions
    prompt_blocks: int = 0  # full prompt blocks seen, summed
    remembered_prefixes: int = 0


def prefix_hashes(
    prompt_token_ids: Sequence[int], block_size: int, cache_salt: str | None = None
) -> list[int]:
    """The chained hashes of the prompt's leading full blocks (none for a prompt
    shorter than one block). Built from ints and tuples of ints only, whose hash is
    the same in every process (a str's is not), so front ends agree; a collision
    only misroutes."""
    hashes: list[int] = []
    parent = _SEED if cache_salt is None else hash((_SEED, *cache_salt.encode()))
    for start in range(0, len(prompt_token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(prompt_token_ids[start : start + block_size])))
        hashes.append(parent)
    return hashes


class LoadBook:
    """Each replica's load as the router knows it, and which replicas are up."""

    def __init__(self, num_replicas: int) -> None:
        if num_replicas < 1:
            raise ValueError("at least one replica is needed")
        self.num_replicas = num_replicas
        self.reported = [0] * num_replicas  # running + waiting, as pushed
        self.in_flight = [0] * num_replicas  # sent by this router, not yet finished
        self.up = [True] * num_replicas

    def load(self, replica: int) -> int:
        return max(self.reported[replica], self.in_flight[replica])

    def up_replicas(self) -> list[int]:
        up = [r for r in range(self.num_replicas) if self.up[r]]
        if not up:
            raise RoutingError("no engine replica is up")
        return up

    def least_loaded(self) -> int:
        return min(self.up_replicas(), key=self.load)

    def mean_load(self) -> float:
        up = self.up_replicas()
        return sum(map(self.load, up)) / len(up)


class Router:
    """The interface `RayEngine` and the simulation drive; `choose` is the policy."""

    def __init__(self, num_replicas: int, *, block_size: int, seed: int | None = None) -> None:
        self.block_size = block_size
        self.book = LoadBook(num_replicas)
        self._rng = random.Random(seed)
        self._stats = RouterStatistics()

    @property
    def num_replicas(self) -> int:
        return self.book.num_replicas

    def choose(self, prompt_token_ids: Sequence[int], cache_salt: str | None = None) -> Decision:
        raise NotImplementedError

    def started(self, replica: int) -> None:
        self.book.in_flight[replica] += 1

    def finished(self, replica: int) -> None:
        self.book.in_flight[replica] = max(0, self.book.in_flight[replica] - 1)

    def report_load(self, replica: int, running_plus_waiting: int) -> None:
        self.book.reported[replica] = running_plus_waiting

    def mark_down(self, replica: int) -> None:
        self.book.up[replica] = False
        self.book.reported[replica] = self.book.in_flight[replica] = 0

    def mark_up(self, replica: int) -> None:
        self.book.up[replica] = True

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(
            dict(self._stats.decisions),
            self._stats.matched_blocks,
            self._stats.prompt_blocks,
            self._stats.remembered_prefixes,
        )

    def _two_choices(self) -> int:
        up = self.book.up_replicas()
        if len(up) == 1:
            return up[0]
        a, b = self._rng.sample(up, 2)
        return a if self.book.load(a) <= self.book.load(b) else b

    def _count(self, decision: Decision, prompt_blocks: int = 0) -> Decision:
        key = decision.reason.value
        self._stats.decisions[key] = self._stats.decisions.get(key, 0) + 1
        self._stats.matched_blocks += decision.matched_blocks
        self._stats.prompt_blocks += prompt_blocks
        return decision


class PrefixAffinityRouter(Router):
    def __init__(
        self,
        num_replicas: int,
        *,
        block_size: int,
        spill_margin: int = DEFAULT_SPILL_MARGIN,
        spill_ratio: float = DEFAULT_SPILL_RATIO,
        min_match: float = DEFAULT_MIN_MATCH,
        max_holders: int = DEFAULT_MAX_HOLDERS,
        max_prefixes: int = DEFAULT_MAX_PREFIXES,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_replicas, block_size=block_size, seed=seed)
        if max_holders < 1:
            raise ValueError("max_holders must be at least 1")
        self.spill_margin = spill_margin
        self.spill_ratio = spill_ratio
        self.min_match = min_match
        self.max_holders = max_holders
        self.max_prefixes = max_prefixes
        self._holders: OrderedDict[int, tuple[int, ...]] = OrderedDict()  # hash -> replicas

    def choose(self, prompt_token_ids: Sequence[int], cache_salt: str | None = None) -> Decision:
        hashes = prefix_hashes(prompt_token_ids, self.block_size, cache_salt)
        holders, matched = self._longest_match(hashes)
        if not holders or matched < self.min_match * len(hashes):
            decision = Decision(self._two_choices(), Reason.LEAST_LOAD)
        else:
            owner = min(holders, key=self.book.load)
            if self._overloaded(owner):
                decision = Decision(self.book.least_loaded(), Reason.SPILL)
            else:
                decision = Decision(owner, Reason.AFFINITY, matched)
        self._remember(hashes, decision.replica)
        return self._count(decision, len(hashes))

    def mark_down(self, replica: int) -> None:
        super().mark_down(replica)
        for h, holders in list(self._holders.items()):
            if replica in holders:
                rest = tuple(r for r in holders if r != replica)
                if rest:
                    self._holders[h] = rest
                else:
                    del self._holders[h]
        self._stats.remembered_prefixes = len(self._holders)

    def _overloaded(self, replica: int) -> bool:
        mean = self.book.mean_load()
        return self.book.load(replica) > mean * (1 + self.spill_ratio) + self.spill_margin

    def _longest_match(self, hashes: list[int]) -> tuple[tuple[int, ...], int]:
        """The up replicas holding the deepest remembered block of the chain, and
        its depth (a chain is remembered from its start, so the first miss ends
        the walk)."""
        holders: tuple[int, ...] = ()
        matched = 0
        for i, h in enumerate(hashes):
            found = self._holders.get(h)
            if found is None:
                break
            holders, matched = found, i + 1
        return tuple(r for r in holders if self.book.up[r]), matched

    def _remember(self, hashes: list[int], replica: int) -> None:
        table = self._holders
        keep = self.max_holders - 1  # earlier holders kept beside `replica`
        for h in hashes:
            holders = table.get(h)
            if holders is None:
                table[h] = (replica,)
            else:
                if holders[-1] != replica:
                    rest = [r for r in holders if r != replica]
                    table[h] = (*rest[max(0, len(rest) - keep) :], replica)
                table.move_to_end(h)
        while len(table) > self.max_prefixes:
            table.popitem(last=False)
        self._stats.remembered_prefixes = len(table)


class LeastLoadRouter(Router):
    """Power of two choices on load, blind to prefixes (a baseline)."""

    def choose(self, prompt_token_ids: Sequence[int], cache_salt: str | None = None) -> Decision:
        return self._count(Decision(self._two_choices(), Reason.LEAST_LOAD))


class RoundRobinRouter(Router):
    """Each up replica in turn (a baseline)."""

    def __init__(self, num_replicas: int, *, block_size: int, seed: int | None = None) -> None:
        super().__init__(num_replicas, block_size=block_size, seed=seed)
        self._next = 0

    def choose(self, prompt_token_ids: Sequence[int], cache_salt: str | None = None) -> Decision:
        self.book.up_replicas()  # RoutingError when none is up
        while True:
            replica = self._next % self.num_replicas
            self._next += 1
            if self.book.up[replica]:
                return self._count(Decision(replica, Reason.ROUND_ROBIN))


ROUTERS: dict[str, type[Router]] = {
    "prefix-affinity": PrefixAffinityRouter,
    "least-load": LeastLoadRouter,
    "round-robin": RoundRobinRouter,
}


def make_router(name: str, num_replicas: int, *, block_size: int, **options: Any) -> Router:
    """A router by its `--routing` name; `options` go to its constructor."""
    try:
        cls = ROUTERS[name]
    except KeyError:
        raise ValueError(f"unknown routing {name!r}: one of {', '.join(ROUTERS)}") from None
    return cls(num_replicas, block_size=block_size, **options)
