"""`PoolingRunner`: runs one step's encode requests as one forward pass and pools
each sequence into a vector.

Encoders (BERT) take the flat batch directly (`EncoderBatch`, padded only inside
attention). Decoders (`--task embed` on a llama-family model) run their usual
forward pass over the engine's KV cache tensors used as scratch space: an embed
engine never generates, so every block is free at every step and nothing is kept
after the pass. Invariant: the outputs are in the order of the requests given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch

from llmcore.engine.request import EncodeRequest
from llmcore.engine.task import is_encoder
from llmcore.model_api import EncoderBatch, EncoderModel
from llmcore.model_loader import LoadedModel
from llmcore.model_runner import ModelRunner, SequenceChunk
from llmcore.pooling import PoolingConfig, PoolingOutput, finish_vector, pool


class PoolingRunner:
    def __init__(self, loaded: LoadedModel, runner: ModelRunner, config: PoolingConfig) -> None:
        self.loaded = loaded
        self.runner = runner
        self.config = config
        self.encoder = is_encoder(loaded)

    @torch.inference_mode()
    def run(self, requests: Sequence[EncodeRequest]) -> list[PoolingOutput]:
        prompts = [r.prompt_token_ids for r in requests]
        if self.encoder:
            batch = encoder_batch(prompts, self.loaded.device)
            hidden = cast(EncoderModel, self.loaded.model).encode(batch)
            starts = batch.query_start_loc
        else:
            hidden, starts = self._decoder_hidden(prompts)
        vectors = pool(hidden, starts, self.config.method).cpu()
        return [
            PoolingOutput(r.request_id, r.prompt_token_ids, finish_vector(v, r.params, self.config))
            for r, v in zip(requests, vectors, strict=True)
        ]

    def _decoder_hidden(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.runner.block_size
        chunks: list[SequenceChunk] = []
        next_block = 0
        for ids in prompts:
            n = -(-len(ids) // bs)
            chunks.append(SequenceChunk(ids, 0, list(range(next_block, next_block + n))))
            next_block += n
        assert next_block <= self.runner.num_blocks, "pooling step exceeds the scratch blocks"
        batch = self.runner.build_batch(chunks)
        hidden = self.loaded.model.forward(batch, self.runner.kv_caches)
        return hidden, batch.query_start_loc.long()


def encoder_batch(prompts: Sequence[Sequence[int]], device: torch.device) -> EncoderBatch:
    lengths = [len(p) for p in prompts]
    max_len = max(lengths)
    ids: list[int] = []
    positions: list[int] = []
    pad_index: list[int] = []
    starts = [0]
    for i, prompt in enumerate(prompts):
        ids.extend(prompt)
        positions.extend(range(len(prompt)))
        pad_index.extend(range(i * max_len, i * max_len + len(prompt)))
        starts.append(len(ids))
    lens = torch.tensor(lengths, device=device)
    mask = torch.arange(max_len, device=device)[None, :] < lens[:, None]
    return EncoderBatch(
        input_ids=torch.tensor(ids, dtype=torch.int64, device=device),
        positions=torch.tensor(positions, dtype=torch.int64, device=device),
        token_type_ids=torch.zeros(len(ids), dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int64, device=device),
        pad_index=torch.tensor(pad_index, dtype=torch.int64, device=device),
        attention_mask=mask[:, None, None, :],
        max_len=max_len,
    )
