"""`precision: auto` and the bf16 fidelity guard, on the real MiniLM and real text."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from phiops_embed import precision
from phiops_embed.chunking import Chunker
from phiops_embed.embedder import SentenceTransformerEmbedder
from phiops_workload.knowledge import ChunkingConfig

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def test_auto_follows_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert precision.cpu_supports_bf16({"avx2", "amx_bf16"})
    assert precision.cpu_supports_bf16({"avx512f", "avx512_bf16"})
    assert precision.cpu_supports_bf16({"asimd", "bf16"})  # Arm
    assert not precision.cpu_supports_bf16({"avx2", "avx512f", "fma"})
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert precision.resolve_precision("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert precision.resolve_precision("auto", "cpu") == "float32"
    # A forced setting wins over the hardware either way.
    assert precision.resolve_precision("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    assert precision.resolve_precision("float32", "cpu") == "float32"
    with pytest.raises(ValueError, match="precision"):
        precision.resolve_precision("int8", "cpu")


def test_the_detected_flags_agree_with_the_kernel() -> None:
    """torch's report and /proc/cpuinfo name the same bf16 features on this machine."""
    try:
        text = precision.CPUINFO.read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    kernel = next(
        set(line.partition(":")[2].split())
        for line in text.splitlines()
        if line.partition(":")[0].strip() in ("flags", "Features")
    )
    assert (precision.BF16_CPU_FLAGS & precision.cpu_flags()) == (precision.BF16_CPU_FLAGS & kernel)


def real_passages(embedder: SentenceTransformerEmbedder, limit: int = 64) -> list[str]:
    """Chunk-sized passages of Debian's own documents (the retrieval evaluation's texts,
    written by others), cut by the product's chunker."""
    sys.path.insert(0, str(BENCHMARKS))
    from retrieval_eval.corpus import DOCUMENTS, CorpusMissing, extract

    chunker = Chunker(ChunkingConfig(), embedder.tokenizer, embedder.max_tokens)
    passages: list[str] = []
    for document in [d for d in DOCUMENTS if d.kind == "text"]:
        try:
            text = extract(document)
        except CorpusMissing:
            continue
        passages.extend(c.embed_text for c in chunker.chunk(text, structured=False))
    if len(passages) < limit:
        pytest.skip("Debian's documentation is not installed here")
    step = len(passages) // limit  # spread over every document
    return passages[::step][:limit]


def test_bf16_autocast_keeps_the_vectors_of_real_text() -> None:
    """Cosine >= 0.999 to float32 for every one of 64 real chunks."""
    full = SentenceTransformerEmbedder(precision="float32")
    half = SentenceTransformerEmbedder(precision="bfloat16")
    assert (full.precision, half.precision) == ("float32", "bfloat16")
    texts = real_passages(full)
    cosine = np.sum(full.embed(texts) * half.embed(texts), axis=1)
    assert float(cosine.min()) >= 0.999, cosine.min()
