"""The statistics of many engine replicas as one engine's (`RayEngine.statistics`).

Invariant: counts add up; KV usage is the blocks used over the blocks of every
replica; per-group figures add up group by group where the replicas' groups agree
(they serve one model, so they do unless a replica is still starting).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmcore.engine.core import EngineStatistics
from llmcore.engine.kv_cache_manager import KVGroupStatistics


def sum_statistics(replicas: Sequence[EngineStatistics]) -> EngineStatistics:
    blocks = sum(s.num_kv_blocks for s in replicas)
    free = sum(s.num_kv_blocks_free for s in replicas)
    return EngineStatistics(
        num_running=sum(s.num_running for s in replicas),
        num_waiting=sum(s.num_waiting for s in replicas),
        num_kv_blocks=blocks,
        num_kv_blocks_free=free,
        kv_cache_usage=(blocks - free) / blocks if blocks else 0.0,
        prefix_cache_queries=sum(s.prefix_cache_queries for s in replicas),
        prefix_cache_hits=sum(s.prefix_cache_hits for s in replicas),
        num_prompt_tokens_computed=sum(s.num_prompt_tokens_computed for s in replicas),
        num_generated_tokens=sum(s.num_generated_tokens for s in replicas),
        num_preemptions=sum(s.num_preemptions for s in replicas),
        num_steps=sum(s.num_steps for s in replicas),
        kv_groups=_sum_groups(replicas),
    )


def _sum_groups(replicas: Sequence[EngineStatistics]) -> tuple[KVGroupStatistics, ...]:
    if not replicas:
        return ()
    first = replicas[0].kv_groups
    shape = [g.window for g in first]
    if any([g.window for g in s.kv_groups] != shape for s in replicas):
        return ()
    return tuple(
        KVGroupStatistics(
            group.window,
            sum(s.kv_groups[i].num_blocks for s in replicas),
            sum(s.kv_groups[i].num_used_blocks for s in replicas),
        )
        for i, group in enumerate(first)
    )
