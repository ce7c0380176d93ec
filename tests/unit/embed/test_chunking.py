"""Chunks fit the model, overlap as configured, and keep their Markdown heading paths."""

from __future__ import annotations

import itertools
import random

import pytest
from phiops_embed.chunking import Chunker, split_sections
from phiops_embed.embedder import SentenceTransformerEmbedder
from phiops_workload.knowledge import ChunkingConfig

WORDS = [
    "refund",
    "warehouse",
    "delivery",
    "parcel",
    "carrier",
    "tent",
    "backpack",
    "zipper",
    "warranty",
    "account",
    "password",
    "security",
    "invoice",
    "customer",
    "exchange",
    "policy",
    "Rotterdam",
    "Amsterdam",
    "shipping",
    "extraordinarily",
    "incomprehensibilities",
    "electroencephalography",
]


def prose(seed: int, paragraphs: int = 12) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(1, 8)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 30))]
            sentences.append(" ".join(words).capitalize() + rng.choice(".!?;"))
        out.append(" ".join(sentences))
    return "\n\n".join(out)


HOSTILE = [
    "a" * 5000,  # one endless word
    "https://example.com/" + "/".join(f"seg{i}?q={i}&x=y" for i in range(400)),
    "数据库向量检索" * 300,  # CJK: one token per character, no spaces
    "café naïve résumé " * 300,
    "\n".join(f"- item {i}: {'x' * (i % 40)}" for i in range(300)),
]


@pytest.mark.parametrize("strategy", ["markdown", "recursive", "fixed"])
@pytest.mark.parametrize("size", [32, 200, 10_000])
def test_no_chunk_exceeds_what_the_model_reads(
    embedder: SentenceTransformerEmbedder, strategy: str, size: int
) -> None:
    chunker = Chunker(
        ChunkingConfig(strategy=strategy, size=size, overlap=16),
        embedder.tokenizer,
        embedder.max_tokens,
    )
    assert embedder.max_tokens == 254  # 256 word pieces incl. [CLS] and [SEP]
    limit = min(size, embedder.max_tokens)
    tokenizer = embedder.model.tokenizer
    for text in [prose(1), *HOSTILE, "# Title\n\n" + prose(2)]:
        chunks = chunker.chunk(text)
        assert chunks, text[:40]
        for chunk in chunks:
            # What the model really sees, special tokens included, is never truncated.
            ids = tokenizer(chunk.embed_text)["input_ids"]
            assert len(ids) <= embedder.max_tokens + 2
            assert chunk.tokens == len(ids) - 2
            # Packing aims at the configured size (the re-tokenization guard may shave it).
            assert chunk.tokens <= limit + 2 or size > embedder.max_tokens
            assert chunk.text in text  # a slice of the document, not detokenized text


@pytest.mark.parametrize("strategy", ["recursive", "fixed"])
def test_overlap_is_honoured(embedder: SentenceTransformerEmbedder, strategy: str) -> None:
    overlap = 24
    config = ChunkingConfig(strategy=strategy, size=64, overlap=overlap)
    chunker = Chunker(config, embedder.tokenizer, embedder.max_tokens)
    text = prose(3)
    chunks = chunker.chunk(text)
    assert len(chunks) > 5
    position = 0
    for previous, current in itertools.pairwise(chunks):
        start_prev = text.index(previous.text, position)
        start_cur = text.index(current.text, start_prev + 1)
        end_prev = start_prev + len(previous.text)
        assert start_cur < end_prev, "consecutive chunks share text"
        shared = embedder.tokenizer.count(text[start_cur:end_prev])
        assert 0 < shared <= overlap
        position = start_prev


def test_without_overlap_chunks_tile_the_text(embedder: SentenceTransformerEmbedder) -> None:
    config = ChunkingConfig(strategy="fixed", size=50, overlap=0)
    chunks = Chunker(config, embedder.tokenizer, embedder.max_tokens).chunk(prose(4))
    words = " ".join(c.text for c in chunks).split()
    assert words == prose(4).split()


def test_recursive_cuts_at_paragraphs_when_they_fit(embedder: SentenceTransformerEmbedder) -> None:
    paragraphs = [" ".join(["warranty claim photo"] * 12) + "." for _ in range(6)]
    config = ChunkingConfig(strategy="recursive", size=120, overlap=0)
    chunks = Chunker(config, embedder.tokenizer, embedder.max_tokens).chunk("\n\n".join(paragraphs))
    for chunk in chunks:
        assert chunk.text.endswith("."), "each chunk ends at a paragraph end"
    assert sum(c.text.count("\n\n") + 1 for c in chunks) == len(paragraphs)


MARKDOWN = """Intro before any heading.

# Returns

General words about returns.

## Refunds

Refunds take 14 days.

```python
# not a heading: a comment inside code
x = 1
```

### Card payments

Card refunds appear on the statement.

## Exchanges

Exchanges are free.

# Shipping

We ship with DHL.
"""


def test_markdown_sections_keep_their_heading_path() -> None:
    sections = split_sections(MARKDOWN)
    assert [s.heading for s in sections] == [
        "",
        "Returns",
        "Returns > Refunds",
        "Returns > Refunds > Card payments",
        "Returns > Exchanges",
        "Shipping",
    ]
    assert "# not a heading" in sections[2].text


def test_markdown_chunks_carry_heading_into_the_embedding(
    embedder: SentenceTransformerEmbedder,
) -> None:
    chunker = Chunker(ChunkingConfig(lead_tokens=0), embedder.tokenizer, embedder.max_tokens)
    chunks = chunker.chunk(MARKDOWN)
    refunds = next(c for c in chunks if "14 days" in c.text)
    assert refunds.heading == "Returns > Refunds"
    assert refunds.embed_text.startswith("Returns > Refunds\n")
    # With the document's lead (the default), the heading path still ends the context.
    led = Chunker(ChunkingConfig(), embedder.tokenizer, embedder.max_tokens).chunk(MARKDOWN)
    refunds = next(c for c in led if "14 days" in c.text)
    assert refunds.embed_text.split("\n")[0].endswith(" > Returns > Refunds")
    # A long section is split, and every piece keeps the path.
    long_doc = "# Policies\n\n## Warranty\n\n" + prose(5)
    pieces = chunker.chunk(long_doc)
    assert len(pieces) > 2
    assert {p.heading for p in pieces} == {"Policies > Warranty"}


def test_plain_text_and_other_strategies_ignore_hash_lines(
    embedder: SentenceTransformerEmbedder,
) -> None:
    chunker = Chunker(ChunkingConfig(), embedder.tokenizer, embedder.max_tokens)
    assert {c.heading for c in chunker.chunk(MARKDOWN, structured=False)} == {""}
    recursive = Chunker(
        ChunkingConfig(strategy="recursive"), embedder.tokenizer, embedder.max_tokens
    )
    assert {c.heading for c in recursive.chunk(MARKDOWN)} == {""}
