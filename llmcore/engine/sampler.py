"""`Sampler`: one step's logits `[B, V]` in, one token (and its logprobs) per row out.

It owns the order in which a request's sampling parameters act on its logits
(vLLM v1's order: the structured-output grammar's mask, allowed ids, bad words,
min_tokens, logit bias, penalties; then greedy argmax, or temperature, min_p,
top_k, top_p and a random draw) and the randomness of every row. Invariants: the
caller's logits are never modified; logprobs are of the raw model distribution;
a random row draws exactly `V` uniforms per step, from its own generator when it
has one (and nothing else draws from that), and every filter is decided by the
row's own values, so a seeded request samples the same tokens whatever shares its
batch. Stages no row needs cost nothing.

The edits before the greedy/random split live in `logits_processors`, logprobs in
`logprobs`; this module owns the split itself, the randomness and the random rows'
filters (temperature, min_p, top_k, top_p) with the exponential race.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from llmcore.engine.logits_processors import may_edit, processed_logits
from llmcore.engine.logits_rows import (
    device_tensor,
    index_tensor,
    on_rows,
    put_rows,
    take_rows,
    to_pinned,
)
from llmcore.engine.logprobs import PendingLogprobs, TokenLogprobs, sampled_logprobs
from llmcore.sampling_params import SamplingParams
from llmcore.structured_outputs.backend import apply_bitmask

_GREEDY_BELOW = 1e-5  # temperatures under this are greedy (as vLLM's _SAMPLING_EPS)
_FIRST_WINDOW = 256  # top_p candidates looked at first; the window grows x8 until enough
_NEG_INF = float("-inf")


@dataclass(slots=True)
class SamplingRow:
    """What the sampler needs of one sequence at one step."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]  # generated so far (before this step)
    generator: torch.Generator | None  # a seeded request's own; None = the shared one
    stop_token_ids: frozenset[int]  # EOS + params.stop_token_ids, banned under min_tokens
    bad_words_token_ids: list[list[int]]  # params.bad_words, tokenized by the engine
    # Whether a logits processor may edit this row (see `logits_processors`)
    edits: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.edits = may_edit(self.params, self.bad_words_token_ids)


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]  # per row; None unless params.logprobs is set


class PendingSample:
    """A step's sampled token ids (and logprobs, where rows ask) on their way to the
    host: on a GPU, copied into pinned memory behind the step's kernels, with an
    event to wait for. `token_ids` stays on the device, where the next step may
    read its inputs from it (async scheduling)."""

    __slots__ = ("_event", "_logprobs", "_tokens", "token_ids")

    def __init__(self, token_ids: torch.Tensor, logprobs: PendingLogprobs | None) -> None:
        self.token_ids = token_ids
        self._event: torch.cuda.Event | None = None
        self._tokens = token_ids
        self._logprobs = logprobs
        if token_ids.device.type == "cuda":
            self._tokens = to_pinned(token_ids)
            if logprobs is not None:
                logprobs.tensors = logprobs.tensors.to_host(to_pinned)
            self._event = torch.cuda.Event()
            self._event.record()

    def result(self) -> SamplerOutput:
        """The tokens and logprobs (waiting for the GPU, if they come from one)."""
        if self._event is not None:
            self._event.synchronize()
        tokens = self._tokens.tolist()
        if self._logprobs is None:
            return SamplerOutput(tokens, [None] * len(tokens))
        return SamplerOutput(tokens, self._logprobs.rows(len(tokens)))


class Sampler:
    def __init__(self, vocab_size: int, seed: int | None = None) -> None:
        self.vocab_size = vocab_size
        # top_k/top_p rows: race over a window of the best candidates first (True),
        # or over the whole vocabulary sorted (False: no host read, as a GPU's
        # launch wants); None: windows on the CPU only. The tokens are the same.
        self.narrow_windows: bool | None = None
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._shared_generator(torch.device("cpu"))

    def __call__(
        self,
        logits: torch.Tensor,
        rows: Sequence[SamplingRow],
        grammar_bitmask: torch.Tensor | None = None,
        grammar_rows: Sequence[int] = (),
    ) -> SamplerOutput:
        """`grammar_bitmask` row `j` holds the tokens allowed in row `grammar_rows[j]`."""
        return self.sample(logits, rows, grammar_bitmask, grammar_rows).result()

    def sample(
        self,
        logits: torch.Tensor,
        rows: Sequence[SamplingRow],
        grammar_bitmask: torch.Tensor | None = None,
        grammar_rows: Sequence[int] = (),
    ) -> PendingSample:
        """As calling the sampler, without waiting for a GPU's tokens or logprobs:
        `result()` waits."""
        assert logits.dim() == 2 and logits.shape[0] == len(rows), (logits.shape, len(rows))
        assert logits.shape[1] >= self.vocab_size, (logits.shape, self.vocab_size)
        raw = logits[:, : self.vocab_size].float()  # drop padded vocabulary columns, if any
        allowed = raw
        if grammar_bitmask is not None and grammar_rows:
            allowed = raw.clone(memory_format=torch.contiguous_format)
            apply_bitmask(allowed, grammar_bitmask, grammar_rows)
        token_ids = self._pick(processed_logits(allowed, rows), rows)
        return PendingSample(token_ids, sampled_logprobs(raw, token_ids, rows))

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            if self._seed is None:
                generator.seed()
            else:
                generator.manual_seed(self._seed)
            self._generators[device] = generator
        return generator

    def _pick(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """Greedy rows take the argmax (the first, on ties); the others are sampled."""
        random = [i for i, r in enumerate(rows) if r.params.temperature >= _GREEDY_BELOW]
        if not random:
            return logits.max(dim=-1).indices
        if len(random) == len(rows):
            return self._sample(logits, rows)
        greedy = [i for i, r in enumerate(rows) if r.params.temperature < _GREEDY_BELOW]
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        put_rows(tokens, greedy, take_rows(logits, greedy).max(dim=-1).indices)
        put_rows(tokens, random, self._sample(take_rows(logits, random), [rows[i] for i in random]))
        return tokens

    def _sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """Sample each row: wide rows race over the vocabulary, narrow rows (top_k or
        top_p) over their surviving candidates; both use the same per-token noise."""
        noise = self._uniforms(logits, rows)
        logits = _apply_min_p(logits, rows)
        vocab = logits.shape[1]
        narrow = [i for i, r in enumerate(rows) if _is_narrow(r.params, vocab)]
        if not narrow:
            return _race_wide(logits, noise, rows)
        if len(narrow) == len(rows):
            all_rows = torch.arange(len(rows), device=noise.device)
            return _race_narrow(
                _NarrowRows.of(logits, all_rows, rows), noise, self._windows(logits)
            )
        wide = [i for i, r in enumerate(rows) if not _is_narrow(r.params, vocab)]
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        wide_rows = [rows[i] for i in wide]
        put_rows(
            tokens, wide, _race_wide(take_rows(logits, wide), take_rows(noise, wide), wide_rows)
        )
        narrow_rows = [rows[i] for i in narrow]
        picked = _NarrowRows.of(
            take_rows(logits, narrow), index_tensor(narrow, noise.device), narrow_rows
        )
        put_rows(tokens, narrow, _race_narrow(picked, noise, self._windows(logits)))
        return tokens

    def _windows(self, logits: torch.Tensor) -> bool:
        """Whether top_k/top_p rows look at a window of candidates first (widened
        until it holds every survivor: deciding that reads the device), as
        `narrow_windows` says; by default on the CPU only."""
        if self.narrow_windows is None:
            return logits.device.type == "cpu"
        return self.narrow_windows

    def _uniforms(self, like: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """`V` uniforms in [0, 1) per row: from the row's own generator, or the shared one."""
        noise = torch.empty_like(like)
        shared = [i for i, r in enumerate(rows) if r.generator is None]
        if shared:
            generator = self._shared_generator(like.device)
            if len(shared) == len(rows):
                return noise.uniform_(generator=generator)
            draws = torch.empty(len(shared), like.shape[1], device=like.device)
            put_rows(noise, shared, draws.uniform_(generator=generator))
        for i, row in enumerate(rows):
            if row.generator is not None:
                noise[i].uniform_(generator=row.generator)
        return noise


# ---- random rows: temperature, min_p, top_k, top_p and the exponential race --------------------


def _apply_min_p(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Drop tokens with prob < min_p x the top prob at the row's temperature, i.e. with
    logit < max logit + temperature x log(min_p). Returns a copy when a row has min_p."""
    idx = [i for i, r in enumerate(rows) if r.params.min_p > 0.0]
    if not idx:
        return logits
    offset = [rows[i].params.temperature * math.log(rows[i].params.min_p) for i in idx]
    offset_t = device_tensor(offset, logits.device).unsqueeze(1)

    def drop(sub: torch.Tensor) -> None:
        sub.masked_fill_(sub < sub.amax(dim=-1, keepdim=True) + offset_t, _NEG_INF)

    logits = logits.clone()
    on_rows(logits, idx, drop)
    return logits


def _race_wide(
    logits: torch.Tensor, noise: torch.Tensor, rows: Sequence[SamplingRow]
) -> torch.Tensor:
    """The exponential race over the whole vocabulary: argmax(prob / Exp(1)), with
    Exp(1) = -log(U) (U < 1, so never 0; several times cheaper than exponential_)."""
    temperature = [r.params.temperature for r in rows]
    if any(t != 1.0 for t in temperature):
        logits = logits / device_tensor(temperature, logits.device).unsqueeze(1)
    probs = logits.softmax(dim=-1)
    return probs.div_(noise.log_().neg_()).max(dim=-1).indices


def _is_narrow(p: SamplingParams, vocab: int) -> bool:
    return 0 < p.top_k < vocab or p.top_p < 1.0


def _first_window(p: SamplingParams, vocab: int) -> int:
    """Candidates first looked at: one more than top_k (to see ties), else a guess."""
    return min(vocab, p.top_k + 1 if 0 < p.top_k < vocab else _FIRST_WINDOW)


@dataclass(slots=True)
class _NarrowRows:
    """Random rows with top_k and/or top_p, sampled among their survivors."""

    logits: torch.Tensor  # [n, V], min_p applied, temperature not
    noise_rows: torch.Tensor  # [n]: the row of each in the step's noise
    params: list[SamplingParams]
    whole_log_mass: torch.Tensor  # [n] log sum exp(logits / T), for top_p rows without top_k

    @classmethod
    def of(
        cls, logits: torch.Tensor, noise_rows: torch.Tensor, rows: Sequence[SamplingRow]
    ) -> _NarrowRows:
        params = [r.params for r in rows]
        vocab = logits.shape[1]
        mass = torch.full((len(params),), math.nan, device=logits.device)
        idx = [i for i, p in enumerate(params) if p.top_p < 1.0 and not 0 < p.top_k < vocab]
        if idx:
            temperature = device_tensor([params[i].temperature for i in idx], logits.device)
            put_rows(mass, idx, (take_rows(logits, idx) / temperature.unsqueeze(1)).logsumexp(-1))
        return cls(logits, noise_rows, params, mass)

    def take(self, idx: list[int]) -> _NarrowRows:
        params = [self.params[i] for i in idx]
        return _NarrowRows(
            take_rows(self.logits, idx),
            take_rows(self.noise_rows, idx),
            params,
            take_rows(self.whole_log_mass, idx),
        )


def _race_narrow(rows: _NarrowRows, noise: torch.Tensor, windows_on: bool = True) -> torch.Tensor:
    """Rows are raced in groups of equal window size, which depends on the row alone,
    so a row's floats never depend on its neighbours. Without windows (`windows_on`
    False) every row races over the whole vocabulary sorted: no row's survivors can
    lie beyond it, so nothing is read back to decide (a GPU's launch does not wait)."""
    vocab = rows.logits.shape[1]
    if not windows_on:
        return _race_whole_vocabulary(rows, noise)
    windows = [_first_window(p, vocab) for p in rows.params]
    if len(set(windows)) == 1:
        return _race_window(rows, noise, windows[0])
    tokens = torch.empty(len(windows), dtype=torch.long, device=rows.logits.device)
    for m in sorted(set(windows)):
        idx = [i for i, w in enumerate(windows) if w == m]
        put_rows(tokens, idx, _race_window(rows.take(idx), noise, m))
    return tokens


def _race_whole_vocabulary(rows: _NarrowRows, noise: torch.Tensor) -> torch.Tensor:
    """Without a window: top_k-only rows drop the logits below their k-th (ties kept)
    and race the whole vocabulary, no sort; rows with top_p race over it sorted."""
    k_only = [i for i, p in enumerate(rows.params) if p.top_p >= 1.0]
    with_p = [i for i, p in enumerate(rows.params) if p.top_p < 1.0]
    if not with_p:
        return _race_below_kth(rows, noise)
    if not k_only:
        return _race_sorted(rows, noise)
    tokens = torch.empty(len(rows.params), dtype=torch.long, device=rows.logits.device)
    put_rows(tokens, k_only, _race_below_kth(rows.take(k_only), noise))
    put_rows(tokens, with_p, _race_sorted(rows.take(with_p), noise))
    return tokens


def _race_sorted(rows: _NarrowRows, noise: torch.Tensor) -> torch.Tensor:
    """The race over every row's survivors among the whole vocabulary, sorted."""
    scaled, ids, _ = _survivors(rows, rows.logits.shape[1])
    return _race(scaled, ids, noise, rows.noise_rows)


def _race_below_kth(rows: _NarrowRows, noise: torch.Tensor) -> torch.Tensor:
    """top_k rows (no top_p): a value threshold at the k-th best logit, as
    `_survivors` sets it, then the race over the whole vocabulary."""
    device = rows.logits.device
    k = [p.top_k for p in rows.params]
    best = rows.logits.topk(max(k), dim=-1).values
    kth = best.gather(1, index_tensor([n - 1 for n in k], device).unsqueeze(1))
    temperature = device_tensor([p.temperature for p in rows.params], device).unsqueeze(1)
    scaled = (rows.logits / temperature).masked_fill_(rows.logits < kth, _NEG_INF)
    exponentials = noise.index_select(0, rows.noise_rows).log_().neg_()
    return scaled.softmax(dim=-1).div_(exponentials).argmax(dim=-1)


def _race_window(rows: _NarrowRows, noise: torch.Tensor, m: int) -> torch.Tensor:
    """Race over the best `m` tokens of rows whose survivors all lie among them; the
    other rows try again with an 8x wider window (the last one is the vocabulary)."""
    scaled, ids, settled = _survivors(rows, m)
    if bool(settled.all()):
        return _race(scaled, ids, noise, rows.noise_rows)
    tokens = torch.empty(len(rows.params), dtype=torch.long, device=scaled.device)
    done = settled.nonzero().view(-1).tolist()
    rest = (~settled).nonzero().view(-1).tolist()
    tokens[done] = _race(scaled[done], ids[done], noise, rows.noise_rows[done])
    vocab = rows.logits.shape[1]
    tokens[rest] = _race_window(rows.take(rest), noise, min(vocab, m * 8))
    return tokens


def _race(
    scaled: torch.Tensor, ids: torch.Tensor, noise: torch.Tensor, noise_rows: torch.Tensor
) -> torch.Tensor:
    exponentials = noise[noise_rows.unsqueeze(1), ids].log_().neg_()
    winner = scaled.softmax(dim=-1).div_(exponentials).argmax(dim=-1, keepdim=True)
    return ids.gather(1, winner).squeeze(1)


def _survivors(rows: _NarrowRows, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best `m` tokens of each row: their logits over temperature (-inf where top_k
    or top_p drops them), their ids, and whether every survivor of the row is among them.

    Both filters become a value threshold (top_k: the k-th logit; top_p: the logit of
    the last token whose preceding mass is < top_p), so ties are kept together."""
    logits, params = rows.logits, rows.params
    device, vocab = logits.device, logits.shape[1]
    values, ids = logits.topk(m, dim=-1)  # best first
    k = index_tensor([p.top_k if 0 < p.top_k < vocab else 0 for p in params], device)
    top_p = device_tensor([p.top_p if p.top_p < 1.0 else math.inf for p in params], device)
    temperature = device_tensor([p.temperature for p in params], device).unsqueeze(1)
    kth = values.gather(1, (k - 1).clamp(0, m - 1).unsqueeze(1)).squeeze(1)
    kth = torch.where(k > 0, kth, _NEG_INF)
    scaled = (values / temperature).masked_fill_(values < kth.unsqueeze(1), _NEG_INF)
    mass = rows.whole_log_mass  # with top_k, the survivors' mass: all in the window if settled
    log_mass = torch.where(mass.isnan(), scaled.logsumexp(dim=-1), mass)
    probs = (scaled - log_mass.unsqueeze(1)).exp()
    before = torch.cat([torch.zeros_like(probs[:, :1]), probs.cumsum(dim=-1)[:, :-1]], dim=1)
    in_nucleus = (before < top_p.unsqueeze(1)).sum(dim=-1)  # >= 1: the best is always kept
    nucleus_floor = values.gather(1, (in_nucleus - 1).unsqueeze(1)).squeeze(1)
    floor = torch.maximum(kth, torch.where(top_p < math.inf, nucleus_floor, _NEG_INF))
    last = values[:, -1]
    settled = ((last < kth) | (kth == _NEG_INF)) & ((last < floor) | (floor == _NEG_INF))
    if m == vocab:
        settled = torch.ones_like(settled)
    return scaled.masked_fill_(values < floor.unsqueeze(1), _NEG_INF), ids, settled
