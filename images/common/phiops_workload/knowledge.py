"""The KnowledgeBase contracts: the embedding Job's config, its result, and the Milvus
collection layout shared by the writer (embedding Job) and the readers (inference server,
the `query` subcommand).

Defined once here; the operator renders `EmbedJobConfig`, the embedder parses it and answers
with a `WorkloadResult` whose `figures` parse as `SyncFigures`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from phiops_workload.contracts import ResourceIdentity


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- config -----------------------------------------------------------------------------------


class SourceConfig(_Model):
    """One named document source, resolved to what the pod can read.

    configMap and persistentVolumeClaim sources are mounted by the operator: `local_path` is
    the folder to walk. http and git sources are fetched by the embedder itself.
    """

    name: str
    kind: Literal["configMap", "persistentVolumeClaim", "http", "git"]
    local_path: str | None = None
    include: list[str] = Field(default_factory=lambda: ["**/*"])
    exclude: list[str] = Field(default_factory=list)
    urls: list[str] = Field(default_factory=list)
    git_url: str | None = None
    git_ref: str = "main"
    git_subpath: str = "."
    format: Literal["auto", "markdown", "text", "html", "pdf"] = "auto"


class ChunkingConfig(_Model):
    strategy: Literal["markdown", "recursive", "fixed"] = "markdown"
    size: int = 250
    overlap: int = 50
    include_path: bool = True
    """Lead each chunk's embedded text with its document's path (see `Chunker.chunk`)."""
    lead_tokens: int = 24
    """The document's first tokens after the path in each chunk's embedded text (see
    `Chunker.chunk`); 0: none."""


class EmbeddingConfig(_Model):
    provider: Literal["sentenceTransformers", "openai"] = "sentenceTransformers"
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = 32
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """`auto`: bfloat16 autocast where the device computes it natively (see
    `phiops_embed.precision`), float32 elsewhere."""
    # openai provider only
    base_url: str | None = None
    dimensions: int | None = None
    api_key_file: str | None = None


class StoreConfig(_Model):
    uri: str
    token_file: str | None = None
    database: str = "default"
    alias: str
    """The name readers query; always points at a complete collection."""
    collection: str
    """The physical collection this sync writes (alias + settings fingerprint)."""
    index_type: str = "AUTOINDEX"
    metric: Literal["COSINE", "IP", "L2"] = "COSINE"
    hybrid: bool = True


class ShardConfig(_Model):
    index: int = 0
    count: int = 1


class EmbedJobConfig(_Model):
    resource: ResourceIdentity
    sync_id: str
    sources: list[SourceConfig]
    chunking: ChunkingConfig
    embedding: EmbeddingConfig
    store: StoreConfig
    shard: ShardConfig = Field(default_factory=ShardConfig)


# -- result -----------------------------------------------------------------------------------


class DocumentFigures(_Model):
    total: int = 0
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: int = 0
    failed_names: list[str] = Field(default_factory=list)


class SyncFigures(_Model):
    """`WorkloadResult.figures` of a successful (or partly failed) sync."""

    documents: DocumentFigures
    chunks: int
    collection: str
    alias: str
    model: str
    dimension: int
    duration_seconds: float
    chunks_embedded: int = 0
    server_version: str = ""
    """What the Milvus server reported (`milvus_lite-...` for the embedded store)."""
    missing_features: list[str] = Field(default_factory=list)
    """Features the spec asked for that the server lacks (served without them)."""


# Reasons the embedder reports (they become the KnowledgeBase's Ready condition reason).
REASON_SYNCED = "Synced"
REASON_SOURCE_NOT_FOUND = "SourceNotFound"
REASON_EMBEDDING_FAILED = "EmbeddingFailed"
REASON_STORE_UNAVAILABLE = "VectorStoreUnavailable"


# -- collection layout ------------------------------------------------------------------------

# Field names of every phiops collection. Readers and writers use these constants only.
FIELD_ID = "id"  # VARCHAR(64) primary key: chunk_id(doc_id, chunk_index)
FIELD_DOC_ID = "doc_id"  # VARCHAR(1024): "<source>/<path or url>"
FIELD_SOURCE = "source"  # VARCHAR(64): source name
FIELD_DOC_HASH = "doc_hash"  # VARCHAR(64): sha256 of the document's bytes
FIELD_CHUNK_INDEX = "chunk_index"  # INT64
FIELD_CHUNK_COUNT = "chunk_count"  # INT64: chunks of the document
FIELD_HEADING = "heading"  # VARCHAR(1024): heading path of the chunk ("Returns > Refunds")
FIELD_TEXT = "text"  # VARCHAR(65535); analyzer enabled when hybrid
FIELD_VECTOR = "vector"  # FLOAT_VECTOR(dimension)
FIELD_SPARSE = "sparse"  # SPARSE_FLOAT_VECTOR from the BM25 function (hybrid only)
BM25_FUNCTION = "text_bm25"


def chunk_id(doc_id: str, chunk_index: int) -> str:
    """Deterministic primary key: a retried or re-run sync writes exactly the same rows."""
    return hashlib.sha256(f"{doc_id}\x00{chunk_index}".encode()).hexdigest()[:32]


def _identifier(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return cleaned if re.match(r"[A-Za-z_]", cleaned) else f"c_{cleaned}"


def default_alias(namespace: str, name: str) -> str:
    """The collection name readers use when the spec names none."""
    return _identifier(f"kb_{namespace}_{name}")[:200]


def physical_collection(alias: str, fingerprint: str) -> str:
    """The versioned collection behind an alias: a new embedding model, chunking or index
    gives a new fingerprint, a new collection, and an alias switch once it is complete."""
    return f"{alias}__{fingerprint[:12]}"


def settings_fingerprint(
    chunking: ChunkingConfig, embedding: EmbeddingConfig, store: StoreConfig
) -> str:
    """What decides the vectors: everything that, changed, means re-embedding everything."""
    relevant = {
        "chunking": chunking.model_dump(),
        "model": [embedding.provider, embedding.model, embedding.dimensions],
        "index": [store.index_type, store.metric, store.hybrid],
    }
    return hashlib.sha256(repr(sorted(relevant.items())).encode()).hexdigest()
