"""Inter-token metrics of merged deltas: a k-token delta (a stream whose reader fell
behind) counts k inter-token times of gap / k, so counts and sums stay per token."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from llmcore.openai.generation import _observe_times, observe_per_token


def test_a_merged_delta_counts_one_inter_token_time_per_token() -> None:
    histogram = Histogram("itl_seconds", "test", registry=CollectorRegistry(), buckets=(0.09, 1))
    observe_per_token(histogram, 0.3, 3)  # three tokens merged: 0.1 s each
    observe_per_token(histogram, 0.05, 1)
    observe_per_token(histogram, 0.02, 0)  # a finish without a token: observed as is
    samples = {
        s.name + str(s.labels.get("le", "")): s.value for s in histogram.collect()[0].samples
    }
    assert samples["itl_seconds_count"] == 5
    assert samples["itl_seconds_sum"] == pytest.approx(0.37)
    assert samples["itl_seconds_bucket0.09"] == 2  # 0.05 and 0.02; the merged ones are 0.1


def test_k_observations_at_once_equal_k_observe_calls() -> None:
    """The one-update path gives exactly what k `observe` calls give (a layout
    change in prometheus_client fails here, not silently); the labelled children
    the service uses take it."""
    registry = CollectorRegistry()
    ours = Histogram("a_seconds", "t", ["m"], registry=registry, buckets=(0.01, 0.05, 0.2, 1))
    theirs = Histogram("b_seconds", "t", ["m"], registry=registry, buckets=(0.01, 0.05, 0.2, 1))
    for gap, k in [(0.3, 3), (0.03, 6), (2.0, 2), (0.0, 4), (0.5, 1)]:
        assert k == 1 or _observe_times(ours.labels("x"), gap / k, k)
        if k == 1:
            ours.labels("x").observe(gap)
        for _ in range(k):
            theirs.labels("x").observe(gap / k)

    def samples(h: Histogram) -> list[tuple[str, float]]:
        return [(s.name.split("_", 1)[1] + str(s.labels.get("le", "")), s.value)
                for s in h.collect()[0].samples if not s.name.endswith("_created")]  # fmt: skip

    got, want = samples(ours), samples(theirs)
    assert [n for n, _ in got] == [n for n, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want])
    assert not _observe_times(object(), 0.1, 3)
