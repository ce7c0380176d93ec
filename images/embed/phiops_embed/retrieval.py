"""Reading a knowledge base the way every reader does: by its alias, with the same model.

The inference server imports `Retriever`; the `query` subcommand is a thin wrapper on it.
The alias always points at a complete collection, so a reader never sees a half-built one,
and an alias switch takes effect on the next search.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

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
from phiops_embed.store import alias_target, connect, guarded, load_collection, read_token

log = logging.getLogger(__name__)

OUTPUT_FIELDS = [FIELD_DOC_ID, FIELD_SOURCE, FIELD_HEADING, FIELD_CHUNK_INDEX, FIELD_TEXT]
# Reciprocal-rank fusion constant (the usual 60): hybrid scores are 1/(k+rank) sums.
RRF_K = 60
# Metrics and schemas change only with the collection behind the alias: re-read now and then.
_LAYOUT_TTL_SECONDS = 30.0


class Hit(BaseModel):
    model_config = ConfigDict(frozen=True)

    doc_id: str
    source: str
    heading: str
    chunk_index: int
    text: str
    score: float
    """Higher is better: cosine/IP similarity, minus the L2 distance, or the RRF score."""


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
        self._layout: tuple[float, str, bool] | None = None

    def search(
        self,
        question: str,
        top_k: int = 5,
        hybrid: bool = False,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """The `top_k` chunks closest to `question`, best first. `hybrid` fuses dense and
        BM25 results (RRF) where the collection has full text; `score_threshold` drops hits
        scoring below it. Raises StoreUnavailable when Milvus cannot answer."""
        vector = self.embedder.embed([question])[0].tolist()
        metric, has_sparse = self._describe()
        if hybrid and not has_sparse:
            log.warning("%s has no full-text index: dense search only", self.alias)
        try:
            raw = self._search(question, vector, top_k, hybrid and has_sparse)
        except Exception as err:
            if "load" not in str(err).lower():
                raise
            # milvus-lite restarted (collections come back released): load, ask again.
            load_collection(self.client, self.alias)
            raw = self._search(question, vector, top_k, hybrid and has_sparse)
        hits = [self._hit(h, metric, hybrid and has_sparse) for h in raw]
        if score_threshold is not None:
            hits = [h for h in hits if h.score >= score_threshold]
        return hits

    def close(self) -> None:
        self.client.close()

    def _search(
        self, question: str, vector: list[float], top_k: int, hybrid: bool
    ) -> list[dict[str, Any]]:
        from pymilvus import AnnSearchRequest, RRFRanker

        if hybrid:
            requests = [
                AnnSearchRequest(data=[vector], anns_field=FIELD_VECTOR, param={}, limit=top_k),
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
            )
            result = guarded("search", call)
        return list(result[0]) if result else []

    def _describe(self) -> tuple[str, bool]:
        """(vector metric, has a BM25 field) of the collection behind the alias, cached."""
        now = time.monotonic()
        if self._layout is None or now - self._layout[0] > _LAYOUT_TTL_SECONDS:
            target = alias_target(self.client, self.alias) or self.alias
            info = guarded("describe_collection", partial(self.client.describe_collection, target))
            has_sparse = any(f["name"] == FIELD_SPARSE for f in info["fields"])
            index = guarded(
                "describe_index", partial(self.client.describe_index, target, FIELD_VECTOR)
            )
            metric = str((index or {}).get("metric_type", "COSINE")).upper()
            self._layout = (now, metric, has_sparse)
        return self._layout[1], self._layout[2]

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
