"""The embedding sync and the readers against a real Milvus standalone server (2.3.5, the
PyPI package `milvus`), not milvus-lite: incremental sync with deletions, the alias switch,
clean-up, a named database, consistency, and a hybrid request on a server without BM25."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from phiops_devcluster.milvus_server import MilvusServer, wait_indexed
from phiops_embed.embedder import SentenceTransformerEmbedder
from phiops_embed.retrieval import Retriever
from phiops_embed.store import alias_target, connect, drop_family
from phiops_embed.sync import run_sync
from phiops_workload.knowledge import FIELD_SPARSE, FIELD_VECTOR, ChunkingConfig
from phiops_workload.store_features import FULL_TEXT, HYBRID_SEARCH
from pymilvus import AnnSearchRequest, RRFRanker

from tests.unit.embed.conftest import FIXTURES, job_config


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    target = tmp_path / "docs"
    shutil.copytree(FIXTURES, target)
    return target


# Rows in one segment that Milvus indexes (it scans segments under 1,024 rows).
INDEXED_SEGMENT_ROWS = 1_200


def strong_count(client: Any, collection: str) -> int:
    """Rows as of now: Strong, since Milvus's default (Bounded) may miss a write just made."""
    (row,) = client.query(
        collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
    )
    return int(row["count(*)"])


def searched_by_index(client: Any, collection: str, rows: int) -> None:
    """Until the server searches `collection` through its vector index: it builds the index
    after the sync's flush, and a collection loaded before that is scanned without it."""
    wait_indexed(client, collection, rows, FIELD_VECTOR, timeout=120)
    client.release_collection(collection)
    client.load_collection(collection)


def top_doc(retriever: Retriever, question: str, hybrid: bool = False) -> str:
    hits = retriever.search(question, top_k=3, hybrid=hybrid)
    assert hits, question
    return hits[0].doc_id


def test_hybrid_on_a_server_without_bm25_is_dense_only_and_says_so(
    milvus_server: MilvusServer, embedder: SentenceTransformerEmbedder, docs: Path
) -> None:
    config = job_config(milvus_server.uri, docs, hybrid=True)
    figures = run_sync(config, embedder).figures
    assert figures.server_version.startswith("v2.3.")
    assert figures.missing_features == [FULL_TEXT, HYBRID_SEARCH]
    client = connect(milvus_server.uri)
    info = client.describe_collection(config.store.collection)
    assert FIELD_SPARSE not in [f["name"] for f in info["fields"]]  # no half-made layout
    assert strong_count(client, config.store.collection) == figures.chunks > 5
    # A hybrid request from a reader (as the inference server makes it) is served dense.
    retriever = Retriever(milvus_server.uri, config.store.alias, embedder=embedder)
    question = "How long until I get my money back after returning an item?"
    assert top_doc(retriever, question, hybrid=True) == "docs/policies/refunds.md"
    # And the feature is truly absent: the decision is not a guess about this server.
    dense = AnnSearchRequest(data=[[0.1] * 384], anns_field=FIELD_VECTOR, param={}, limit=1)
    with pytest.raises(Exception, match=r"(?i)unimplemented"):
        client.hybrid_search(config.store.alias, [dense], RRFRanker(60), limit=1)
    drop_family(client, config.store.alias)


def test_resync_deletes_switches_the_alias_and_cleans_up(
    milvus_server: MilvusServer, embedder: SentenceTransformerEmbedder, docs: Path
) -> None:
    config = job_config(milvus_server.uri, docs)
    first = run_sync(config, embedder).figures
    client = connect(milvus_server.uri)
    assert strong_count(client, config.store.collection) == first.chunks

    (docs / "notes.txt").unlink()
    again = run_sync(config, embedder).figures
    assert (again.documents.deleted, again.documents.unchanged) == (1, first.documents.total - 1)
    assert strong_count(client, config.store.collection) == again.chunks < first.chunks
    retriever = Retriever(milvus_server.uri, config.store.alias, embedder=embedder)
    hits = retriever.search("notes", top_k=50)
    assert hits and all(h.doc_id != "docs/notes.txt" for h in hits)

    resized = job_config(
        milvus_server.uri,
        docs,
        config.store.alias,
        chunking=ChunkingConfig(size=64, overlap=8),
    )
    assert resized.store.collection != config.store.collection
    report = run_sync(resized, embedder)
    assert report.dropped == [config.store.collection]
    assert alias_target(client, config.store.alias) == resized.store.collection
    assert top_doc(retriever, "Which carrier delivers heavy parcels?") == (
        "docs/policies/shipping.md"
    )

    dropped = drop_family(client, config.store.alias)
    assert dropped["dropped_collections"] == [resized.store.collection]
    assert not [c for c in client.list_collections() if c.startswith(config.store.alias)]


def test_a_named_database_on_the_server(
    milvus_server: MilvusServer, embedder: SentenceTransformerEmbedder, docs: Path
) -> None:
    """Milvus 2.3 has databases but not `use_database`: clients open one by name."""
    config = job_config(milvus_server.uri, docs, database="team_b")
    assert run_sync(config, embedder).figures.documents.added == 5
    retriever = Retriever(
        milvus_server.uri, config.store.alias, embedder=embedder, database="team_b"
    )
    assert top_doc(retriever, "How long is a password reset link valid?") == "docs/security.html"
    assert config.store.alias not in str(connect(milvus_server.uri).list_aliases())


def test_the_servers_graph_index_is_searched_at_least_as_wide_as_the_results_asked_for(
    milvus_server: MilvusServer, embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    """A server's AUTOINDEX is a graph that takes `ef`, and Milvus refuses an `ef` below the
    results asked for: the reader raises it to them, so any `knowledgeBaseRef.ef` and any
    `topK` x neighbours (or re-rank candidates) work together."""
    # Milvus scans a segment of under 1,024 rows without its index: make one it indexes.
    docs = tmp_path / "ledger"
    docs.mkdir()
    for i in range(INDEXED_SEGMENT_ROWS):
        (docs / f"entry-{i:04d}.txt").write_text(f"Ledger entry {i}: valve {i % 97} turned.")
    config = job_config(milvus_server.uri, docs)
    rows = run_sync(config, embedder).figures.chunks
    assert rows == INDEXED_SEGMENT_ROWS
    client = connect(milvus_server.uri)
    searched_by_index(client, config.store.collection, rows)
    question = "Which entry turned valve 12?"
    vector = embedder.embed([question])[0].tolist()
    with pytest.raises(Exception, match=r"ef\(5\) should be larger than k\(40\)"):
        client.search(
            config.store.alias, data=[vector], limit=40, search_params={"params": {"ef": 5}}
        )
    retriever = Retriever(milvus_server.uri, config.store.alias, embedder=embedder)
    narrow = retriever.search(question, top_k=40, ef=5)
    assert len(narrow) == 40
    assert narrow == retriever.search(question, top_k=40, ef=40)
    drop_family(client, config.store.alias)
