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
from llmcore.engine.config import EngineConfig
from llmcore.engine.core import EngineCore
from llmcore.model_runner import ModelRunner, PreviousTokens, SequenceChunk
from llmcore.outputs import RequestOutput
from llmcore.sampling_params import SamplingParams
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

    def decode(
        self, runner: ModelRunner, which: list[int], next_ids: list[int], previous: bool = False
    ) -> torch.Tensor:
        """One all-decode step of the sequences `which`, feeding `next_ids`; with
        `previous`, every other token comes from a "sampled" tensor on the runner's
        device (rows reversed), as async scheduling feeds them, the chunk holding 0."""
        chunks = []
        for i, token in zip(which, next_ids, strict=True):
            self.tokens[i].append(token)
            chunks.append(SequenceChunk([token], self.cached[i], self.tables[i]))
            self.cached[i] += 1
        if not previous:
            return runner.execute(chunks)
        return runner.execute_detailed(chunks, _from_previous(chunks, runner)).last


def _from_previous(chunks: list[SequenceChunk], runner: ModelRunner) -> PreviousTokens:
    """Move every other chunk's one token into a reversed "sampled" tensor."""
    moved = list(range(0, len(chunks), 2))
    sampled = [*[chunks[i].token_ids[0] for i in moved][::-1], 99]  # 99: a row no one reads
    for i in moved:
        chunks[i].token_ids = [0]
    rows = [len(moved) - 1 - k for k in range(len(moved))]
    device = runner.loaded.device
    return PreviousTokens(torch.tensor(sampled, device=device), moved, rows)


def _lockstep(
    loaded: Any, backend: GraphBackend, previous: bool = False
) -> tuple[ModelRunner, ModelRunner, list[float]]:
    """The same steps on an eager runner and a graph runner (`previous`: some of
    its tokens read from the device); the largest logit difference of each decode
    step (greedy tokens from the eager runner)."""
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
        got = b.decode(graphs, which, ids, previous)
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


def test_replays_read_tokens_of_the_previous_step_from_the_device(tiny: Any) -> None:
    """Async scheduling: rows whose token is still in the last step's sampled ids
    get it on the device, in graph replays as in the eager pass."""
    _, graphs, diffs = _lockstep(tiny, stand_in_backend(), previous=True)
    assert max(diffs) < 1e-4, diffs
    assert graphs.graphs is not None and graphs.graphs.stats.replays == 10


def test_an_eager_step_reads_tokens_of_the_previous_step_from_the_device(tiny: Any) -> None:
    """A mixed step (prefill chunks between decode rows) with the decode rows'
    tokens on the device gives the logits of the same step with the tokens given."""
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, tiny_models.VOCAB, (n,), generator=gen).tolist()
               for n in (7, 12, 3, 20)]  # fmt: skip
    logits = []
    for previous in (False, True):
        runner = _runner(tiny, None)
        seqs = Sequences(prompts)
        seqs.prefill(runner)
        tables = [list(range(k * SEQ_BLOCKS, (k + 1) * SEQ_BLOCKS)) for k in (4, 5)]
        chunks = [
            SequenceChunk([11], seqs.cached[0], seqs.tables[0]),
            SequenceChunk([5, 6, 7], 0, tables[0]),
            SequenceChunk([12], seqs.cached[1], seqs.tables[1]),
            SequenceChunk([8, 9], 0, tables[1]),
            SequenceChunk([13], seqs.cached[2], seqs.tables[2]),
        ]
        tokens = None
        if previous:  # chunks 0, 2, 4 (flat positions 0, 4, 7) from the device
            tokens = PreviousTokens(torch.tensor([13, 99, 12, 11]), [0, 2, 4], [3, 2, 0])
            for i in (0, 2, 4):
                chunks[i].token_ids = [0]
        logits.append(runner.execute_detailed(chunks, tokens).last)
    assert torch.allclose(logits[0], logits[1], atol=1e-5)
    assert logits[0].shape[0] == 5


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


def _one_at_a_time_and_ahead(loaded: Any, tokenizer: Any) -> list[EngineCore]:
    """Greedy requests of different lengths, joining a running batch, on an engine
    stepping one at a time and on one scheduling ahead; the same tokens from each."""
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, tiny_models.VOCAB, (n,), generator=gen).tolist()
               for n in (5, 17, 30, 1, 44, 16, 23, 9)]  # fmt: skip
    results, cores = [], []
    for ahead in (False, True):
        config = EngineConfig(kv_cache_memory=64 << 20, max_num_seqs=8,
                              async_scheduling=ahead, overlap_steps=ahead)  # fmt: skip
        core = EngineCore(loaded, tokenizer, config)
        tokens: dict[str, list[int]] = {}

        def step(core: EngineCore = core, tokens: dict[str, list[int]] = tokens) -> None:
            for out in core.step():
                assert isinstance(out, RequestOutput)
                tokens.setdefault(out.request_id, []).extend(out.outputs[0].token_ids)

        for i, prompt in enumerate(prompts):
            params = SamplingParams(temperature=0.0, max_tokens=8 + 5 * i, ignore_eos=True)
            core.add(core.make_requests(prompt, params, f"r{i}"))
            for _ in range(3):  # the next request joins a running batch
                step()
        while core.has_work():
            step()
        assert (core._num_scheduled_ahead > 20) == ahead
        assert core.kv_cache.num_free_blocks == core.kv_cache.statistics().num_blocks
        results.append(tokens)
        cores.append(core)
    assert results[0] == results[1]
    lengths = [len(results[1][f"r{i}"]) for i in range(len(prompts))]
    assert lengths == [8 + 5 * i for i in range(len(prompts))]
    return cores


def test_async_scheduling_gives_the_tokens_of_steps_one_at_a_time(tiny: Any) -> None:
    _one_at_a_time_and_ahead(tiny, _word_tokenizer(tiny.path))


@pytest.mark.skipif(not _cuda_ready(), reason="needs a CUDA device and CuPy")
def test_cuda_async_scheduling_gives_the_tokens_of_steps_one_at_a_time(
    tmp_path: Path,
) -> None:
    """On CUDA (graphs on), steps scheduled ahead with their tokens read on the
    device give the greedy tokens of steps run one at a time; decode steps are
    replayed from graphs either way."""
    spec = {"cls": "Llama", "config": {"hidden_size": 256, "intermediate_size": 320}}
    tiny_models.build_spec("llama", spec, tmp_path)
    loaded = llmcore.load_model(tmp_path, dtype="float32", device="cuda")
    for core in _one_at_a_time_and_ahead(loaded, _word_tokenizer(tmp_path)):
        assert core.runner.graphs is not None and core.runner.graphs.stats.disabled is None
        assert core.runner.graphs.stats.replays > 20


def _word_tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer, models

    path = Path(folder) / "word-tokenizer.json"
    Tokenizer(models.WordLevel({f"t{i}": i for i in range(tiny_models.VOCAB)}, "t0")).save(
        str(path)
    )
    return llmcore.load_tokenizer(path)


# Rows that may be scheduled ahead (none reads its own output on the host): greedy,
# and random rows of every kind the sampler races without a window on a GPU.
_AHEAD_PARAMS: dict[str, list[dict[str, Any]]] = {
    "greedy": [{"temperature": 0.0}] * 4,
    "sampled": [
        {"temperature": 0.8, "top_p": 0.9, "logprobs": 2},
        {"top_k": 20, "seed": 3},
        {"min_p": 0.05, "temperature": 1.2, "logit_bias": {7: 3.0}},
        {"top_k": 50, "top_p": 0.95, "temperature": 0.6},
    ],
}


@pytest.mark.skipif(not _cuda_ready(), reason="needs a CUDA device and CuPy")
@pytest.mark.parametrize("kind", sorted(_AHEAD_PARAMS))
def test_cuda_a_replayed_step_launches_without_waiting_for_the_gpu(
    tmp_path: Path, kind: str
) -> None:
    """Async scheduling only helps if a launch never waits for the GPU: with the
    bucket's graph captured, launching an all-decode step (its inputs read from the
    last step's ids on the device), greedy or sampled (temperature, top_p, top_k,
    min_p, a seed, logit bias, logprobs), makes no synchronizing CUDA call (torch's
    sync debug mode set to fail on one)."""
    spec = {"cls": "Llama", "config": {"hidden_size": 256, "intermediate_size": 320}}
    tiny_models.build_spec("llama", spec, tmp_path)
    loaded = llmcore.load_model(tmp_path, dtype="float32", device="cuda")
    config = EngineConfig(kv_cache_memory=64 << 20, max_num_seqs=8, async_scheduling=True)
    core = EngineCore(loaded, _word_tokenizer(tmp_path), config)
    for i, options in enumerate(_AHEAD_PARAMS[kind]):
        params = SamplingParams(max_tokens=40, ignore_eos=True, **options)
        core.add(core.make_requests([5 + i, 6, 7, 8, 9], params, f"r{i}"))
    for _ in range(6):  # prefill, then the bucket's capture and checked first replay
        core.step()
    launch = core._launch
    checked = 0

    def strict_launch(*args: Any) -> Any:
        nonlocal checked
        torch.cuda.set_sync_debug_mode("error")
        try:
            return launch(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            checked += 1

    core._launch = strict_launch  # type: ignore[method-assign,assignment]
    ahead = core._num_scheduled_ahead
    for _ in range(10):
        core.step()
    assert checked == 10 and core._num_scheduled_ahead - ahead == 10
    assert core.runner.graphs is not None and core.runner.graphs.stats.disabled is None
