"""The retrieval evaluation set is well formed, and the benchmark's metrics count right.

The set lives in benchmarks/retrieval_eval: a recipe extracting Debian's own documentation
at run time, and questions written here. Every answer must be found verbatim in its
document's extracted text, and no question may copy its passage.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from retrieval_eval.corpus import BY_NAME, DOCUMENTS, CorpusMissing, Document, extract  # noqa: E402
from retrieval_eval.metrics import (  # noqa: E402
    COPY_WORDS,
    Question,
    Retrieved,
    copied_run,
    first_grounded,
    load_questions,
    normalise,
    score,
)


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return {d.name: extract(d) for d in DOCUMENTS}


def test_the_set_has_enough_questions_over_enough_documents() -> None:
    questions = load_questions()
    assert len(questions) >= 40
    assert len(DOCUMENTS) >= 30
    assert len({q.doc for q in questions}) >= 30, "questions must spread over 30 documents"
    assert not [q.doc for q in questions if q.doc not in BY_NAME]
    duplicates = [q for q, n in Counter(q.question for q in questions).items() if n > 1]
    assert not duplicates
    assert len(BY_NAME) == len(DOCUMENTS), "document names must be unique"


def test_every_answer_is_verbatim_in_its_document(texts: dict[str, str]) -> None:
    missing = [
        (q.doc, q.answer)
        for q in load_questions()
        if normalise(q.answer) not in normalise(texts[q.doc])
    ]
    assert not missing


def test_no_question_copies_its_document(texts: dict[str, str]) -> None:
    copies = [
        (q.doc, run)
        for q in load_questions()
        if (run := copied_run(q.question, texts[q.doc])) is not None
    ]
    assert not copies, f"questions sharing {COPY_WORDS} consecutive words with their document"


def test_no_question_gives_its_answer_away() -> None:
    given = [q for q in load_questions() if normalise(q.answer).lower() in q.question.lower()]
    assert not given


def test_extraction_is_plain_text_and_stable(texts: dict[str, str]) -> None:
    tar = texts["tar.1"]
    assert "--strip-components" in tar
    assert "\x08" not in tar, "overstrike formatting left in a rendered manual page"
    assert tar == extract(BY_NAME["tar.1"])


def test_a_missing_document_is_named(tmp_path: Path) -> None:
    absent = Document("nothing.1", tmp_path / "man1" / "nothing.1.gz", "man", "nopackage")
    with pytest.raises(CorpusMissing, match=r"nothing\.1\.gz.*nopackage"):
        extract(absent)


# -- the metric code on a tiny hand-made corpus ------------------------------------------------

Q_RED = Question("colours", "Which colour is the barn?", "barn is red")
Q_TAIL = Question("dogs", "How long is the dog's tail?", "tail is short")


def test_scores_count_document_hits_grounding_and_rank() -> None:
    rankings = [
        # the answer at rank 1
        [Retrieved("colours", "The barn is\n red."), Retrieved("dogs", "x")],
        # right document first but without the answer; the answer at rank 3
        [
            Retrieved("dogs", "The dog is brown."),
            Retrieved("colours", "tail is short"),  # the answer, but the wrong document
            Retrieved("dogs", "Its tail is short."),
        ],
    ]
    scores = score([Q_RED, Q_TAIL], rankings)
    assert scores.questions == 2
    assert scores.doc_hit_1 == 1.0
    assert scores.grounded_1 == 0.5
    assert scores.grounded_4 == scores.grounded_5 == 1.0
    assert scores.mrr == pytest.approx((1 + 1 / 3) / 2)


def test_an_answer_past_rank_five_counts_only_in_mrr() -> None:
    ranking = [Retrieved("other", "filler")] * 5 + [Retrieved("dogs", "tail is short")]
    assert first_grounded(Q_TAIL, ranking) == 6
    scores = score([Q_TAIL], [ranking])
    assert (scores.doc_hit_1, scores.grounded_1, scores.grounded_5) == (0.0, 0.0, 0.0)
    assert scores.mrr == pytest.approx(1 / 6)


def test_nothing_found_scores_zero_and_mismatched_inputs_fail() -> None:
    scores = score([Q_RED], [[]])
    assert (scores.doc_hit_1, scores.grounded_1, scores.mrr) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        score([Q_RED, Q_TAIL], [[]])


def test_copied_run_finds_eight_shared_words_only() -> None:
    passage = "The quick brown fox jumps over the lazy dog near the river bank."
    assert copied_run("Why does the quick brown fox jump over the lazy dog?", passage) is None
    assert (
        copied_run("Did the quick brown fox jumps over the lazy dog today?", passage)
        == "the quick brown fox jumps over the lazy"
    )


def test_naive_windows_and_exact_search_rank_by_cosine() -> None:
    bench = pytest.importorskip("bench_retrieval")
    assert bench.word_windows("a b c d e", 2, 0) == ["a b", "c d", "e"]
    assert bench.word_windows("a b c d e", 3, 1) == ["a b c", "c d e"]

    class Letters:
        """Vectors of letter counts: a deterministic stand-in for the model in this logic."""

        dimension = 26

        def embed(self, texts: list[str]) -> np.ndarray:
            rows = np.zeros((len(texts), 26), dtype=np.float32)
            for i, text in enumerate(texts):
                for ch in text.lower():
                    if "a" <= ch <= "z":
                        rows[i, ord(ch) - 97] += 1
            return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)

    passages = [("colours", "barn is red", "rrrr"), ("dogs", "tail is short", "ssss")]
    rankings = bench.exact_search(Letters(), [Q_TAIL, Q_RED], passages)
    # "How long is the dog's tail?" holds s but no r: the dogs passage ranks first.
    assert [r.doc for r in rankings[0]] == ["dogs", "colours"]
    assert [r.text for r in rankings[0]] == ["tail is short", "barn is red"]
