"""Retrieval-augmented generation: the chunks closest to the question go, numbered, into the
system prompt, and the answer can cite them by those numbers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from phiops_workload.serving import CONTEXT_PLACEHOLDER, ServeConfig

from phiops_serve.engine import Message
from phiops_serve.knowledge import KnowledgeBase

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_CONTEXT_TEMPLATE = (
    "Answer using the context below where it is relevant; cite it by its [number]. "
    "If the context does not contain the answer, say so.\n\nContext:\n" + CONTEXT_PLACEHOLDER
)


class Chunk(Protocol):
    """A retrieved chunk (`phiops_embed.retrieval.Hit` is one)."""

    @property
    def doc_id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def heading(self) -> str: ...
    @property
    def chunk_index(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def score(self) -> float: ...


def numbered(hits: Sequence[Chunk]) -> str:
    """The chunks as the model sees them: `[n] doc_id (heading)` then the text."""
    blocks = []
    for index, hit in enumerate(hits, 1):
        title = f"{hit.doc_id} ({hit.heading})" if hit.heading else hit.doc_id
        blocks.append(f"[{index}] {title}\n{hit.text}")
    return "\n\n".join(blocks)


def system_with_context(system: str | None, template: str | None, hits: Sequence[Chunk]) -> str:
    """The system prompt followed by the template, its `{context}` replaced by the chunks
    (a plain replace: templates may hold other braces)."""
    context = (template or DEFAULT_CONTEXT_TEMPLATE).replace(CONTEXT_PLACEHOLDER, numbered(hits))
    return f"{system or DEFAULT_SYSTEM_PROMPT}\n\n{context}"


def grounded_messages(
    messages: list[Message],
    hits: Sequence[Chunk],
    system_prompt: str | None,
    template: str | None,
) -> list[Message]:
    """`messages` with the system prompt set: the caller's own system message wins over the
    configured one; the context follows it when there are hits."""
    system, rest = system_prompt, messages
    if messages and messages[0]["role"] == "system":
        system, rest = messages[0]["content"], messages[1:]
    if hits:
        system = system_with_context(system, template, hits)
    return [{"role": "system", "content": system}, *rest] if system else list(rest)


def citations(hits: Sequence[Chunk]) -> list[dict[str, Any]]:
    """What the answer may cite; `index` is the chunk's [n] in the prompt."""
    return [
        {
            "index": index,
            "source": hit.source,
            "doc_id": hit.doc_id,
            "heading": hit.heading,
            "chunk_index": hit.chunk_index,
            "score": hit.score,
        }
        for index, hit in enumerate(hits, 1)
    ]


@dataclass(frozen=True)
class Grounding:
    """A chat as the model reads it: the system prompt, and the retrieved chunks in rank
    order (the first `used` of them in the prompt)."""

    request: list[Message]
    hits: Sequence[Chunk]
    system: str | None
    template: str | None
    cite: bool
    used: int

    @property
    def messages(self) -> list[Message]:
        return grounded_messages(self.request, self.hits[: self.used], self.system, self.template)

    @property
    def citations(self) -> list[dict[str, Any]] | None:
        """None when the answer carries no citations (no retrieval, or citations off)."""
        return citations(self.hits[: self.used]) if self.cite else None

    @property
    def dropped(self) -> int:
        return len(self.hits) - self.used

    def first(self, count: int) -> Grounding:
        return replace(self, used=count)


def fitted(
    grounding: Grounding,
    tokenize: Callable[[list[Message]], list[int]],
    room: Callable[[list[int]], int | None],
    completion: int,
) -> tuple[list[int], Grounding]:
    """The prompt with as many of the best chunks as leave `completion` tokens of room in the
    model's context (`room`: tokens left after a prompt, None when unbounded). A question
    whose completion cannot fit beside even the top chunk keeps that chunk: a shorter answer
    from the best source beats a longer one from none."""
    for count in range(grounding.used, 0, -1):
        candidate = grounding.first(count)
        ids = tokenize(candidate.messages)
        left = room(ids)
        if left is None or left >= completion:
            return ids, candidate
        if count == 1 and left > 0:
            return ids, candidate
    bare = grounding.first(0)
    return tokenize(bare.messages), bare


class Augmenter:
    """Prepares a chat's messages: retrieval when configured, and the system prompt."""

    def __init__(self, config: ServeConfig, knowledge: KnowledgeBase | None) -> None:
        self.config = config
        self.knowledge = knowledge

    async def prepare(self, messages: list[Message]) -> Grounding:
        """Raises KnowledgeUnavailable when retrieval is configured but cannot answer."""
        system, template = self.config.system_prompt, self.config.context_template
        if self.knowledge is None:
            return Grounding(messages, [], system, template, cite=False, used=0)
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        hits = await self.knowledge.search(question) if question.strip() else []
        cite = self.knowledge.config.citations
        return Grounding(messages, hits, system, template, cite=cite, used=len(hits))
