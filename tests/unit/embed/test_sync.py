"""The embedding Job end to end on the real model and a real milvus-lite server."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from phiops_embed.embedder import SentenceTransformerEmbedder
from phiops_embed.retrieval import Retriever
from phiops_embed.sources import shard_of
from phiops_embed.store import alias_target, connect
from phiops_embed.sync import run_sync
from phiops_workload.knowledge import (
    FIELD_CHUNK_COUNT,
    FIELD_CHUNK_INDEX,
    FIELD_DOC_HASH,
    FIELD_DOC_ID,
    FIELD_HEADING,
    FIELD_ID,
    FIELD_SOURCE,
    FIELD_TEXT,
    FIELD_VECTOR,
    ChunkingConfig,
    EmbeddingConfig,
    chunk_id,
)

from tests.unit.embed.conftest import StoreServer, job_config, start_store
from tests.unit.embed.pdfgen import make_pdf

SNAPSHOT_FIELDS = [FIELD_ID, FIELD_DOC_ID, FIELD_DOC_HASH, FIELD_CHUNK_INDEX, FIELD_CHUNK_COUNT]


def snapshot(uri: str, collection: str) -> dict[str, tuple[Any, ...]]:
    """Every row of a collection: id -> (doc_id, hash, chunk index, chunk count, text)."""
    client = connect(uri)
    client.load_collection(collection)
    rows = client.query(collection, filter="", output_fields=[*SNAPSHOT_FIELDS, FIELD_TEXT])
    return {r[FIELD_ID]: tuple(r[f] for f in [*SNAPSHOT_FIELDS[1:], FIELD_TEXT]) for r in rows}


def top_doc(retriever: Retriever, question: str, hybrid: bool = False) -> str:
    hits = retriever.search(question, top_k=3, hybrid=hybrid)
    assert hits, question
    return hits[0].doc_id


def add_pdfs(docs: Path) -> None:
    (docs / "manuals").mkdir()
    (docs / "manuals" / "stove.pdf").write_bytes(
        make_pdf(
            [
                ["Titan camping stove manual.", "The titanium stove boils one litre of water"],
                ["in three and a half minutes on a full gas canister."],
            ]
        )
    )
    (docs / "manuals" / "broken.pdf").write_bytes(make_pdf([["cut off"]])[:150])
    (docs / "latin1.txt").write_bytes("Caf\xe9 opening times".encode("latin-1"))


def test_full_sync_counts_and_retrieval(
    store: StoreServer,
    embedder: SentenceTransformerEmbedder,
    docs: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add_pdfs(docs)
    config = job_config(store.uri, docs, hybrid=True)
    with caplog.at_level(logging.INFO, logger="phiops_embed"):
        report = run_sync(config, embedder, progress_interval=0.05)
    progress = [r.message for r in caplog.records if r.name == "phiops_embed.progress"]
    assert progress and "documents read" in progress[0] and "chunks/s" in progress[0]
    figures = report.figures
    assert figures.documents.total == 8
    assert figures.documents.added == 6
    assert figures.documents.failed == 2
    assert sorted(figures.documents.failed_names) == ["docs/latin1.txt", "docs/manuals/broken.pdf"]
    rows = snapshot(store.uri, config.store.collection)
    assert figures.chunks == figures.chunks_embedded == len(rows) > 6
    assert figures.dimension == 384 and figures.collection == config.store.collection
    assert report.promoted
    assert alias_target(connect(store.uri), config.store.alias) == config.store.collection

    retriever = Retriever(store.uri, config.store.alias, embedder=embedder)
    assert top_doc(retriever, "How long until I get my money back after returning an item?") == (
        "docs/policies/refunds.md"
    )
    assert top_doc(retriever, "Which carrier delivers heavy parcels?") == (
        "docs/policies/shipping.md"
    )
    assert top_doc(retriever, "How long is a password reset link valid?") == "docs/security.html"
    assert top_doc(retriever, "How fast does the titanium stove boil water?") == (
        "docs/manuals/stove.pdf"
    )
    assert top_doc(retriever, "hardware keys like YubiKey", hybrid=True) == "docs/security.html"
    hit = retriever.search("refund to the original payment method", top_k=1)[0]
    assert hit.heading == "Returns and Refunds > Refunds" and hit.source == "docs"
    assert "14 days" in hit.text and 0 < hit.score <= 1
    assert retriever.search("refund", top_k=5, score_threshold=0.99) == []


def test_incremental_sync_and_idempotent_rerun(
    store: StoreServer, embedder: SentenceTransformerEmbedder, docs: Path
) -> None:
    config = job_config(store.uri, docs)
    first = run_sync(config, embedder).figures
    assert first.documents.added == 5
    # Longer to shorter: the stale tail chunks of the old version must go too.
    (docs / "warranty.md").write_text("# Warranty\n\nTents carry a ten year warranty only.")
    (docs / "notes.txt").unlink()
    (docs / "faq.md").write_text("# FAQ\n\nGift cards never expire and work in every store.")
    second = run_sync(config, embedder).figures
    d = second.documents
    assert (d.total, d.added, d.updated, d.deleted, d.unchanged, d.failed) == (5, 1, 1, 1, 3, 0)
    rows = snapshot(store.uri, config.store.collection)
    assert second.chunks == len(rows)
    by_doc = {r[0] for r in rows.values()}
    assert "docs/notes.txt" not in by_doc and "docs/faq.md" in by_doc
    warranty = [r for r in rows.values() if r[0] == "docs/warranty.md"]
    assert len(warranty) == warranty[0][3] == 1 and "ten year" in warranty[0][4]
    retriever = Retriever(store.uri, config.store.alias, embedder=embedder)
    hits = retriever.search("When does the Amsterdam flagship store open on Sunday?", top_k=10)
    assert "docs/notes.txt" not in {h.doc_id for h in hits}
    assert top_doc(retriever, "Do gift cards expire?") == "docs/faq.md"

    third = run_sync(config, embedder).figures
    assert third.documents.unchanged == 5 and third.chunks_embedded == 0
    assert third.chunks == second.chunks
    assert snapshot(store.uri, config.store.collection) == rows


def test_a_killed_run_converges_to_the_same_rows(
    store: StoreServer, embedder: SentenceTransformerEmbedder, docs: Path
) -> None:
    """The states a kill can leave (chunk 0 is always written last) are repaired."""
    config = job_config(store.uri, docs)
    run_sync(config, embedder)
    collection = config.store.collection
    clean = snapshot(store.uri, collection)
    client = connect(store.uri)
    fields = [*SNAPSHOT_FIELDS, FIELD_SOURCE, FIELD_HEADING, FIELD_TEXT, FIELD_VECTOR]
    template = client.query(collection, filter="", output_fields=fields, limit=1)[0]
    vector = template[FIELD_VECTOR]

    def leftover(doc_id: str, index: int, doc_hash: str) -> dict[str, Any]:
        return {
            **template,
            FIELD_ID: chunk_id(doc_id, index),
            FIELD_DOC_ID: doc_id,
            FIELD_CHUNK_INDEX: index,
            FIELD_DOC_HASH: doc_hash,
            FIELD_TEXT: "half-written",
            FIELD_VECTOR: vector,
        }

    # A new document killed before its chunk 0; a changed one killed before its chunk 0
    # (old hash there, a new chunk and a tail of an older, longer version); a removed one.
    client.delete(collection, ids=[chunk_id("docs/policies/refunds.md", 0)])
    client.upsert(collection, [leftover("docs/policies/shipping.md", 1, "new")])
    client.insert(collection, [leftover("docs/policies/shipping.md", 30, "old")])
    client.upsert(
        collection,
        [{**leftover("docs/policies/shipping.md", 0, "0" * 64), FIELD_CHUNK_COUNT: 31}],
    )
    client.insert(collection, [leftover("docs/removed.md", 2, "x")])
    assert snapshot(store.uri, collection) != clean

    figures = run_sync(config, embedder).figures.documents
    assert (figures.added, figures.updated, figures.unchanged) == (1, 1, 3)
    assert snapshot(store.uri, collection) == clean


def test_settings_change_switches_the_alias_without_failed_queries(
    store: StoreServer, embedder: SentenceTransformerEmbedder, docs: Path
) -> None:
    old = job_config(store.uri, docs)
    alias = old.store.alias
    run_sync(old, embedder)
    client = connect(store.uri)
    neighbours = [f"{alias}x__0123456789ab", f"{alias}__not_a_fingerprint"]
    for name in neighbours:
        client.create_collection(name, dimension=4)

    new = job_config(store.uri, docs, alias, chunking=ChunkingConfig(size=64, overlap=8))
    assert new.store.collection != old.store.collection
    retriever = Retriever(store.uri, alias, embedder=embedder)
    problems: list[str] = []
    answered = 0
    done = threading.Event()

    def ask() -> None:
        nonlocal answered
        while not done.is_set():
            try:
                hits = retriever.search("Which carrier delivers heavy parcels?", top_k=3)
                if not hits or hits[0].doc_id != "docs/policies/shipping.md":
                    problems.append(f"bad answer {hits[:1]}")
                answered += 1
            except Exception as err:
                problems.append(repr(err))
            time.sleep(0.02)

    reader = threading.Thread(target=ask)
    reader.start()
    try:
        report = run_sync(new, embedder)
    finally:
        done.set()
        reader.join()
    assert problems == [] and answered > 3
    assert report.dropped == [old.store.collection]
    assert alias_target(client, alias) == new.store.collection
    names = set(client.list_collections())
    assert old.store.collection not in names and new.store.collection in names
    assert set(neighbours) <= names, "only <alias>__<fingerprint> collections are dropped"


def test_shards_split_the_work_and_promote_switches_once(
    store: StoreServer,
    embedder: SentenceTransformerEmbedder,
    docs: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from phiops_embed import cli

    shards = [job_config(store.uri, docs, "kb_sharded", shard=(i, 2)) for i in range(2)]
    reports = [run_sync(config, embedder) for config in shards]
    assert sum(r.figures.documents.total for r in reports) == 5
    assert all(r.figures.documents.total > 0 for r in reports), "both shards got work"
    assert not any(r.promoted for r in reports)
    client = connect(store.uri)
    assert alias_target(client, "kb_sharded") is None, "no alias before every shard is done"
    collection = shards[0].store.collection
    assert len(snapshot(store.uri, collection)) == sum(r.figures.chunks for r in reports)

    config_file = tmp_path / "config.json"
    config_file.write_text(shards[0].model_dump_json(by_alias=True))
    monkeypatch.setenv("PHIOPS_TERMINATION_LOG", str(tmp_path / "termination-log"))
    assert cli.main(["promote", "--config", str(config_file)]) == 0
    assert alias_target(client, "kb_sharded") == collection

    # A shard deletes only its own documents that disappeared.
    (docs / "notes.txt").unlink()
    owner = shard_of("docs/notes.txt", 2)
    other = run_sync(shards[1 - owner], embedder).figures.documents
    assert other.deleted == 0 and "docs/notes.txt" in stored_docs(store.uri, collection)
    mine = run_sync(shards[owner], embedder).figures.documents
    assert mine.deleted == 1 and "docs/notes.txt" not in stored_docs(store.uri, collection)


def stored_docs(uri: str, collection: str) -> set[str]:
    return {row[0] for row in snapshot(uri, collection).values()}


def test_restart_of_the_store_keeps_data_and_readers_recover(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, docs: Path
) -> None:
    server = start_store(tmp_path / "data")
    try:
        config = job_config(server.uri, docs)
        run_sync(config, embedder)
        assert server.stop() == 0, "SIGTERM shuts the store down cleanly"
        server = start_store(tmp_path / "data")
        # Collections come back released after a restart: readers and writers load them.
        retriever = Retriever(server.uri, config.store.alias, embedder=embedder)
        assert top_doc(retriever, "Which carrier delivers heavy parcels?") == (
            "docs/policies/shipping.md"
        )
        config = config.model_copy(
            update={"store": config.store.model_copy(update={"uri": server.uri})}
        )
        assert run_sync(config, embedder).figures.documents.unchanged == 5
    finally:
        if server.process.poll() is None:
            assert server.stop() == 0


def test_a_named_database_is_created_and_read(
    store: StoreServer, embedder: SentenceTransformerEmbedder, docs: Path
) -> None:
    config = job_config(store.uri, docs, database="team_a")
    assert run_sync(config, embedder).figures.documents.added == 5
    retriever = Retriever(store.uri, config.store.alias, embedder=embedder, database="team_a")
    assert top_doc(retriever, "Which carrier delivers heavy parcels?") == (
        "docs/policies/shipping.md"
    )
    assert config.store.alias not in str(connect(store.uri).list_aliases())


def counted(embed: Callable[[list[str]], Any], sizes: list[int]) -> Callable[[list[str]], Any]:
    """`embed`, noting the number of texts of each call in `sizes`."""

    def call(texts: list[str]) -> Any:
        sizes.append(len(texts))
        return embed(texts)

    return call


def test_a_gpu_embedder_takes_whole_groups_and_stores_the_same_vectors(
    store: StoreServer, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An `accelerated` embedder (a GPU one; here the same path on the CPU) gets each group of
    chunks in one call, to tokenise ahead of the model, instead of one call per batch; the
    rows written are the same."""
    embedding = EmbeddingConfig(batch_size=4, precision="float32")
    calls: dict[bool, list[int]] = {}
    vectors: dict[bool, dict[str, Any]] = {}
    for accelerated in (False, True):
        embedder = SentenceTransformerEmbedder(precision="float32", batch_size=4)
        embedder.accelerated = accelerated
        sizes = calls.setdefault(accelerated, [])
        monkeypatch.setattr(embedder, "embed", counted(embedder.embed, sizes))
        config = job_config(store.uri, docs, embedding=embedding)
        assert run_sync(config, embedder).figures.chunks_embedded > 8
        client = connect(store.uri)
        client.load_collection(config.store.collection)
        rows = client.query(
            config.store.collection, filter="", output_fields=[FIELD_ID, FIELD_VECTOR]
        )
        vectors[accelerated] = {r[FIELD_ID]: np.asarray(r[FIELD_VECTOR]) for r in rows}
    assert max(calls[False]) == 4 and max(calls[True]) > 4
    assert sum(calls[True]) == sum(calls[False])
    assert vectors[True].keys() == vectors[False].keys()
    cosine = [float(vectors[True][k] @ vectors[False][k]) for k in vectors[False]]
    assert min(cosine) >= 0.99999
