"""The nesting depth of a JSON text, measured without recursion.

msgspec and the standard library decode recursively, so JSON nested a thousand
levels deep raises `RecursionError`, and JSON a few hundred levels deep decodes
into values that later recursive code (templates, schema compilers) may trip on.
Invariant: `json_depth` never recurses and never loops over bytes in Python: a
text with at most `MAX_JSON_DEPTH` brackets cannot be deeper (one `bytes.count`
each); others are scanned with numpy in bounded chunks, where brackets inside
strings do not count and escaped quotes do not end a string.
"""

from __future__ import annotations

import numpy as np

MAX_JSON_DEPTH = 64  # OpenAI's strict schemas allow 10 levels of objects (~25 here)
_CHUNK = 1 << 20
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENERS, _CLOSERS = (ord("["), ord("{")), (ord("]"), ord("}"))


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in `body` (0 for a scalar), or, when
    the body cannot be deeper than `MAX_JSON_DEPTH`, its number of brackets (a bound
    on the depth). Bytes that are not JSON give some number; the decoder refuses
    them anyway."""
    openers = body.count(b"[") + body.count(b"{")
    if openers <= MAX_JSON_DEPTH:
        return openers
    data = np.frombuffer(body, dtype=np.uint8)
    scan = _DepthScan()
    for start in range(0, len(data), _CHUNK):
        scan.feed(data[start : start + _CHUNK])
    return scan.deepest


class _DepthScan:
    """The running state of a depth scan across chunks: the depth so far, whether
    the chunk boundary falls inside a string, and the run of backslashes before it.
    Work is dense only for finding quotes, backslashes and brackets; the rest runs
    on their positions."""

    __slots__ = ("deepest", "depth", "in_string", "trailing_backslashes")

    def __init__(self) -> None:
        self.deepest = 0
        self.depth = 0
        self.in_string = False
        self.trailing_backslashes = 0

    def feed(self, chunk: np.ndarray) -> None:
        quotes = np.flatnonzero(chunk == _QUOTE)
        backslashes = np.flatnonzero(chunk == _BACKSLASH)
        carried = self.trailing_backslashes
        runs = self._backslash_runs(backslashes, len(chunk))
        if len(quotes) and (len(backslashes) or carried):
            quotes = quotes[_unescaped(quotes, backslashes, runs, carried)]
        brackets = np.flatnonzero(
            (chunk == _OPENERS[0]) | (chunk == _OPENERS[1])
            | (chunk == _CLOSERS[0]) | (chunk == _CLOSERS[1])
        )  # fmt: skip
        quotes_before = np.searchsorted(quotes, brackets) + int(self.in_string)
        brackets = brackets[quotes_before % 2 == 0]  # outside strings
        # '[' and '{' have bit 1 set, ']' and '}' do not.
        steps = ((chunk[brackets] >> 1) & 1).astype(np.int64) * 2 - 1
        depths = np.cumsum(steps) + self.depth
        if len(depths):
            self.deepest = max(self.deepest, int(depths.max()))
            self.depth = int(depths[-1])
        self.in_string = bool((len(quotes) + int(self.in_string)) % 2)

    def _backslash_runs(self, backslashes: np.ndarray, n: int) -> np.ndarray:
        """For each backslash, the length of the run of backslashes ending at it
        (counting a run carried over from the previous chunk); updates the carry."""
        count = len(backslashes)
        index = np.arange(count)
        starts = np.ones(count, dtype=bool)
        starts[1:] = np.diff(backslashes) != 1
        run_start = np.maximum.accumulate(np.where(starts, index, 0))
        runs = index - run_start + 1
        if count and backslashes[0] == 0:  # the first run continues the previous chunk's
            runs[run_start == 0] += self.trailing_backslashes
        self.trailing_backslashes = int(runs[-1]) if count and backslashes[-1] == n - 1 else 0
        return runs


def _unescaped(
    quotes: np.ndarray, backslashes: np.ndarray, runs: np.ndarray, carried: int
) -> np.ndarray:
    """Which quotes end or start a string: those after an even run of backslashes
    (`carried`: the run that ended the previous chunk, before a quote at 0)."""
    run = np.zeros(len(quotes), dtype=np.int64)
    if len(backslashes):
        before = np.searchsorted(backslashes, quotes) - 1  # the last backslash before each
        safe = np.maximum(before, 0)
        adjacent = (before >= 0) & (backslashes[safe] == quotes - 1)
        run = np.where(adjacent, runs[safe], 0)
    run[quotes == 0] = carried
    return run % 2 == 0
