"""The knowledge base answers are grounded in, opened in the background.

The server starts and answers health checks without it; /readyz says why it is not there
yet; opening is retried every few seconds, since Milvus may start after the server, be
restarted, or not hold the collection until the first sync has run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from phiops_workload.serving import RetrievalConfig

if TYPE_CHECKING:
    from phiops_embed.embedder import Embedder
    from phiops_embed.rerank import Reranker
    from phiops_embed.retrieval import Hit, Retriever

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
# A search at opening proves the alias exists and loads, and warms the embedding model.
_PROBE = "readiness probe"


class KnowledgeUnavailable(Exception):
    """The knowledge base cannot answer (not opened yet, or Milvus failed the search)."""


class KnowledgeBase:
    def __init__(
        self,
        config: RetrievalConfig,
        retry_seconds: float = RETRY_SECONDS,
        on_search: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.retry_seconds = retry_seconds
        self.on_search = on_search
        """Told each search's duration in seconds (the retrieval metric)."""
        self.retriever: Retriever | None = None
        self.error: str | None = None
        self.attempts = 0
        self._embedder: Embedder | None = None
        self._reranker: Reranker | None = None
        # One thread: searches share the embedding model and the Milvus client.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieval")

    @property
    def ready(self) -> bool:
        return self.retriever is not None

    def report(self) -> dict[str, Any]:
        return {
            "collection": self.config.collection,
            "ready": self.ready,
            "attempts": self.attempts,
            "error": self.error,
        }

    def _open(self) -> Retriever:
        from phiops_embed.embedder import DEFAULT_MODEL, SentenceTransformerEmbedder
        from phiops_embed.retrieval import Retriever

        if self._embedder is None:  # loaded once, kept across retries
            model = self.config.model or DEFAULT_MODEL
            self._embedder = SentenceTransformerEmbedder(model, self.config.device)
        rerank = self.config.rerank
        if rerank is not None and self._reranker is None:
            from phiops_embed.rerank import Reranker

            self._reranker = Reranker(rerank.model, rerank.device)
        retriever = Retriever(
            self.config.uri,
            self.config.collection,
            token_file=self.config.token_file,
            database=self.config.database,
            embedder=self._embedder,
        )
        try:
            retriever.search(_PROBE, top_k=1, hybrid=self.config.hybrid)
        except Exception:
            retriever.close()
            raise
        return retriever

    async def open(self) -> None:
        """Open the knowledge base, retrying until it answers (cancel to give up)."""
        loop = asyncio.get_running_loop()
        while True:
            self.attempts += 1
            try:
                self.retriever = await loop.run_in_executor(self._executor, self._open)
            except Exception as err:
                self.error = str(err) or type(err).__name__
                log.warning(
                    "knowledge base %s at %s not available (attempt %d): %s; retrying in %gs",
                    self.config.collection,
                    self.config.uri,
                    self.attempts,
                    self.error,
                    self.retry_seconds,
                )
                await asyncio.sleep(self.retry_seconds)
                continue
            self.error = None
            log.info("knowledge base %s at %s ready", self.config.collection, self.config.uri)
            return

    async def search(
        self,
        query: str,
        top_k: int | None = None,
        hybrid: bool | None = None,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """The closest chunks, best first; None arguments take the configured values."""
        if self.retriever is None:
            why = self.error or "still opening"
            raise KnowledgeUnavailable(
                f"the knowledge base {self.config.collection} is not available yet: {why}"
            )
        call = partial(
            self.retriever.search,
            query,
            top_k or self.config.top_k,
            self.config.hybrid if hybrid is None else hybrid,
            self.config.score_threshold if score_threshold is None else score_threshold,
            neighbors=self.config.neighbors,
            reranker=self._reranker,
            candidates=self.config.rerank.candidates if self.config.rerank else 0,
            ef=self.config.ef,
        )
        started = time.monotonic()
        try:
            hits = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except Exception as err:  # Milvus down, the alias dropped...: this request fails
            log.warning("search in %s failed: %s", self.config.collection, err)
            raise KnowledgeUnavailable(f"the knowledge base search failed: {err}") from err
        if self.on_search is not None:
            self.on_search(time.monotonic() - started)
        return hits

    def close(self) -> None:
        if self.retriever is not None:
            self.retriever.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
