"""The multi-turn chat trace of the routing simulation (tests/bench/bench_routing.py).

It owns the conversations: each opens with the chat template's header and a system
prompt (one of a few shared prompts, Zipf-popular, or a private one), then holds
turns of a user message and the model's answer. Turn k's prompt is turn k-1's
prompt, its answer and the new message, wrapped as the Llama 3 chat template
wraps them, so a conversation's prompts extend one another.

Invariants: everything is drawn from the seed, so the trace is the same in every
run and for every router; a conversation's lengths are drawn when it is made, its
tokens only when its turns are asked for, from a generator of its own (memory
stays with the conversations that are live).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# Llama 3's chat template, as token counts and stand-in ids (content tokens are
# random bytes, 0..255, so these never collide with them).
BOS, START_HEADER, END_HEADER, EOT, NEWLINES = 128000, 128006, 128007, 128009, 271
SYSTEM, USER, ASSISTANT = 9125, 882, 78191
DATE_LINES = list(range(100000, 100018))  # "Cutting Knowledge Date: ...\nToday Date: ...\n\n"
HEADER = [BOS, START_HEADER, SYSTEM, END_HEADER, NEWLINES, *DATE_LINES]  # 23 tokens
USER_OPEN = [START_HEADER, USER, END_HEADER, NEWLINES]
ASSISTANT_OPEN = [EOT, START_HEADER, ASSISTANT, END_HEADER, NEWLINES]  # EOT ends the message


@dataclass(frozen=True, slots=True)
class TraceConfig:
    conversations_per_s: float  # Poisson arrivals of new conversations
    duration_s: float  # conversations start in [0, duration_s)
    seed: int = 0
    num_system_prompts: int = 10  # shared system prompts
    zipf_exponent: float = 1.0  # popularity of shared prompt i is 1 / (i + 1) ** exponent
    system_tokens: tuple[int, int] = (300, 1200)  # shared prompt lengths, uniform
    private_fraction: float = 0.2  # conversations with a system prompt of their own
    private_tokens: tuple[int, int] = (20, 400)
    mean_turns: float = 4.0  # turns: 1 + geometric, capped
    max_turns: int = 12
    user_median: int = 60  # user message tokens: lognormal, capped
    user_sigma: float = 1.0
    user_max: int = 2000
    answer_median: int = 200  # answer tokens (with the closing EOT): lognormal, capped
    answer_sigma: float = 0.6
    answer_max: int = 1024
    think_mean_s: float = 10.0  # exponential pause between an answer and the next turn


@dataclass(slots=True)
class Conversation:
    """One user's chat; `next_turn` gives its turns in order."""

    cid: int
    start_s: float
    system_id: int | None  # the shared prompt, None for a private one
    system_len: int
    user_lens: list[int]
    answer_lens: list[int]
    think_s: list[float]  # the pause after each answer (the last one unused)
    seed: int
    history: list[int] = field(default_factory=list)  # the last prompt and its answer
    turn: int = 0  # the turn `next_turn` returns next

    @property
    def num_turns(self) -> int:
        return len(self.user_lens)

    def next_turn(self, system_prompts: list[list[int]]) -> tuple[list[int], list[int]]:
        """The next turn's prompt (the history so far and a new message) and the
        answer the model will give (ending with EOT); the turn is then over."""
        rng = random.Random(self.seed * 1009 + self.turn)
        if self.turn == 0:
            if self.system_id is None:
                system = list(rng.randbytes(self.system_len))
            else:
                system = system_prompts[self.system_id]
            self.history = [*HEADER, *system, EOT]
        message = list(rng.randbytes(self.user_lens[self.turn]))
        prompt = [*self.history, *USER_OPEN, *message, *ASSISTANT_OPEN]
        answer = list(rng.randbytes(self.answer_lens[self.turn] - 1))
        answer.append(EOT)
        self.history = [*prompt, *answer]
        self.turn += 1
        return prompt, answer

    def shared_prefix_len(self) -> int:
        """The tokens its first prompt shares with other conversations: the header,
        and with a shared system prompt that prompt and the user header after it."""
        if self.system_id is None:
            return len(HEADER)
        return len(HEADER) + self.system_len + 1 + len(USER_OPEN)

    def prompt_lens(self) -> list[int]:
        """Each turn's prompt length, without drawing tokens."""
        lens, length = [], len(HEADER) + self.system_len + 1
        for user, answer in zip(self.user_lens, self.answer_lens, strict=True):
            length += len(USER_OPEN) + user + len(ASSISTANT_OPEN)
            lens.append(length)
            length += answer
        return lens


@dataclass(slots=True)
class Trace:
    config: TraceConfig
    system_prompts: list[list[int]]
    conversations: list[Conversation]

    @property
    def num_requests(self) -> int:
        return sum(c.num_turns for c in self.conversations)

    def mean_prompt_tokens(self) -> float:
        return _mean([n for c in self.conversations for n in c.prompt_lens()])

    def mean_answer_tokens(self) -> float:
        return _mean([n for c in self.conversations for n in c.answer_lens])

    def mean_turns(self) -> float:
        return _mean([c.num_turns for c in self.conversations])

    def mean_shared_tokens(self) -> float:
        """The mean prompt prefix a request shares with other conversations (the
        header and a shared system prompt), weighted by requests."""
        return _mean([c.shared_prefix_len() for c in self.conversations for _ in c.user_lens])


def _mean(values: list[int] | list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _lognormal(rng: random.Random, median: int, sigma: float, cap: int) -> int:
    return max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma))))


def make_trace(config: TraceConfig) -> Trace:
    rng = random.Random(config.seed)
    system_prompts = [
        list(rng.randbytes(rng.randint(*config.system_tokens)))
        for _ in range(config.num_system_prompts)
    ]
    weights = [1 / (i + 1) ** config.zipf_exponent for i in range(config.num_system_prompts)]
    conversations: list[Conversation] = []
    t = rng.expovariate(config.conversations_per_s)
    while t < config.duration_s:
        private = rng.random() < config.private_fraction or not system_prompts
        system_id = None if private else rng.choices(range(len(system_prompts)), weights)[0]
        turns = 1
        while turns < config.max_turns and rng.random() > 1 / config.mean_turns:
            turns += 1
        conversations.append(
            Conversation(
                cid=len(conversations),
                start_s=t,
                system_id=system_id,
                system_len=(
                    rng.randint(*config.private_tokens)
                    if system_id is None
                    else len(system_prompts[system_id])
                ),
                user_lens=[
                    _lognormal(rng, config.user_median, config.user_sigma, config.user_max)
                    for _ in range(turns)
                ],
                answer_lens=[
                    _lognormal(rng, config.answer_median, config.answer_sigma, config.answer_max)
                    for _ in range(turns)
                ],
                think_s=[rng.expovariate(1 / config.think_mean_s) for _ in range(turns)],
                seed=rng.getrandbits(32),
            )
        )
        t += rng.expovariate(config.conversations_per_s)
    return Trace(config, system_prompts, conversations)
