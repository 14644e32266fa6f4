"""Routing across replicas (issue 22), simulated: prefix-cache hit rate and load
imbalance of `llmcore.ray.routing`'s policies, with no model.

A discrete-event simulation. Each replica is modelled (tests/bench/routing_replica.py):
the engine's own `KVCacheManager` with prefix caching, a scheduler that follows the
engine's (continuous batching, a token budget per step, chunked prefill, preemption)
and a step-time model (a + b x batched tokens + c x context tokens read, constants of a
named GPU profile). The trace (tests/bench/routing_trace.py) is multi-turn chat:
conversations arrive as a Poisson process, open with the chat template's header and a
system prompt (a few shared, Zipf-popular, or a private one), and each turn's prompt
extends the last prompt and its answer; the next turn comes a think time after the
answer. The rate is `--load` times an estimate of what the replicas sustain when only
the shared system prompts hit the cache (`capacity_per_replica`).

The router is driven as `RayEngine` drives it: `choose` on arrival, `started` and
`finished` at once, `report_load(running + waiting)` pushed by each replica every
50 ms (at phases of their own). Hit rates are what the managers find.

Measured over the requests that arrive in the window (the last two thirds of the
conversation start period; no new turns after it, in-flight ones run to the end):
- hit rate: prefix-cache tokens at admission / prompt tokens (token-weighted);
  "ideal" is the same for one cache that holds every token ever computed;
- imbalance: max / mean over replicas of the time-averaged running + waiting requests;
- TTFT (arrival to first token) mean and p99, request latency mean, and output
  tokens per second over the window.

    python tests/bench/bench_routing.py [--replicas 8,32,64,256] [--profile a10] [--load 0.7]
        [--duration 240] [--routers prefix-affinity,least-load,round-robin]
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from llmcore.ray.routing import ROUTERS, make_router
from tests.bench.routing_replica import PROFILES, Replica, ReplicaProfile, SimRequest
from tests.bench.routing_trace import HEADER, Conversation, Trace, TraceConfig, make_trace
from tests.bench.serving_client import percentile

REPORT_PERIOD_S = 0.050
ARRIVE, STEP_END, REPORT = 0, 1, 2  # event kinds; an event is (time, seq, kind, index)


@dataclass(slots=True)
class Account:
    """One replica's time-weighted load inside the window."""

    start_s: float
    end_s: float
    load_s: float = 0.0  # integral of running + waiting over time

    def add_step(self, start: float, end: float, load: int) -> None:
        overlap = min(end, self.end_s) - max(start, self.start_s)
        if overlap > 0:
            self.load_s += load * overlap


@dataclass(slots=True)
class RunResult:
    router: str
    num_replicas: int
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    ideal_tokens: int = 0
    output_tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    mean_loads: list[float] = field(default_factory=list)
    window_s: float = 0.0
    preemptions: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens

    @property
    def ideal_hit_rate(self) -> float:
        return self.ideal_tokens / self.prompt_tokens

    @property
    def imbalance(self) -> float:
        mean = sum(self.mean_loads) / len(self.mean_loads)
        return max(self.mean_loads) / mean if mean else float("nan")


class Simulation:
    """One router over `num_replicas` replicas and one trace, from start to drain."""

    def __init__(
        self,
        router_name: str,
        num_replicas: int,
        profile: ReplicaProfile,
        trace: Trace,
        router_options: dict[str, float],
    ) -> None:
        options = router_options if router_name == "prefix-affinity" else {}
        self.router = make_router(
            router_name, num_replicas, block_size=profile.block_size, seed=7, **options
        )
        self.replicas = [Replica(profile) for _ in range(num_replicas)]
        self.trace = trace
        self.block_size = profile.block_size
        duration = trace.config.duration_s
        self.window = (duration / 3, duration)
        self.accounts = [Account(*self.window) for _ in range(num_replicas)]
        self.result = RunResult(router_name, num_replicas, window_s=duration * 2 / 3)
        self.events: list[tuple[float, int, int, int]] = []
        self.seq = 0
        self.pending = 0  # turns scheduled or in flight
        self.previous: dict[int, SimRequest] = {}  # each conversation's last turn
        self.systems_seen: set[int | None] = set()

    def push(self, at: float, kind: int, index: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, index))

    def run(self) -> RunResult:
        started = time.perf_counter()
        for conversation in self.trace.conversations:
            self.push(conversation.start_s, ARRIVE, conversation.cid)
            self.pending += 1
        phases = random.Random(3)
        for r in range(len(self.replicas)):
            self.push(phases.uniform(0, REPORT_PERIOD_S), REPORT, r)
        while self.events:
            now, _, kind, index = heapq.heappop(self.events)
            if kind == ARRIVE:
                self.arrive(now, index)
            elif kind == STEP_END:
                self.end_step(now, index)
            elif self.pending:
                self.router.report_load(index, self.replicas[index].load)
                self.push(now + REPORT_PERIOD_S, REPORT, index)
        result = self.result
        window_s = self.window[1] - self.window[0]
        result.mean_loads = [a.load_s / window_s for a in self.accounts]
        result.preemptions = sum(r.num_preemptions for r in self.replicas)
        result.decisions = self.router.statistics().decisions
        result.wall_s = time.perf_counter() - started
        return result

    def arrive(self, now: float, cid: int) -> None:
        conversation = self.trace.conversations[cid]
        prompt, answer = conversation.next_turn(self.trace.system_prompts)
        request = SimRequest(f"{cid}-{conversation.turn}", prompt, answer, now)
        previous = self.previous.get(cid)
        if previous is not None:
            # The same tokens lead this prompt: their block hashes hold (a shortcut of
            # the simulation; an engine hashes every request's blocks itself).
            request.block_hashes = list(previous.block_hashes)
        self.previous[cid] = request
        self.count_ideal(now, request, conversation, previous)
        replica = self.router.choose(prompt).replica
        self.router.started(replica)
        self.replicas[replica].add(request)
        if not self.replicas[replica].stepping:
            self.start_step(now, replica)

    def count_ideal(
        self,
        now: float,
        request: SimRequest,
        conversation: Conversation,
        previous: SimRequest | None,
    ) -> None:
        """The hit of one cache that keeps every token any replica computed."""
        if previous is not None:
            shared = len(previous.all_token_ids) - 1  # the last token is never computed
        elif conversation.system_id in self.systems_seen:
            shared = conversation.shared_prefix_len()
        else:
            shared = len(HEADER) if self.systems_seen else 0
        self.systems_seen.add(conversation.system_id)
        if self.window[0] <= now < self.window[1]:
            bs = self.block_size
            blocks = min(shared // bs, (request.num_prompt_tokens - 1) // bs)
            self.result.ideal_tokens += blocks * bs

    def start_step(self, now: float, r: int) -> None:
        replica = self.replicas[r]
        duration = replica.start_step()
        if duration:
            self.accounts[r].add_step(now, now + duration, replica.load)
            self.push(now + duration, STEP_END, r)

    def end_step(self, now: float, r: int) -> None:
        step = self.replicas[r].end_step(now)
        in_window = self.window[0] <= now < self.window[1]
        if in_window:
            self.result.output_tokens += step.num_sampled
        for request in step.finished:
            self.router.finished(r)
            self.pending -= 1
            self.record(request, now)
            cid = int(request.request_id.split("-")[0])
            conversation = self.trace.conversations[cid]
            after = now + conversation.think_s[conversation.turn - 1]
            if conversation.turn < conversation.num_turns and after < self.window[1]:
                self.push(after, ARRIVE, cid)
                self.pending += 1
        self.start_step(now, r)

    def record(self, request: SimRequest, now: float) -> None:
        if not self.window[0] <= request.arrival_s < self.window[1]:
            return
        assert request.first_token_s is not None and request.num_cached_tokens is not None
        result = self.result
        result.requests += 1
        result.prompt_tokens += request.num_prompt_tokens
        result.cached_tokens += request.num_cached_tokens
        result.ttft_s.append(request.first_token_s - request.arrival_s)
        result.latency_s.append(now - request.arrival_s)


def capacity_per_replica(profile: ReplicaProfile, trace: Trace) -> float:
    """Requests per second one replica sustains at a full batch when only the shared
    prefixes (header, shared system prompts) hit the cache: the batch is what the
    KV cache holds at the mean final context, each request pays its decode steps'
    share of the batch and the prefill of its unshared prompt tokens."""
    prompt, answer = trace.mean_prompt_tokens(), trace.mean_answer_tokens()
    step = profile.step
    batch = min(profile.max_num_seqs, profile.num_blocks * profile.block_size / (prompt + answer))
    step_s = step.step_s(0, 0) + batch * (
        step.per_token_s + step.per_context_s * (prompt + answer / 2)
    )
    prefill_s = step.per_token_s * (prompt - trace.mean_shared_tokens())
    return 1 / (answer * step_s / batch + prefill_s)


def make_run_trace(
    base: TraceConfig, profile: ReplicaProfile, replicas: int, load: float
) -> tuple[Trace, float]:
    """The trace for `replicas` replicas at `load` of their capacity (estimated on a
    sample of the same distribution)."""
    sample = make_trace(
        dataclasses.replace(base, conversations_per_s=1.0, duration_s=4000.0, seed=base.seed + 1)
    )
    capacity = capacity_per_replica(profile, sample)
    rate = load * capacity * replicas / sample.mean_turns()
    return make_trace(dataclasses.replace(base, conversations_per_s=rate)), capacity


def row(result: RunResult) -> str:
    decisions = result.decisions
    spilled = decisions.get("spill", 0) / max(1, sum(decisions.values()))
    return (
        f"| {result.num_replicas} | {result.router} | **{result.hit_rate:.1%}** "
        f"| {result.ideal_hit_rate:.1%} | **{result.imbalance:.2f}** "
        f"| {sum(result.ttft_s) / len(result.ttft_s) * 1e3:.0f} "
        f"| {percentile(result.ttft_s, 99) * 1e3:.0f} "
        f"| {sum(result.latency_s) / len(result.latency_s):.2f} "
        f"| {result.output_tokens / result.window_s:.0f} "
        f"| {sum(result.mean_loads) / len(result.mean_loads):.1f} | {result.preemptions} "
        f"| {spilled:.1%} | {result.requests} | {result.wall_s:.0f} |"
    )


HEADER_ROWS = (
    "| replicas | router | hit rate | ideal | imbalance | TTFT mean (ms) | TTFT p99 (ms) "
    "| latency mean (s) | output tok/s | mean load | preemptions | spilled | requests "
    "| wall (s) |\n"
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="8,32,64,256")
    parser.add_argument("--routers", default=",".join(ROUTERS))
    parser.add_argument("--profile", choices=sorted(PROFILES), default="a10")
    parser.add_argument("--load", type=float, default=0.7, help="of the estimated capacity")
    parser.add_argument(
        "--duration", type=float, default=240.0, help="conversations start in [0, s)"
    )
    parser.add_argument("--think", type=float, default=10.0, help="mean think time (s)")
    parser.add_argument("--private-fraction", type=float, default=0.2)
    parser.add_argument("--mean-turns", type=float, default=4.0)
    parser.add_argument("--spill-margin", type=int, help="prefix-affinity's (its default)")
    parser.add_argument("--spill-ratio", type=float, help="prefix-affinity's (its default)")
    parser.add_argument("--min-match", type=float, help="prefix-affinity's (its default)")
    parser.add_argument("--max-holders", type=int, help="prefix-affinity's (its default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    base = TraceConfig(
        conversations_per_s=1.0,
        duration_s=args.duration,
        seed=args.seed,
        think_mean_s=args.think,
        private_fraction=args.private_fraction,
        mean_turns=args.mean_turns,
    )
    options = {
        name: value
        for name in ("spill_margin", "spill_ratio", "min_match", "max_holders")
        if (value := getattr(args, name)) is not None
    }
    print(f"profile {profile.name}: {profile.description}")
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(HEADER_ROWS)
    notes = []
    for replicas in [int(n) for n in args.replicas.split(",")]:
        trace, capacity = make_run_trace(base, profile, replicas, args.load)
        for name in args.routers.split(","):
            fresh = make_trace(trace.config)  # a trace's conversations advance as they run
            print(row(Simulation(name, replicas, profile, fresh, options).run()), flush=True)
        notes.append(
            f"{replicas} replicas: {len(trace.conversations)} conversations, "
            f"{trace.num_requests} turns ({trace.mean_turns():.2f} a conversation, "
            f"prompts {trace.mean_prompt_tokens():.0f} tokens and answers "
            f"{trace.mean_answer_tokens():.0f} on average); capacity estimate "
            f"{capacity:.2f} requests/s a replica"
        )
    print("\n".join(notes))


if __name__ == "__main__":
    main()
