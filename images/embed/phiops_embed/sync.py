"""The embedding Job: sources -> text -> chunks -> vectors -> Milvus, incrementally.

Per document (this shard's only): unchanged (same content hash, complete) documents are
skipped; new and changed ones are chunked, embedded in batches, and written with
deterministic ids, chunk 0 last so that its presence marks a complete document; documents
gone from the sources lose their rows. A killed and re-run sync converges to the same rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from phiops_workload.contracts import WorkloadResult
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
    REASON_EMBEDDING_FAILED,
    REASON_SOURCE_NOT_FOUND,
    REASON_STORE_UNAVAILABLE,
    REASON_SYNCED,
    DocumentFigures,
    EmbedJobConfig,
    SyncFigures,
    chunk_id,
)
from phiops_workload.runtime import WorkloadError
from phiops_workload.store_features import missing_message

from phiops_embed.chunking import Chunk, Chunker
from phiops_embed.embedder import Embedder, EmbeddingError, load_embedder
from phiops_embed.formats import ExtractionError, detect_format, extract
from phiops_embed.progress import Counters, ProgressLogger
from phiops_embed.sources import (
    SourceDocument,
    SourceNotFound,
    check_sources,
    in_shard,
    iter_documents,
)
from phiops_embed.store import (
    MAX_DOC_ID,
    MAX_HEADING,
    MAX_SOURCE,
    MAX_TEXT,
    WRITE_BATCH,
    StoredDocument,
    StoreUnavailable,
    VectorStore,
    clip,
    describe,
)

log = logging.getLogger(__name__)

# Chunks sorted by length together before they are cut into batches: the more, the less
# padding (at 32 batches about 3% of the tokens, as little as sorting a whole corpus).
GROUP_BATCHES = 32
# The result must fit a 4 KiB termination message: the names of the first failures only.
MAX_FAILED_NAMES = 20


@dataclass
class Timings:
    """Seconds per phase (the benchmark compares them)."""

    read: float = 0.0
    chunk: float = 0.0
    embed: float = 0.0
    write: float = 0.0
    scan: float = 0.0
    total: float = 0.0


@dataclass
class SyncReport:
    figures: SyncFigures
    timings: Timings
    promoted: bool
    dropped: list[str]


@dataclass
class _Pending:
    """A new or changed document on its way to the store."""

    doc: SourceDocument
    doc_hash: str
    chunks: list[Chunk]
    previous: StoredDocument | None
    vectors: list[Any] = field(default_factory=list)

    @property
    def embedded(self) -> bool:
        return len(self.vectors) == len(self.chunks)

    def rows(self) -> list[dict[str, Any]]:
        n = len(self.chunks)
        return [
            {
                FIELD_ID: chunk_id(self.doc.doc_id, i),
                FIELD_DOC_ID: self.doc.doc_id,
                FIELD_SOURCE: clip(self.doc.source, MAX_SOURCE),
                FIELD_DOC_HASH: self.doc_hash,
                FIELD_CHUNK_INDEX: i,
                FIELD_CHUNK_COUNT: n,
                FIELD_HEADING: clip(chunk.heading, MAX_HEADING),
                FIELD_TEXT: clip(chunk.text, MAX_TEXT),
                FIELD_VECTOR: vector,
            }
            for i, (chunk, vector) in enumerate(zip(self.chunks, self.vectors, strict=True))
        ]


class _Sync:
    def __init__(self, config: EmbedJobConfig, embedder: Embedder, store: VectorStore) -> None:
        self.config = config
        self.embedder = embedder
        self.store = store
        self.chunker = Chunker(config.chunking, embedder.tokenizer, embedder.max_tokens)
        self.batch_size = max(1, config.embedding.batch_size)
        self.group = self.batch_size * GROUP_BATCHES
        self.counters = Counters()
        self.timings = Timings()
        self.docs = DocumentFigures().model_dump()
        self.failed_names: list[str] = []
        self.chunks_total = 0
        self.queue: list[tuple[_Pending, Chunk]] = []
        self.ready: list[_Pending] = []
        self.formats = {s.name: s.format for s in config.sources}

    def run(self, existing: dict[str, StoredDocument]) -> None:
        seen: set[str] = set()
        documents = iter_documents(self.config.sources, self.config.shard)
        while True:
            began = time.monotonic()
            doc = next(documents, None)
            self.timings.read += time.monotonic() - began
            if doc is None:
                break
            seen.add(doc.doc_id)
            self.counters.documents_read += 1
            self._handle(doc, existing.get(doc.doc_id))
            while len(self.queue) >= self.group:
                self._embed(self.group)
        while self.queue:
            self._embed(self.group)
        self._write(final=True)
        self._delete_gone(existing, seen)

    def _handle(self, doc: SourceDocument, previous: StoredDocument | None) -> None:
        self.docs["total"] += 1
        if doc.error is not None:
            self._fail(doc, doc.error, previous)
            return
        doc_hash = doc.sha256
        if previous is not None and previous.complete and previous.doc_hash == doc_hash:
            self.docs["unchanged"] += 1
            self.counters.documents_unchanged += 1
            self.chunks_total += previous.chunk_count
            return
        if len(doc.doc_id.encode()) > MAX_DOC_ID:
            self._fail(doc, f"its id is over {MAX_DOC_ID} bytes", previous)
            return
        began = time.monotonic()
        try:
            fmt = detect_format(doc.name, doc.content_type, doc.data)
            forced = self.formats.get(doc.source, "auto")
            if forced != "auto":
                fmt = forced
            text = extract(doc.data, fmt, doc.content_type)
            title = doc.name if self.config.chunking.include_path else ""
            chunks = self.chunker.chunk(text.text, text.structured, title)
        except ExtractionError as err:
            self._fail(doc, str(err), previous)
            return
        finally:
            self.timings.chunk += time.monotonic() - began
        if not chunks:
            self._fail(doc, "no text found", previous)
            return
        pending = _Pending(doc, doc_hash, chunks, previous)
        self.queue.extend((pending, chunk) for chunk in chunks)
        self.docs["updated" if previous is not None and previous.complete else "added"] += 1

    def _fail(self, doc: SourceDocument, reason: str, previous: StoredDocument | None) -> None:
        # The document's stored rows (if any) stay: a transient error must not erase it.
        log.warning("skipping %s: %s", doc.doc_id, reason)
        self.docs["failed"] += 1
        self.counters.documents_failed += 1
        if len(self.failed_names) < MAX_FAILED_NAMES:
            self.failed_names.append(doc.doc_id)
        if previous is not None and previous.complete:
            self.chunks_total += previous.chunk_count

    def _embed(self, count: int) -> None:
        """Embed the next `count` queued chunks, batch by batch in order of length: batches
        of like lengths pad (and so compute) little, as `model.encode` does on a whole list."""
        group, self.queue = self.queue[:count], self.queue[count:]
        order = sorted(range(len(group)), key=lambda i: group[i][1].tokens)
        vectors: list[Any] = [None] * len(group)
        began = time.monotonic()
        # A GPU embedder takes the whole group: it tokenises a batch while the last one runs.
        step = max(1, len(order)) if self.embedder.accelerated else self.batch_size
        for start in range(0, len(order), step):
            batch = order[start : start + step]
            embedded = self.embedder.embed([group[i][1].embed_text for i in batch])
            for i, vector in zip(batch, embedded, strict=True):
                vectors[i] = vector
            self.counters.chunks_embedded += len(batch)
        self.timings.embed += time.monotonic() - began
        # In queue order: each document's vectors arrive in chunk order.
        for (pending, _), vector in zip(group, vectors, strict=True):
            pending.vectors.append(vector)
            if pending.embedded:
                self.ready.append(pending)
        if sum(len(p.chunks) for p in self.ready) >= WRITE_BATCH:
            self._write(final=False)

    def _write(self, final: bool) -> None:
        """Write the embedded documents: all other chunks first, stale tails deleted, then
        every chunk 0 (the completion marks)."""
        if not self.ready:
            return
        began = time.monotonic()
        fresh = [p for p in self.ready if p.previous is None]
        replaced = [p for p in self.ready if p.previous is not None]
        rows = {id(p): p.rows() for p in self.ready}
        self.store.write([r for p in fresh for r in rows[id(p)][1:]], replace=False)
        self.store.write([r for p in replaced for r in rows[id(p)][1:]], replace=True)
        for p in replaced:
            assert p.previous is not None
            if not p.previous.complete or p.previous.chunk_count > len(p.chunks):
                self.store.delete_tail(p.doc.doc_id, len(p.chunks))
        self.store.write([rows[id(p)][0] for p in fresh], replace=False)
        self.store.write([rows[id(p)][0] for p in replaced], replace=True)
        self.chunks_total += sum(len(p.chunks) for p in self.ready)
        self.ready = []
        self.timings.write += time.monotonic() - began
        if final:
            log.info("wrote all documents to %s", self.store.collection)

    def _delete_gone(self, existing: dict[str, StoredDocument], seen: set[str]) -> None:
        gone = [
            doc_id
            for doc_id in existing
            if doc_id not in seen and in_shard(doc_id, self.config.shard)
        ]
        if not gone:
            return
        began = time.monotonic()
        self.store.delete_documents(gone)
        self.timings.write += time.monotonic() - began
        self.docs["deleted"] += sum(1 for d in gone if existing[d].complete)
        log.info("deleted the rows of %d documents gone from the sources", len(gone))

    def figures(self, duration: float) -> SyncFigures:
        documents = DocumentFigures(**{**self.docs, "failed_names": self.failed_names})
        return SyncFigures(
            documents=documents,
            chunks=self.chunks_total,
            collection=self.config.store.collection,
            alias=self.config.store.alias,
            model=self.config.embedding.model,
            dimension=self.embedder.dimension,
            duration_seconds=round(duration, 3),
            chunks_embedded=self.counters.chunks_embedded,
        )


def run_sync(
    config: EmbedJobConfig, embedder: Embedder | None = None, progress_interval: float = 10.0
) -> SyncReport:
    """One sync of this shard. Raises SourceNotFound, EmbeddingError or StoreUnavailable."""
    started = time.monotonic()
    check_sources(config.sources)
    if embedder is None:
        embedder = load_embedder(config.embedding)
    store = VectorStore.open(config.store)
    description = describe(
        {
            "resource": f"{config.resource.namespace}/{config.resource.name}",
            "provider": config.embedding.provider,
            "model": config.embedding.model,
            "dimension": embedder.dimension,
            "chunking": config.chunking.model_dump(),
        }
    )
    # Before creating the collection: a server without BM25 gets a dense-only one, not a
    # half-made one (the readers then search dense vectors).
    features = store.features()
    missing = features.missing(config.store.hybrid)
    layout = config.store
    if missing:
        log.warning("%s", missing_message(features.version, missing))
        layout = layout.model_copy(update={"hybrid": False})
    store.ensure_collection(layout, embedder.dimension, description)
    began = time.monotonic()
    existing = store.scan()
    log.info(
        "collection %s holds %d documents; syncing shard %d of %d",
        config.store.collection,
        len(existing),
        config.shard.index,
        config.shard.count,
    )
    sync = _Sync(config, embedder, store)
    sync.timings.scan = time.monotonic() - began
    with ProgressLogger(sync.counters, progress_interval):
        sync.run(existing)
    store.flush()
    promoted, dropped = False, []
    # With several shards no single pod knows the collection is complete: the operator runs
    # `promote` once all shards have succeeded.
    if config.shard.count <= 1:
        dropped = store.promote(config.store.alias)
        promoted = True
    sync.timings.total = time.monotonic() - started
    log.info("sync done: %s", sync.counters.line())
    figures = sync.figures(sync.timings.total).model_copy(
        update={"server_version": features.version, "missing_features": missing}
    )
    return SyncReport(figures=figures, timings=sync.timings, promoted=promoted, dropped=dropped)


def translate_errors(error: SourceNotFound | EmbeddingError | StoreUnavailable) -> WorkloadError:
    if isinstance(error, SourceNotFound):
        return WorkloadError(REASON_SOURCE_NOT_FOUND, str(error))
    if isinstance(error, EmbeddingError):
        return WorkloadError(REASON_EMBEDDING_FAILED, str(error))
    return WorkloadError(REASON_STORE_UNAVAILABLE, str(error))


def main(config: EmbedJobConfig) -> WorkloadResult:
    try:
        report = run_sync(config)
    except (SourceNotFound, EmbeddingError, StoreUnavailable) as err:
        raise translate_errors(err) from err
    figures = report.figures
    message = (
        f"{figures.documents.total} documents, {figures.chunks} chunks in {figures.collection}"
    )
    if figures.documents.failed:
        message += f"; {figures.documents.failed} documents could not be read"
    return WorkloadResult(
        outcome="Succeeded", reason=REASON_SYNCED, message=message, figures=figures.model_dump()
    )


def promote(config: EmbedJobConfig) -> WorkloadResult:
    """After every shard of a sync succeeded: switch the alias, drop older collections."""
    try:
        store = VectorStore.open(config.store)
        store.ensure_loaded()
        dropped = store.promote(config.store.alias)
    except StoreUnavailable as err:
        raise translate_errors(err) from err
    return WorkloadResult(
        outcome="Succeeded",
        reason=REASON_SYNCED,
        message=f"{config.store.alias} points at {config.store.collection}",
        figures={"collection": config.store.collection, "dropped": dropped},
    )
