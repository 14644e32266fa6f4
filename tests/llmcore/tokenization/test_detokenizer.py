"""Streaming detokenization, property-tested (hypothesis) on every tokenizer source:
joined deltas equal the full decode, and no delta splits a character."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcore.tokenization.detokenizer import REPLACEMENT, IncrementalDetokenizer
from llmcore.tokenization.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # SmolLM2's and all-MiniLM's tokenizers

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _stream(
    tok: Tokenizer, ids: list[int], steps: list[int], skip: bool, spaces: bool = False
) -> None:
    detok = IncrementalDetokenizer(
        tok, skip_special_tokens=skip, spaces_between_special_tokens=spaces
    )
    joined = ""
    pos = 0
    for size in [*steps, len(ids)]:
        chunk = ids[pos : pos + max(size, 1)]
        pos += len(chunk)
        delta = detok.step(chunk)
        delta.encode("utf-8")  # a str that encodes is whole characters
        joined += delta
        full = tok.decode(ids[:pos], skip_special_tokens=skip, spaces_between_special_tokens=spaces)
        if detok.pending:
            assert full.startswith(joined)
        else:
            assert joined == full
            assert not full.endswith(REPLACEMENT) or not delta
        assert detok.window <= 64 or not delta  # the window stays bounded once text flows
        if pos >= len(ids):
            break
    joined += detok.finish()
    assert joined == tok.decode(ids, skip_special_tokens=skip, spaces_between_special_tokens=spaces)


def _ids(tok: Tokenizer) -> st.SearchStrategy[list[int]]:
    special = sorted(tok.special_ids)[:8]
    any_id = st.integers(0, tok.vocab_size - 1)
    return st.lists(st.one_of(any_id, st.sampled_from(special)) if special else any_id, max_size=60)


def _text_ids(tok: Tokenizer) -> st.SearchStrategy[list[int]]:
    """Ids of real text (emoji, scripts, combining marks): the realistic stream."""
    alphabet = st.characters(codec="utf-8", exclude_categories=("Cs",))
    return st.text(alphabet, max_size=40).map(lambda s: tok.encode(s, add_special_tokens=False))


TOKENIZERS = ["minilm", "smollm2-gguf", "spm"]


@pytest.mark.parametrize("name", TOKENIZERS)
@SETTINGS
@given(data=st.data())
def test_random_ids_stream_equals_full_decode(
    name: str, data: st.DataObject, tokenizers_by_name: dict[str, Tokenizer]
) -> None:
    tok = tokenizers_by_name[name]
    ids = data.draw(_ids(tok))
    steps = data.draw(st.lists(st.integers(1, 4), max_size=60))
    _stream(tok, ids, steps, skip=data.draw(st.booleans()), spaces=data.draw(st.booleans()))


@pytest.mark.parametrize("name", TOKENIZERS)
@SETTINGS
@given(data=st.data())
def test_text_stream_equals_full_decode(
    name: str, data: st.DataObject, tokenizers_by_name: dict[str, Tokenizer]
) -> None:
    tok = tokenizers_by_name[name]
    ids = data.draw(_text_ids(tok))
    _stream(tok, ids, [1] * len(ids), skip=True)


def test_multi_token_emoji_waits_until_complete(tokenizers_by_name: dict[str, Tokenizer]) -> None:
    tok = tokenizers_by_name["smollm2-gguf"]
    ids = tok.encode("ok 🦙👩‍👩‍👧 done", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.step([i]) for i in ids] + [detok.finish()]
    assert "".join(deltas) == "ok 🦙👩‍👩‍👧 done"
    assert all(REPLACEMENT not in d for d in deltas)
    assert deltas.count("") > 0  # some steps held bytes back


def test_prompt_context_keeps_leading_space(tokenizers_by_name: dict[str, Tokenizer]) -> None:
    tok = tokenizers_by_name["spm"]
    prompt = tok.encode("Hello")
    gen = tok.encode("Hello world", add_special_tokens=False)[len(prompt) - 1 :]
    detok = IncrementalDetokenizer(tok, prompt)
    text = "".join(detok.step([i]) for i in gen) + detok.finish()
    assert text == " world"


class _LazyTokenizers(dict[str, Tokenizer]):
    def __init__(self, paths: dict[str, Path]) -> None:
        super().__init__()
        self.paths = paths

    def __missing__(self, name: str) -> Tokenizer:
        from llmcore.tokenization.tokenizer import load_tokenizer

        self[name] = load_tokenizer(self.paths[name])
        return self[name]


@pytest.fixture(scope="module")
def tokenizers_by_name(
    smollm2_path: Path, minilm_dir: Path, spm_model: Path
) -> dict[str, Tokenizer]:
    return _LazyTokenizers({"minilm": minilm_dir, "smollm2-gguf": smollm2_path, "spm": spm_model})
