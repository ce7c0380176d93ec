"""An optional re-ranking stage: a sentence-transformers CrossEncoder reads the question with
each candidate chunk and scores the pair, which orders candidates better than the distance of
two separately made vectors (at the cost of one model pass per candidate)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from phiops_embed.embedder import EmbeddingError

if TYPE_CHECKING:
    from phiops_embed.retrieval import Hit


class Reranker:
    def __init__(self, model: str, device: str = "cpu", batch_size: int = 32) -> None:
        try:
            from sentence_transformers import CrossEncoder

            self.model = CrossEncoder(model, device=device)
        except Exception as err:  # hub errors, missing files, not a cross-encoder...
            raise EmbeddingError(f"cannot load re-ranking model {model!r}: {err}") from err
        self.name = model
        self.batch_size = batch_size

    def scores(self, question: str, texts: Sequence[str]) -> list[float]:
        """One relevance score per text (higher is more relevant)."""
        values = self.model.predict(
            [(question, text) for text in texts],
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(v) for v in values.reshape(len(texts), -1)[:, -1]]

    def rerank(self, question: str, hits: Sequence[Hit]) -> list[Hit]:
        """`hits` ordered by the model's scores, best first, each carrying its score (ties
        keep the retrieval order)."""
        scores = self.scores(question, [h.text for h in hits])
        order = sorted(range(len(hits)), key=lambda i: -scores[i])
        return [hits[i].model_copy(update={"score": scores[i]}) for i in order]
