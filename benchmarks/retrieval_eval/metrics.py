"""The evaluation set's questions and the retrieval metrics (pure logic, no model).

A result is grounded when it comes from the question's document and holds the answer
string (whitespace collapsed on both sides: the same words wrapped differently still count).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

QUESTIONS = Path(__file__).resolve().parent / "questions.json"
# A question copies its passage when it shares this many consecutive words with it.
COPY_WORDS = 8


@dataclass(frozen=True)
class Question:
    doc: str
    """`Document.name` of the one document that answers it."""
    question: str
    answer: str
    """A string that appears verbatim in the document's extracted text."""


@dataclass(frozen=True)
class Retrieved:
    """One ranked result as a reader gets it: its document and the text handed over."""

    doc: str
    text: str


@dataclass(frozen=True)
class Scores:
    questions: int
    doc_hit_1: float
    """The top result comes from the right document."""
    grounded_1: float
    """The top result is from the right document and holds the answer."""
    grounded_4: float
    """A grounded result in the top 4 (the inference server's default `top_k`)."""
    grounded_5: float
    mrr: float
    """Mean reciprocal rank of the first grounded result (0 when none in the list)."""


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    return [Question(**item) for item in json.loads(path.read_text())]


def normalise(text: str) -> str:
    return " ".join(text.split())


def is_grounded(question: Question, result: Retrieved) -> bool:
    return result.doc == question.doc and normalise(question.answer) in normalise(result.text)


def first_grounded(question: Question, ranked: Sequence[Retrieved]) -> int | None:
    """1-based rank of the first grounded result, None when there is none."""
    for rank, result in enumerate(ranked, start=1):
        if is_grounded(question, result):
            return rank
    return None


def score(questions: Sequence[Question], rankings: Sequence[Sequence[Retrieved]]) -> Scores:
    """Scores of one system: `rankings[i]` is its ranked list for `questions[i]`."""
    if len(questions) != len(rankings):
        raise ValueError(f"{len(questions)} questions but {len(rankings)} rankings")
    if not questions:
        raise ValueError("no questions")
    n = len(questions)
    doc_hits = grounded_1 = grounded_4 = grounded_5 = 0
    reciprocal = 0.0
    for question, ranked in zip(questions, rankings, strict=True):
        if ranked and ranked[0].doc == question.doc:
            doc_hits += 1
        rank = first_grounded(question, ranked)
        if rank is not None:
            grounded_1 += rank == 1
            grounded_4 += rank <= 4
            grounded_5 += rank <= 5
            reciprocal += 1.0 / rank
    return Scores(
        questions=n,
        doc_hit_1=doc_hits / n,
        grounded_1=grounded_1 / n,
        grounded_4=grounded_4 / n,
        grounded_5=grounded_5 / n,
        mrr=reciprocal / n,
    )


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def copied_run(question: str, passage: str, n: int = COPY_WORDS) -> str | None:
    """The first run of `n` consecutive words the question shares with the passage, if any."""
    passage_grams = set(_grams(words(passage), n))
    for gram in _grams(words(question), n):
        if gram in passage_grams:
            return " ".join(gram)
    return None


def _grams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
