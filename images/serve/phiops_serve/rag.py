"""Retrieval-augmented generation: ground the answer in a knowledge base's closest chunks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from phiops_workload.serving import RetrievalConfig

from phiops_serve.engine import Message

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
CONTEXT_HEADER = (
    "Answer using the context below where it is relevant. "
    "If the context does not contain the answer, say so.\n\nContext:\n"
)


class Chunk(Protocol):
    """A retrieved chunk (`phiops_embed.retrieval.Hit` is one)."""

    @property
    def source(self) -> str: ...
    @property
    def text(self) -> str: ...


class Searcher(Protocol):
    """What the augmenter needs of `phiops_embed.retrieval.Retriever`."""

    def search(
        self,
        question: str,
        top_k: int = ...,
        hybrid: bool = ...,
        score_threshold: float | None = ...,
    ) -> Sequence[Chunk]: ...


def open_retriever(config: RetrievalConfig) -> Searcher:
    """Connect to the knowledge base (blocking: loads the embedding model)."""
    from phiops_embed.retrieval import Retriever

    if config.model is None:
        retriever = Retriever(config.uri, config.collection)
    else:
        retriever = Retriever(config.uri, config.collection, config.model)
    return retriever


def context_prompt(system_prompt: str | None, hits: Sequence[Chunk]) -> str:
    chunks = "\n\n".join(f"[{i}] ({hit.source})\n{hit.text}" for i, hit in enumerate(hits, 1))
    return f"{system_prompt or DEFAULT_SYSTEM_PROMPT}\n\n{CONTEXT_HEADER}{chunks}"


class Augmenter:
    """Puts the chunks closest to the last user message into the system prompt."""

    def __init__(
        self, searcher: Searcher, config: RetrievalConfig, system_prompt: str | None
    ) -> None:
        self.searcher = searcher
        self.config = config
        self.system_prompt = system_prompt

    async def augment(self, messages: list[Message]) -> list[Message]:
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        hits: Sequence[Chunk] = []
        if question:
            hits = await asyncio.to_thread(
                self.searcher.search,
                question,
                self.config.top_k,
                False,
                self.config.score_threshold,
            )
        rest = messages
        system = self.system_prompt
        if messages and messages[0]["role"] == "system":
            system, rest = messages[0]["content"], messages[1:]
        if not hits:
            return [{"role": "system", "content": system}, *rest] if system else list(rest)
        return [{"role": "system", "content": context_prompt(system, hits)}, *rest]
