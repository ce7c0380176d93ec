"""Reading a knowledge base the way every reader does: by its alias, with the same model.

The inference server imports `Retriever`; the `query` subcommand is a thin wrapper on it.
The alias always points at a complete collection, so a reader never sees a half-built one,
and an alias switch takes effect on the next search.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from phiops_workload.knowledge import (
    FIELD_CHUNK_INDEX,
    FIELD_DOC_ID,
    FIELD_HEADING,
    FIELD_SOURCE,
    FIELD_SPARSE,
    FIELD_TEXT,
    FIELD_VECTOR,
)
from pydantic import BaseModel, ConfigDict

from phiops_embed.embedder import DEFAULT_MODEL, Embedder, SentenceTransformerEmbedder
from phiops_embed.store import (
    alias_target,
    connect,
    guarded,
    literal,
    load_collection,
    read_token,
)

if TYPE_CHECKING:
    from phiops_embed.rerank import Reranker

log = logging.getLogger(__name__)

OUTPUT_FIELDS = [FIELD_DOC_ID, FIELD_SOURCE, FIELD_HEADING, FIELD_CHUNK_INDEX, FIELD_TEXT]
# Reciprocal-rank fusion constant (the usual 60): hybrid scores are 1/(k+rank) sums.
RRF_K = 60
# Shortest shared text taken for the chunker's overlap when joining neighbouring chunks.
MIN_OVERLAP = 16
# Metrics and schemas change only with the collection behind the alias: re-read now and then.
_LAYOUT_TTL_SECONDS = 30.0
# HNSW's search breadth when the reader names none. A Milvus 2.3 server searches its own
# AUTOINDEX (an HNSW graph) too narrowly by default: recall@10 0.928 at 100k real MiniLM
# chunks, against 0.992 at ef 64 for the same p50 (benchmarks/bench_vector_store.py).
DEFAULT_EF = 64
# Indexes that search a graph and take `ef`; a server's AUTOINDEX is one (on the embedded
# store phiops creates FLAT instead, an exact scan that takes no search parameter).
GRAPH_INDEXES = frozenset({"HNSW", "HNSW_SQ", "HNSW_PQ", "HNSW_PRQ", "AUTOINDEX"})


class Hit(BaseModel):
    model_config = ConfigDict(frozen=True)

    doc_id: str
    source: str
    heading: str
    chunk_index: int
    text: str
    score: float
    """Higher is better: cosine/IP similarity, minus the L2 distance, or the RRF score."""


def search_breadth(ef: int | None, limit: int, index_type: str) -> int | None:
    """The `ef` a dense search sends: none for an index that takes none; else the reader's
    (DEFAULT_EF when unset), raised to the number of results asked for, since HNSW cannot
    return more than `ef` of them (Milvus refuses an `ef` below the limit)."""
    if index_type.upper() not in GRAPH_INDEXES:
        return None
    return max(ef or DEFAULT_EF, limit)


def distinct_passages(hits: list[Hit], reach: int, limit: int) -> list[Hit]:
    """The first `limit` hits, less those whose chunk lies in the passage of a better hit of
    the same document (within `reach` chunks of it): once neighbours are handed over, such a
    hit repeats text the model already has and takes the place of another passage."""
    kept: list[Hit] = []
    for hit in hits:
        if len(kept) == limit:
            break
        if reach > 0 and any(
            k.doc_id == hit.doc_id and abs(k.chunk_index - hit.chunk_index) <= reach for k in kept
        ):
            continue
        kept.append(hit)
    return kept


class Retriever:
    """Search one knowledge base (its alias) on Milvus or the embedded milvus-lite server."""

    def __init__(
        self,
        uri: str,
        alias: str,
        model: str = DEFAULT_MODEL,
        *,
        token: str | None = None,
        token_file: str | None = None,
        database: str = "default",
        device: str = "cpu",
        embedder: Embedder | None = None,
    ) -> None:
        """`embedder` overrides `model`/`device` (e.g. an OpenAI-compatible one, or a model
        the caller has loaded already). The embedding must match the knowledge base's."""
        self.alias = alias
        self.embedder: Embedder = embedder or SentenceTransformerEmbedder(model, device)
        secret = token if token is not None else read_token(token_file)
        self.client = connect(uri, secret, database)
        self._layout: tuple[float, str, bool, str] | None = None
        self._warned_dense = False

    def search(
        self,
        question: str,
        top_k: int = 5,
        hybrid: bool = False,
        score_threshold: float | None = None,
        neighbors: int = 0,
        reranker: Reranker | None = None,
        candidates: int = 0,
        ef: int | None = None,
    ) -> list[Hit]:
        """The `top_k` chunks closest to `question`, best first. `hybrid` fuses dense and
        BM25 results (RRF) where the collection has full text; `score_threshold` drops hits
        scoring below it. With `reranker`, the first `candidates` results (at least
        `top_k`) are re-ordered by its scores before the `top_k` cut, and carry those scores.
        With `neighbors`, each hit's text is handed over with up to that many chunks of its
        document either side (small-to-big: a small chunk is found, a larger passage read),
        and a hit inside a better hit's passage gives its place to the next distinct one.
        `ef` is the search breadth of a graph index (HNSW, a server's AUTOINDEX) for the
        dense search: DEFAULT_EF when None, and never below the results asked for; an exact
        or IVF index takes none.
        Raises StoreUnavailable when Milvus cannot answer."""
        vector = self.embedder.embed([question])[0].tolist()
        metric, has_sparse, index_type = self._describe()
        use_hybrid = hybrid and has_sparse
        if hybrid and not has_sparse and not self._warned_dense:
            log.warning("%s has no full-text index: dense search only", self.alias)
            self._warned_dense = True
        # With neighbours, hits inside a better hit's passage are dropped: ask for enough
        # candidates that `top_k` distinct passages remain.
        limit = top_k * (2 * neighbors + 1) if neighbors > 0 else top_k
        if reranker is not None:
            limit = max(limit, candidates)
        ef = search_breadth(ef, limit, index_type)
        try:
            raw = self._search(question, vector, limit, use_hybrid, ef)
        except Exception as err:
            if "load" not in str(err).lower():
                raise
            # milvus-lite restarted (collections come back released): load, ask again.
            load_collection(self.client, self.alias)
            raw = self._search(question, vector, limit, use_hybrid, ef)
        hits = [self._hit(h, metric, use_hybrid) for h in raw]
        if score_threshold is not None:
            hits = [h for h in hits if h.score >= score_threshold]
        if reranker is not None and hits:
            hits = reranker.rerank(question, hits)
        hits = distinct_passages(hits, neighbors, top_k)
        if neighbors > 0 and hits:
            hits = self._widen(hits, neighbors)
        return hits

    def _widen(self, hits: list[Hit], reach: int) -> list[Hit]:
        """Each hit with the text of up to `reach` chunks either side, read in one query."""
        clauses = [
            f"({FIELD_DOC_ID} == {literal(h.doc_id)} and {FIELD_CHUNK_INDEX} >= "
            f"{h.chunk_index - reach} and {FIELD_CHUNK_INDEX} <= {h.chunk_index + reach})"
            for h in hits
        ]
        call = partial(
            self.client.query,
            self.alias,
            filter=" or ".join(dict.fromkeys(clauses)),
            output_fields=[FIELD_DOC_ID, FIELD_CHUNK_INDEX, FIELD_TEXT],
        )
        rows = guarded("query", call)
        texts = {
            (str(r[FIELD_DOC_ID]), int(r[FIELD_CHUNK_INDEX])): str(r[FIELD_TEXT]) for r in rows
        }
        widened = []
        for hit in hits:
            around = [
                texts.get((hit.doc_id, i), hit.text if i == hit.chunk_index else None)
                for i in range(hit.chunk_index - reach, hit.chunk_index + reach + 1)
            ]
            text = join_chunks([t for t in around if t is not None])
            widened.append(hit.model_copy(update={"text": text}))
        return widened

    def close(self) -> None:
        self.client.close()

    def _search(
        self, question: str, vector: list[float], top_k: int, hybrid: bool, ef: int | None
    ) -> list[dict[str, Any]]:
        from pymilvus import AnnSearchRequest, RRFRanker

        dense: dict[str, Any] = {"params": {"ef": ef}} if ef else {}
        if hybrid:
            requests = [
                AnnSearchRequest(data=[vector], anns_field=FIELD_VECTOR, param=dense, limit=top_k),
                AnnSearchRequest(data=[question], anns_field=FIELD_SPARSE, param={}, limit=top_k),
            ]
            call = partial(
                self.client.hybrid_search,
                self.alias,
                requests,
                RRFRanker(RRF_K),
                limit=top_k,
                output_fields=OUTPUT_FIELDS,
            )
            result = guarded("hybrid_search", call)
        else:
            call = partial(
                self.client.search,
                self.alias,
                data=[vector],
                anns_field=FIELD_VECTOR,
                limit=top_k,
                output_fields=OUTPUT_FIELDS,
                **({"search_params": dense} if dense else {}),
            )
            result = guarded("search", call)
        return list(result[0]) if result else []

    def _describe(self) -> tuple[str, bool, str]:
        """(vector metric, has a BM25 field, vector index type) of the collection behind the
        alias, cached."""
        now = time.monotonic()
        if self._layout is None or now - self._layout[0] > _LAYOUT_TTL_SECONDS:
            target = alias_target(self.client, self.alias) or self.alias
            info = guarded("describe_collection", partial(self.client.describe_collection, target))
            has_sparse = any(f["name"] == FIELD_SPARSE for f in info["fields"])
            index = guarded(
                "describe_index", partial(self.client.describe_index, target, FIELD_VECTOR)
            )
            metric = str((index or {}).get("metric_type", "COSINE")).upper()
            index_type = str((index or {}).get("index_type", "FLAT")).upper()
            self._layout = (now, metric, has_sparse, index_type)
        return self._layout[1:]

    @staticmethod
    def _hit(raw: dict[str, Any], metric: str, hybrid: bool) -> Hit:
        entity = raw.get("entity", raw)
        distance = float(raw["distance"])
        return Hit(
            doc_id=str(entity[FIELD_DOC_ID]),
            source=str(entity[FIELD_SOURCE]),
            heading=str(entity[FIELD_HEADING]),
            chunk_index=int(entity[FIELD_CHUNK_INDEX]),
            text=str(entity[FIELD_TEXT]),
            score=-distance if metric == "L2" and not hybrid else distance,
        )


def join_chunks(texts: list[str]) -> str:
    """Consecutive chunks as one passage: the overlap the chunker gave them appears once."""
    joined = texts[0] if texts else ""
    for text in texts[1:]:
        shared = _overlap(joined, text)
        joined = joined + text[shared:] if shared else f"{joined}\n{text}"
    return joined


def _overlap(left: str, right: str) -> int:
    """Length of the longest end of `left` that starts `right`, counted only from a word
    start and from MIN_OVERLAP characters (chunks overlap on whole words, and a chance match
    of a letter or two between chunks without overlap must not eat text)."""
    for size in range(min(len(left), len(right)), MIN_OVERLAP - 1, -1):
        start = len(left) - size
        if (start == 0 or left[start - 1].isspace()) and left.endswith(right[:size]):
            return size
    return 0
