"""`llmcore.decode_graphs` on the CPU: the bookkeeping of decode graphs (buckets,
persistent buffers, padding rows in the scratch block, outputs sliced, the first
replay checked, the fall-back to eager) with a stand-in graph whose replay runs
the captured function again into the same output tensor. What CUDA's capture adds
(kernels recorded, not run) is checked on a GPU by tests/bench/ and the GPU tests.

The reference is the same model on a runner without graphs, step for step: the
logits of every decode step, and the KV cache blocks of every real sequence."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import llmcore
from llmcore.decode_graphs import GraphBackend, capture_sizes
from llmcore.model_runner import ModelRunner, SequenceChunk
from tests.plugins.models import tiny_models

pytestmark = pytest.mark.slow  # transformers builds the tiny models

BLOCK = 16
BLOCKS = 96
SEQ_BLOCKS = 8  # each sequence owns 8 blocks: up to 128 tokens
KINDS: dict[str, dict[str, Any]] = {
    "llama": tiny_models.KINDS["llama"],
    "mistral-window": {"cls": "Mistral", "config": {"sliding_window": 24}},
}


class StandInGraph:
    """Replays by calling the captured function again into its output tensor."""

    def __init__(self) -> None:
        self.fn: Callable[[], torch.Tensor] | None = None
        self.out: torch.Tensor | None = None
        self.replays = 0

    def replay(self) -> None:
        assert self.fn is not None and self.out is not None
        self.out.copy_(self.fn())
        self.replays += 1


def stand_in_backend(corrupt: bool = False, fail: bool = False) -> GraphBackend:
    def capture(graph: Any, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        out = fn()
        graph.fn = (lambda: fn() + 1.0) if corrupt else fn
        graph.out = out
        return out

    return GraphBackend(new=StandInGraph, capture=capture)


@pytest.fixture(scope="module", params=sorted(KINDS))
def tiny(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp(request.param)
    tiny_models.build_spec(request.param, KINDS[request.param], folder)
    return llmcore.load_model(folder, dtype="float32")


def _runner(loaded: Any, backend: GraphBackend | None) -> ModelRunner:
    runner = ModelRunner(loaded, BLOCKS, BLOCK, scratch_block=backend is not None)
    if backend is not None:
        runner.enable_decode_graphs(max_batch=12, max_model_len=256, backend=backend)
    return runner


class Sequences:
    """Sequences with fixed block tables, stepped on one runner."""

    def __init__(self, prompts: list[list[int]]) -> None:
        self.tokens = [list(p) for p in prompts]
        self.cached = [0] * len(prompts)
        self.tables = [
            list(range(i * SEQ_BLOCKS, (i + 1) * SEQ_BLOCKS)) for i in range(len(prompts))
        ]

    def prefill(self, runner: ModelRunner) -> None:
        chunks = [SequenceChunk(t, 0, self.tables[i]) for i, t in enumerate(self.tokens)]
        runner.execute(chunks)
        self.cached = [len(t) for t in self.tokens]

    def decode(self, runner: ModelRunner, which: list[int], next_ids: list[int]) -> torch.Tensor:
        """One all-decode step of the sequences `which`, feeding `next_ids`."""
        chunks = []
        for i, token in zip(which, next_ids, strict=True):
            self.tokens[i].append(token)
            chunks.append(SequenceChunk([token], self.cached[i], self.tables[i]))
            self.cached[i] += 1
        return runner.execute(chunks)


def _lockstep(loaded: Any, backend: GraphBackend) -> tuple[ModelRunner, ModelRunner, list[float]]:
    """The same steps on an eager runner and a graph runner; the largest logit
    difference of each decode step (greedy tokens from the eager runner)."""
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, tiny_models.VOCAB, (n,), generator=gen).tolist()
               for n in (5, 17, 30, 1, 44, 16, 23, 9, 60, 33, 2)]  # fmt: skip
    eager, graphs = _runner(loaded, None), _runner(loaded, backend)
    a, b = Sequences(prompts), Sequences(prompts)
    a.prefill(eager)
    b.prefill(graphs)
    diffs = []
    # batch sizes 1, 3, 5, 8, 11 and back: buckets 1, 4, 8, 8, 12, then replays
    for step, size in enumerate((1, 3, 5, 8, 11, 11, 3, 1, 11, 8)):
        which = [(step + k) % len(prompts) for k in range(size)]
        ids = [int(torch.randint(3, tiny_models.VOCAB, (1,), generator=gen)) for _ in which]
        want = a.decode(eager, which, ids)
        got = b.decode(graphs, which, ids)
        diffs.append(float((want - got).abs().max()))
    return eager, graphs, diffs


def test_capture_sizes() -> None:
    assert capture_sizes(1) == [1]
    assert capture_sizes(12) == [1, 2, 4, 8, 12]
    assert capture_sizes(256)[:5] == [1, 2, 4, 8, 16] and capture_sizes(256)[-1] == 256
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]


def test_replays_give_the_eager_logits_and_leave_real_blocks_alone(tiny: Any) -> None:
    eager, graphs, diffs = _lockstep(tiny, stand_in_backend())
    assert max(diffs) < 1e-4, diffs
    assert graphs.graphs is not None
    stats = graphs.graphs.stats
    assert stats.disabled is None
    assert sorted(stats.captured) == [1, 4, 8, 12]
    assert stats.replays == 10
    for (k1, v1), (k2, v2) in zip(eager.kv_caches, graphs.kv_caches, strict=True):
        # every real sequence's blocks hold the same K and V; padding went to the
        # scratch block (the last one), which only the graph runner has
        assert torch.allclose(k1, k2[:BLOCKS], atol=1e-5)
        assert torch.allclose(v1, v2[:BLOCKS], atol=1e-5)
        assert k2.shape[0] == BLOCKS + 1


def test_steps_that_are_not_all_decode_run_eagerly(tiny: Any) -> None:
    graphs = _runner(tiny, stand_in_backend())
    assert graphs.graphs is not None
    table = list(range(SEQ_BLOCKS))
    prefill = [SequenceChunk([5, 6, 7], 0, table)]
    mixed = [SequenceChunk([8], 3, table), SequenceChunk([5, 6], 0, list(range(8, 16)))]
    wide = [SequenceChunk([9], 4, list(range(20)))]  # wider than 256 tokens' tables
    logprobs = [SequenceChunk([9], 4, table, all_logits=True)]
    assert all(graphs.graphs.bucket(c) is None for c in (prefill, mixed, wide, logprobs))
    assert graphs.graphs.bucket([SequenceChunk([9], 4, table)] * 13) is None  # > 12
    assert graphs.graphs.bucket([SequenceChunk([9], 4, table)] * 5) == 8


@pytest.mark.parametrize(("corrupt", "fail"), [(True, False), (False, True)])
def test_a_bad_graph_switches_graphs_off_and_the_step_stays_right(
    tiny: Any, corrupt: bool, fail: bool
) -> None:
    _, graphs, diffs = _lockstep(tiny, stand_in_backend(corrupt=corrupt, fail=fail))
    assert max(diffs) < 1e-4, diffs  # the eager pass answered every step
    assert graphs.graphs is not None
    reason = graphs.graphs.stats.disabled
    assert reason is not None and ("differ" in reason if corrupt else "failed" in reason)
    assert graphs.graphs.stats.replays == 0


def test_graphs_need_the_scratch_block(tiny: Any) -> None:
    with pytest.raises(ValueError, match="scratch_block"):
        ModelRunner(tiny, BLOCKS, BLOCK).enable_decode_graphs(4, 64, stand_in_backend())


def test_the_engine_enables_graphs_on_cuda_only(tmp_path: Path, tiny: Any) -> None:
    from llmcore.engine.config import EngineConfig
    from llmcore.engine.core import EngineCore

    tok_folder = tmp_path / "tok"
    tok_folder.mkdir()
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({f"t{i}": i for i in range(tiny_models.VOCAB)}, "t0")).save(
        str(tok_folder / "tokenizer.json")
    )
    tokenizer = llmcore.load_tokenizer(tok_folder / "tokenizer.json")
    core = EngineCore(tiny, tokenizer, EngineConfig(kv_cache_memory=4 << 20))
    assert core.runner.graphs is None and core.runner.scratch_blocks is None


def _cuda_ready() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("cupy") is not None


@pytest.mark.skipif(not _cuda_ready(), reason="needs a CUDA device and CuPy")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graphs_replay_the_eager_steps(
    tmp_path: Path, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real CUDA graphs over the CUDA kernels (decode attention split over
    partitions included): every replayed step gives the eager runner's logits, no
    bucket is disabled, and real sequences' KV blocks are the eager runner's."""
    from llmcore.decode_graphs import cuda_backend
    from ops.cuda import attention as cuda_attention

    monkeypatch.setattr(cuda_attention, "MIN_PARTITION", 16)  # several partitions at 256
    # Head size 64, one the kernels take: the torch reference reads seq_lens.max() on
    # the host, which a capture refuses (graphs would switch themselves off).
    spec = {"cls": "Llama", "config": {"hidden_size": 256, "intermediate_size": 320}}
    tiny_models.build_spec("llama", spec, tmp_path)
    loaded = llmcore.load_model(tmp_path, dtype=dtype, device="cuda")
    eager, graphs, diffs = _lockstep(loaded, cuda_backend())
    assert graphs.graphs is not None and graphs.graphs.stats.disabled is None
    assert graphs.graphs.stats.replays == 10
    assert max(diffs) < (1e-4 if dtype == "float32" else 2e-2), diffs
    for (k1, v1), (k2, v2) in zip(eager.kv_caches, graphs.kv_caches, strict=True):
        assert torch.allclose(k1.float(), k2[:BLOCKS].float(), atol=1e-2)
        assert torch.allclose(v1.float(), v2[:BLOCKS].float(), atol=1e-2)
