"""The embedding sync and the readers against a real Milvus standalone server (2.3.5, the
PyPI package `milvus`), not milvus-lite: incremental sync with deletions, the alias switch,
clean-up, a named database, consistency, and a hybrid request on a server without BM25."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from phiops_devcluster.milvus_server import MilvusServer
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


def strong_count(client: Any, collection: str) -> int:
    """Rows as of now: Strong, since Milvus's default (Bounded) may miss a write just made."""
    (row,) = client.query(
        collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
    )
    return int(row["count(*)"])


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
