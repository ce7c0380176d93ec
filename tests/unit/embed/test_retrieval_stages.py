"""The retrieval stages that lift grounded answers: the document's path and lead in the
embedded text, small-to-big neighbours and an optional cross-encoder re-ranker; on the real MiniLM
and a real milvus-lite server."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from phiops_embed.chunking import Chunker
from phiops_embed.embedder import SentenceTransformerEmbedder
from phiops_embed.rerank import Reranker
from phiops_embed.retrieval import (
    DEFAULT_EF,
    Hit,
    Retriever,
    distinct_passages,
    join_chunks,
    search_breadth,
)
from phiops_embed.store import connect
from phiops_embed.sync import run_sync
from phiops_workload.knowledge import (
    FIELD_CHUNK_INDEX,
    FIELD_DOC_ID,
    FIELD_HEADING,
    FIELD_TEXT,
    FIELD_VECTOR,
    ChunkingConfig,
)

from tests.unit.embed.conftest import StoreServer, job_config
from tests.unit.embed.crossencoder import make_cross_encoder, reference_scores

MANUAL = "\n\n".join(
    f"Step {n}. " + " ".join(f"The {word} valve number {n} turns {n} times." for word in words)
    for n, words in enumerate(
        [
            ["red", "blue"],
            ["green", "amber"],
            ["violet", "white"],
            ["black", "grey"],
            ["orange", "pink"],
            ["cyan", "teal"],
        ],
        start=1,
    )
)


def test_the_title_leads_the_embedded_text_but_not_the_stored_heading(
    embedder: SentenceTransformerEmbedder,
) -> None:
    chunker = Chunker(ChunkingConfig(lead_tokens=0), embedder.tokenizer, embedder.max_tokens)
    plain = chunker.chunk("# Refunds\n\nMoney back within 14 days.")
    titled = chunker.chunk("# Refunds\n\nMoney back within 14 days.", title="policies/shop.md")
    assert [c.heading for c in titled] == [c.heading for c in plain] == ["Refunds"]
    assert plain[0].embed_text == "Refunds\nMoney back within 14 days."
    assert titled[0].embed_text == "policies/shop.md > Refunds\nMoney back within 14 days."
    assert titled[0].tokens == embedder.tokenizer.count(titled[0].embed_text)
    # Outside any heading, the title alone leads.
    text = chunker.chunk("Plain words.", structured=False, title="notes.txt")[0]
    assert (text.heading, text.embed_text) == ("", "notes.txt\nPlain words.")


def test_the_lead_is_the_documents_opening_words_after_its_path(
    embedder: SentenceTransformerEmbedder,
) -> None:
    tokens = embedder.tokenizer.count
    chunker = Chunker(ChunkingConfig(lead_tokens=8), embedder.tokenizer, embedder.max_tokens)
    text = "# Refund policy\n\nCustomers get their money back within fourteen days.\n\n## Late"
    # Heading marks and line breaks go; it stops at 8 tokens, before a word cut in two.
    assert chunker.lead(text) == "Refund policy Customers get their money back"
    assert tokens(chunker.lead(text)) <= 8
    # "unbelievably" is 5 word pieces: a second one would be cut at 8, so it is left out.
    assert chunker.lead("unbelievably " * 9) == "unbelievably"
    assert chunker.lead("Short.") == "Short."
    chunks = chunker.chunk(text, title="policies/refunds.md")
    assert [c.heading for c in chunks] == ["Refund policy"]  # citations stay clean
    lead = "policies/refunds.md: Refund policy Customers get their money back"
    assert chunks[0].embed_text == f"{lead} > Refund policy\n{chunks[0].text}"
    # Outside any heading, without a path: the lead alone.
    (plain,) = chunker.chunk("Plain words here.", structured=False)
    assert plain.embed_text == "Plain words here.\nPlain words here."
    # 0 turns it off.
    off = Chunker(ChunkingConfig(lead_tokens=0), embedder.tokenizer, embedder.max_tokens)
    assert off.lead(text) == ""


def test_the_heading_path_keeps_its_room_and_the_title_is_cut_to_what_is_left(
    embedder: SentenceTransformerEmbedder,
) -> None:
    # A 64-token chunk leaves 16 tokens to title and heading path together.
    config = ChunkingConfig(size=64, overlap=0, lead_tokens=24)
    chunker = Chunker(config, embedder.tokenizer, embedder.max_tokens)
    text = "# Returns\n\n" + "Goods come back in their box, unused, with the receipt. " * 3
    (chunk,) = chunker.chunk(text, title="policies/returns.md")
    context, _, body = chunk.embed_text.partition("\n")
    title, _, heading = context.rpartition(" > ")
    assert heading == "Returns" and body == chunk.text
    assert title.startswith("policies/returns.md: Returns Goods")
    assert embedder.tokenizer.count(context) <= 16
    assert chunk.tokens <= 64


@pytest.mark.parametrize(("include_path", "lead_tokens"), [(True, 24), (False, 0), (True, 0)])
def test_the_sync_embeds_the_path_and_lead_when_asked(
    store: StoreServer,
    embedder: SentenceTransformerEmbedder,
    docs: Path,
    include_path: bool,
    lead_tokens: int,
) -> None:
    chunking = ChunkingConfig(include_path=include_path, lead_tokens=lead_tokens)
    chunker = Chunker(chunking, embedder.tokenizer, embedder.max_tokens)
    lead = chunker.lead((docs / "policies" / "refunds.md").read_text())
    assert bool(lead) == bool(lead_tokens)
    title = ": ".join(p for p in ("policies/refunds.md" if include_path else "", lead) if p)
    config = job_config(store.uri, docs, chunking=chunking)
    run_sync(config, embedder)
    client = connect(store.uri)
    rows = client.query(
        config.store.collection,
        filter=f'{FIELD_DOC_ID} == "docs/policies/refunds.md"',
        output_fields=[FIELD_HEADING, FIELD_TEXT, FIELD_VECTOR],
    )
    assert rows
    for row in rows:
        context = " > ".join(p for p in (title, row[FIELD_HEADING]) if p)
        expected = embedder.embed([f"{context}\n{row[FIELD_TEXT]}"])[0]
        assert float(np.dot(expected, np.asarray(row[FIELD_VECTOR]))) > 0.9999
        assert not row[FIELD_HEADING].startswith("policies")  # citations stay clean


def test_join_chunks_keeps_the_overlap_once() -> None:
    first = "alpha beta gamma delta epsilon zeta eta theta"
    second = "epsilon zeta eta theta iota kappa"
    joined = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    assert join_chunks([first, second]) == joined
    # No shared words (overlap 0): both kept whole, on their own lines.
    assert join_chunks(["ends with a", "a begins"]) == "ends with a\na begins"
    assert join_chunks(["only"]) == "only"


def _hit(doc_id: str, index: int) -> Hit:
    return Hit(doc_id=doc_id, source="s", heading="", chunk_index=index, text="t", score=0.0)


def test_distinct_passages_drop_hits_inside_a_better_hits_passage() -> None:
    ranked = [_hit("a", 5), _hit("a", 6), _hit("b", 5), _hit("a", 3), _hit("a", 7), _hit("c", 0)]
    kept = distinct_passages(ranked, 1, 3)
    assert [(h.doc_id, h.chunk_index) for h in kept] == [("a", 5), ("b", 5), ("a", 3)]
    assert [(h.doc_id, h.chunk_index) for h in distinct_passages(ranked, 2, 9)] == [
        ("a", 5),
        ("b", 5),
        ("c", 0),
    ]
    # Without neighbours nothing repeats: a plain cut.
    assert distinct_passages(ranked, 0, 4) == ranked[:4]


def _manual_kb(store: StoreServer, embedder: SentenceTransformerEmbedder, docs: Path) -> str:
    (docs / "valves.txt").write_text(MANUAL)
    chunking = ChunkingConfig(strategy="recursive", size=24, overlap=0, include_path=False)
    config = job_config(store.uri, docs, chunking=chunking, hybrid=True)
    run_sync(config, embedder)
    return config.store.alias


def test_neighbors_hand_over_the_chunks_either_side(
    store: StoreServer, embedder: SentenceTransformerEmbedder, docs: Path
) -> None:
    alias = _manual_kb(store, embedder, docs)
    retriever = Retriever(store.uri, alias, embedder=embedder)
    client = connect(store.uri)
    rows = client.query(
        alias,
        filter=f'{FIELD_DOC_ID} == "docs/valves.txt"',
        output_fields=[FIELD_CHUNK_INDEX, FIELD_TEXT],
    )
    chunks = {int(r[FIELD_CHUNK_INDEX]): r[FIELD_TEXT] for r in rows}
    assert len(chunks) >= 4
    question = "How many times does the violet valve turn?"
    # Dense: its ranking does not depend on how many candidates are asked for (RRF's does).
    ranked = retriever.search(question, top_k=len(chunks) + 2)
    wide = retriever.search(question, top_k=3, neighbors=1)
    # The best hit leads; each later one is the best-ranked hit outside the passages kept.
    assert (wide[0].doc_id, wide[0].chunk_index) == (ranked[0].doc_id, ranked[0].chunk_index)
    assert [(h.doc_id, h.chunk_index) for h in wide] == [
        (h.doc_id, h.chunk_index) for h in distinct_passages(ranked, 1, 3)
    ]
    for first, later in itertools.combinations(wide, 2):
        assert first.doc_id != later.doc_id or abs(first.chunk_index - later.chunk_index) > 1
    for hit in wide:
        if hit.doc_id != "docs/valves.txt":
            continue
        i = hit.chunk_index
        expected = [chunks[j] for j in (i - 1, i, i + 1) if j in chunks]
        assert hit.text == "\n".join(expected)
    assert any(h.doc_id == "docs/valves.txt" for h in wide)
    retriever.close()


@pytest.mark.parametrize("hybrid", [False, True])
def test_a_search_with_ef_is_accepted_and_finds_the_same_chunks(
    store: StoreServer, embedder: SentenceTransformerEmbedder, docs: Path, hybrid: bool
) -> None:
    alias = _manual_kb(store, embedder, docs)
    retriever = Retriever(store.uri, alias, embedder=embedder)
    question = "How many times does the violet valve turn?"
    plain = retriever.search(question, top_k=3, hybrid=hybrid)
    wide = retriever.search(question, top_k=3, hybrid=hybrid, ef=256)
    assert [(h.doc_id, h.chunk_index) for h in wide] == [(h.doc_id, h.chunk_index) for h in plain]
    retriever.close()


@pytest.mark.parametrize(
    ("ef", "limit", "index_type", "sent"),
    [
        (None, 4, "AUTOINDEX", DEFAULT_EF),  # a server's own index: the default breadth
        (None, 4, "hnsw", DEFAULT_EF),
        (256, 12, "HNSW", 256),  # the reader's choice
        (8, 40, "HNSW", 40),  # never below the results asked for: Milvus refuses that
        (None, 100, "HNSW_SQ", 100),
        (256, 12, "FLAT", None),  # an exact scan takes no breadth
        (None, 12, "IVF_FLAT", None),  # IVF's knob is nprobe, not ef
    ],
)
def test_the_search_breadth_sent_to_the_store(
    ef: int | None, limit: int, index_type: str, sent: int | None
) -> None:
    assert search_breadth(ef, limit, index_type) == sent


def test_the_reranker_orders_the_candidates_by_its_scores_before_the_cut(
    store: StoreServer,
    embedder: SentenceTransformerEmbedder,
    docs: Path,
    tmp_path: Path,
) -> None:
    alias = _manual_kb(store, embedder, docs)
    model = make_cross_encoder(tmp_path / "cross-encoder")
    reranker = Reranker(str(model))
    retriever = Retriever(store.uri, alias, embedder=embedder)
    question = "Which valve turns four times?"
    candidates = retriever.search(question, top_k=10)
    assert len(candidates) == 10
    logits = reference_scores(model, question, [h.text for h in candidates])
    by_model = sorted(range(10), key=lambda i: -logits[i])
    assert by_model[:3] != [0, 1, 2]  # the model disagrees with the dense order here
    hits = retriever.search(question, top_k=3, reranker=reranker, candidates=10)
    assert [(h.doc_id, h.chunk_index) for h in hits] == [
        (candidates[i].doc_id, candidates[i].chunk_index) for i in by_model[:3]
    ]
    # Each hit carries the model's score (its logit through the CrossEncoder's sigmoid).
    for hit, i in zip(hits, by_model, strict=False):
        assert hit.score == pytest.approx(1 / (1 + math.exp(-logits[i])), abs=1e-5)
    retriever.close()


def test_a_missing_reranker_model_fails_naming_it(tmp_path: Path) -> None:
    from phiops_embed.embedder import EmbeddingError

    with pytest.raises(EmbeddingError, match=r"re-ranking model .*nowhere"):
        Reranker(str(tmp_path / "nowhere"))
