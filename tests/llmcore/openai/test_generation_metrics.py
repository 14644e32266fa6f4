"""Inter-token metrics of merged deltas: a k-token delta (a stream whose reader fell
behind) counts k inter-token times of gap / k, so counts and sums stay per token."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from llmcore.openai.generation import observe_per_token


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
