"""The engine on tiny sliding-window models built by transformers: the KV blocks a
long request holds in a sliding group stay bounded by the window (read through
`statistics()`), freed blocks are never read (outputs equal a runner that keeps
every block), and prefix caching still hits and gives the same tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import llmcore
from llmcore.engine.config import EngineConfig
from llmcore.engine.core import EngineCore
from llmcore.sampling_params import SamplingParams
from tests.plugins.models import parity, tiny_models

BLOCK = 16
WINDOW = 24

KINDS: dict[str, dict[str, Any]] = {
    "mistral-window": {"cls": "Mistral", "config": {"sliding_window": WINDOW}},
}


def _write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over the tiny vocabulary (t0 .. t319)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(tiny_models.VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module", params=sorted(KINDS))
def tiny(request: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    kind = request.param
    folder = tmp_path_factory.mktemp(kind)
    tiny_models.build_spec(kind, KINDS[kind], folder)
    _write_tokenizer(folder)
    return kind, llmcore.load_model(folder, dtype="float32")


def _core(loaded: Any, **options: Any) -> EngineCore:
    tokenizer = llmcore.load_tokenizer(loaded.path)
    config = EngineConfig(block_size=BLOCK, kv_cache_memory=8 << 20, **options)
    return EngineCore(loaded, tokenizer, config)


def _generate(core: EngineCore, prompt: list[int], n: int, rid: str) -> tuple[list[int], list[Any]]:
    """Greedy tokens of one request, and the KV statistics after every step."""
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    core.add(core.make_requests(prompt, params, rid))
    tokens: list[int] = []
    stats = []
    while core.has_work():
        for out in core.step():
            tokens += out.outputs[0].token_ids
        stats.append(core.statistics())
    return tokens, stats


def test_long_request_holds_a_window_of_blocks(tiny: tuple[str, Any]) -> None:
    _, loaded = tiny
    core = _core(loaded)
    windows = [g.window for g in core.statistics().kv_groups]
    assert WINDOW in windows
    prompt = parity.tokens(40, seed=11)
    got, stats = _generate(core, prompt, 260, "long")
    # a decode step's token sees WINDOW tokens: at most ceil((WINDOW - 1 + 1) / BLOCK) + 1
    # blocks; the 40-token prefill step wrote 3 blocks
    bound = -(-WINDOW // BLOCK) + 1
    for step in stats[1:]:
        for group in step.kv_groups:
            if group.window == WINDOW:
                assert group.num_used_blocks <= bound, step
            elif step.num_running:
                assert group.num_used_blocks >= (40 + 1) // BLOCK
    assert max(s.num_kv_blocks - s.num_kv_blocks_free for s in stats) < 300 // BLOCK
    # the freed blocks were never read: a runner keeping every block agrees
    runner = llmcore.ModelRunner(loaded, num_blocks=-(-300 // BLOCK) + 1, block_size=BLOCK)
    assert got == llmcore.greedy_generate(runner, prompt, 260)


def test_prefix_cache_hits_past_the_window(tiny: tuple[str, Any]) -> None:
    _, loaded = tiny
    core = _core(loaded)
    shared = parity.tokens(90, seed=12)
    first, _ = _generate(core, [*shared, 5], 20, "a")
    before = core.statistics().prefix_cache_hits
    second, _ = _generate(core, [*shared, 5], 20, "b")
    assert core.statistics().prefix_cache_hits - before >= 80
    assert second == first
    cold = _core(loaded, enable_prefix_caching=False)
    assert _generate(cold, [*shared, 5], 20, "c")[0] == first
