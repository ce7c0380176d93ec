"""Embedding with the tokenizer ahead of the model (the GPU path), run here on the CPU: the
same vectors as sentence-transformers' own `encode`, in the caller's order."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from phiops_embed.embedder import SentenceTransformerEmbedder
from phiops_embed.pipeline import embed_ahead, length_sorted_batches

from .test_precision import real_passages


def test_batches_are_longest_first_and_cover_every_text_once() -> None:
    texts = ["aa", "a", "aaaa", "aaa", "", "aaaaa", "aa"]
    batches = length_sorted_batches(texts, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))
    lengths = [len(texts[i]) for b in batches for i in b]
    assert lengths == sorted(lengths, reverse=True)
    assert length_sorted_batches([], 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches(texts, 0)


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(precision="float32")


def test_the_vectors_match_encode_in_the_callers_order(
    embedder: SentenceTransformerEmbedder,
) -> None:
    """Real chunks mixed with short texts, so that length order differs from input order;
    a batch size that leaves a partial last batch."""
    passages = real_passages(embedder, limit=24)
    shorts = [f"short {i}" for i in range(len(passages))]
    texts = [t for pair in zip(passages, shorts, strict=True) for t in pair]
    expected = embedder.embed(texts)  # sentence-transformers' encode on the CPU
    got = embed_ahead(embedder.model, texts, batch_size=5, device="cpu")
    assert got.shape == expected.shape and got.dtype == np.float32
    cosine = np.sum(got * expected, axis=1)
    assert float(cosine.min()) >= 0.99999, cosine.min()
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert embed_ahead(embedder.model, [], batch_size=5, device="cpu").shape == (0, 384)


def test_bf16_weights_keep_the_vectors_of_real_text(embedder: SentenceTransformerEmbedder) -> None:
    """What a GPU with bf16 computes in: the weights cast to bf16 (not autocast). Cosine >=
    0.999 to float32 for every one of 64 real chunks."""
    texts = real_passages(embedder)
    half = copy.deepcopy(embedder.model).to(torch.bfloat16)
    cosine = np.sum(
        embed_ahead(half, texts, batch_size=16, device="cpu") * embedder.embed(texts), axis=1
    )
    assert float(cosine.min()) >= 0.999, cosine.min()
