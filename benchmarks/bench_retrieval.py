"""Retrieval quality of a KnowledgeBase, measured on documents no one here wrote.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_retrieval.py

The evaluation set (`retrieval_eval/`): 38 of Debian's own documents (manual pages of
coreutils, git, apt, tar, grep, sed, make...; READMEs and FAQs from /usr/share/doc),
extracted at run time by the recipe in `retrieval_eval/corpus.py`, and 70 questions written
here that paraphrase one passage each and name the answer string found verbatim in it.

Side by side in one run, for every system: document hit@1 (the top result comes from the
right document), grounded@1 / @4 / @5 (a result among the first 1 / 4 / 5 is from the right
document and holds the answer string; 4 is the inference server's default `top_k`) and the
MRR of the first grounded result in the top 10, and what the model reads: the mean and
largest token count of the first 4 results (`ctx@4`, `max`), neighbours included.

- `kb defaults` runs the product's own code: the KnowledgeBase's default settings
  (`ChunkingConfig()`, `StoreConfig()`, the bundled all-MiniLM-L6-v2 in float32) through
  `run_sync` into a milvus-lite server started as the embedded store pod starts it, and the
  inference server's search (`phiops_embed.retrieval.Retriever.search`, by the alias).
- `naive` is the cookbook pipeline: fixed windows of 180 words, the same model, exact cosine
  search with numpy.
- Options through the same product code: other chunk sizes/overlaps, hybrid dense + BM25
  with reciprocal-rank fusion (`StoreConfig.hybrid`, `search(hybrid=True)`), small-to-big
  (each hit handed over with its neighbouring chunks, read from the store).
- Options the product does not have yet run in this process: the real `Chunker` with the
  document's path as the first part of every chunk's heading path (so the model reads it),
  exact cosine search. `kb defaults, exact` runs the defaults the same way, to show what the
  in-process search changes by itself (nothing, when its row equals `kb defaults`).

Embeddings are cached by text for the run: systems that embed the same chunk share the work.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from bench_embed import start_store
from phiops_embed.embedder import SentenceTransformerEmbedder
from phiops_embed.retrieval import Retriever
from phiops_embed.store import drop_family
from phiops_embed.sync import run_sync
from phiops_workload.contracts import ResourceIdentity
from phiops_workload.knowledge import (
    ChunkingConfig,
    EmbeddingConfig,
    EmbedJobConfig,
    SourceConfig,
    StoreConfig,
    physical_collection,
    settings_fingerprint,
)
from phiops_workload.serving import RetrievalConfig
from retrieval_eval.corpus import DOCUMENTS, materialise
from retrieval_eval.metrics import (
    Question,
    Retrieved,
    Scores,
    first_grounded,
    load_questions,
    score,
)

if TYPE_CHECKING:
    import numpy.typing as npt

SOURCE = "docs"
TOP_K = 10


class CachedEmbedder:
    """The real embedder, remembering each text's vector for the run (same text, same
    vector: systems sharing chunks or questions embed them once)."""

    def __init__(self, inner: SentenceTransformerEmbedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimension = inner.dimension
        self.max_tokens = inner.max_tokens
        self.tokenizer = inner.tokenizer
        self.accelerated = inner.accelerated
        self.cache: dict[str, npt.NDArray[np.float32]] = {}
        self.seconds = 0.0
        self.embedded = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            began = time.perf_counter()
            vectors = self.inner.embed(missing)
            self.seconds += time.perf_counter() - began
            self.embedded += len(missing)
            self.cache.update(zip(missing, vectors, strict=True))
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self.cache[t] for t in texts])


@dataclass
class Result:
    label: str
    how: str
    chunks: int
    scores: Scores
    seconds: float
    ranks: list[int | None]
    """Per question, the rank of the first grounded result (None: not in the top 10)."""
    context: tuple[float, int]
    """Mean and most tokens of the results the inference server hands the model by default
    (its `top_k`), counted by the embedding model's tokenizer."""


# -- the product's own path: run_sync into milvus-lite, Retriever.search --------------------


def job(uri: str, docs: Path, alias: str, chunking: ChunkingConfig, hybrid: bool) -> EmbedJobConfig:
    embedding = EmbeddingConfig()
    # FLAT: the index the operator gives a KnowledgeBase on the embedded store.
    store = StoreConfig(uri=uri, alias=alias, collection="x", index_type="FLAT", hybrid=hybrid)
    collection = physical_collection(alias, settings_fingerprint(chunking, embedding, store))
    return EmbedJobConfig(
        resource=ResourceIdentity.model_validate(
            {
                "apiVersion": "phiops.dev/v1alpha1",
                "kind": "KnowledgeBase",
                "namespace": "eval",
                "name": alias,
                "uid": "0",
            }
        ),
        sync_id="eval",
        sources=[SourceConfig(name=SOURCE, kind="persistentVolumeClaim", local_path=str(docs))],
        chunking=chunking,
        embedding=embedding,
        store=store.model_copy(update={"collection": collection}),
    )


def product_path(
    uri: str,
    docs: Path,
    embedder: CachedEmbedder,
    questions: Sequence[Question],
    names: dict[str, str],
    alias: str,
    chunking: ChunkingConfig,
    hybrid: bool = False,
    reach: int = 0,
) -> tuple[int, list[list[Retrieved]]]:
    """Sync once per alias (a later system reading the same alias reuses it)."""
    if alias not in SYNCED:
        # Every collection has full text: a dense search of it reads the same vectors.
        config = job(uri, docs, alias, chunking, hybrid=True)
        report = run_sync(config, embedder, progress_interval=3600)
        if report.figures.documents.failed:
            raise RuntimeError(f"sync failed for {report.figures.documents.failed_names}")
        SYNCED[alias] = report.figures.chunks
    retriever = Retriever(uri, alias, embedder=embedder)  # type: ignore[arg-type]
    rankings: list[list[Retrieved]] = []
    try:
        for question in questions:
            hits = retriever.search(question.question, top_k=TOP_K, hybrid=hybrid, neighbors=reach)
            rankings.append([Retrieved(names[hit.doc_id], hit.text) for hit in hits])
    finally:
        retriever.close()
    return SYNCED[alias], rankings


SYNCED: dict[str, int] = {}


# -- the naive baseline: fixed word windows, exact cosine search in numpy -----------------


def word_windows(text: str, size: int, overlap: int) -> list[str]:
    words = text.split()
    step = max(1, size - overlap)
    return [" ".join(words[i : i + size]) for i in range(0, max(1, len(words) - overlap), step)]


def exact_search(
    embedder: CachedEmbedder,
    questions: Sequence[Question],
    passages: Sequence[tuple[str, str, str]],
) -> list[list[Retrieved]]:
    """`passages`: (document, text handed over, text embedded). Exact cosine, top 10."""
    matrix = embedder.embed([p[2] for p in passages])
    queries = embedder.embed([q.question for q in questions])
    similarity = queries @ matrix.T
    rankings = []
    for row in similarity:
        best = np.argsort(-row, kind="stable")[:TOP_K]
        rankings.append([Retrieved(passages[i][0], passages[i][1]) for i in best])
    return rankings


def naive(
    texts: dict[str, str],
    embedder: CachedEmbedder,
    questions: Sequence[Question],
    size: int,
    overlap: int,
) -> tuple[int, list[list[Retrieved]]]:
    passages = [
        (name, window, window)
        for name, text in texts.items()
        for window in word_windows(text, size, overlap)
    ]
    return len(passages), exact_search(embedder, questions, passages)


# -- the run -----------------------------------------------------------------------------------


def pct(value: float) -> str:
    return f"{100 * value:5.1f}%"


def print_table(results: Sequence[Result], questions: int, documents: int) -> None:
    print(f"\n{questions} questions over {documents} documents; top {TOP_K} retrieved per question")
    header = (
        f"{'system':<50} {'search':<14} {'chunks':>6} {'doc@1':>7} {'grd@1':>7} "
        f"{'grd@3':>7} {'grd@4':>7} {'grd@5':>7} {'MRR':>6} {'@5 vs (a)':>9} "
        f"{'ctx@4':>6} {'max':>5}"
    )
    print(header)
    print("-" * len(header))
    reference = results[0].ranks
    for r in results:
        s = r.scores
        grounded_3 = sum(rank is not None and rank <= 3 for rank in r.ranks) / len(r.ranks)
        print(
            f"{r.label:<50} {r.how:<14} {r.chunks:>6} {pct(s.doc_hit_1):>7} "
            f"{pct(s.grounded_1):>7} {pct(grounded_3):>7} {pct(s.grounded_4):>7} "
            f"{pct(s.grounded_5):>7} "
            f"{s.mrr:6.3f} {paired(r.ranks, reference):>9} {r.context[0]:6.0f} {r.context[1]:5d}"
        )
    print(
        "@5 vs (a): questions grounded in the top 5 here but not by (a), and the reverse "
        f"(one question is {100 / questions:.1f} points)\n"
        "ctx@4, max: mean and most tokens (MiniLM's tokenizer) of the first 4 results, what the "
        "model reads at the server's default top_k"
    )


def paired(ranks: Sequence[int | None], reference: Sequence[int | None], k: int = 5) -> str:
    def hit(rank: int | None) -> bool:
        return rank is not None and rank <= k

    won = sum(hit(a) and not hit(b) for a, b in zip(ranks, reference, strict=True))
    lost = sum(hit(b) and not hit(a) for a, b in zip(ranks, reference, strict=True))
    return f"+{won}/-{lost}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default=EmbeddingConfig().precision,
        help="embedding (default: the KnowledgeBase's)",
    )
    parser.add_argument("--naive-words", type=int, default=180)
    parser.add_argument("--naive-overlap", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="6 documents, their questions: a smoke test"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--misses", action="store_true", help="print the questions (a) misses in its top 5"
    )
    parser.add_argument(
        "--only", nargs="*", default=[], help="run (a), (b) and the systems whose label holds one"
    )
    args = parser.parse_args()
    # pymilvus warns on every scan that milvus-lite has no MVCC timestamp: harmless here.
    # (Its logging set-up runs on import and would reset the level: import it first.)
    import pymilvus  # noqa: F401

    logging.getLogger("pymilvus").setLevel(logging.ERROR)

    questions = load_questions()
    documents = list(DOCUMENTS)
    if args.quick:
        documents = documents[:6]
        kept = {d.name for d in documents}
        questions = [q for q in questions if q.doc in kept]

    work = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    docs = work / "docs"
    process: subprocess.Popen[bytes] | None = None
    try:
        texts = materialise(docs, documents)
        names = {f"{SOURCE}/{d.file_name}": d.name for d in documents}
        process, uri = start_store(work / "milvus")
        began = time.perf_counter()
        embedder = CachedEmbedder(
            SentenceTransformerEmbedder(batch_size=args.batch_size, precision=args.precision)
        )
        load_seconds = time.perf_counter() - began
        defaults = ChunkingConfig()
        serving = RetrievalConfig(uri=uri, collection="x")
        # Each row below changes one setting from 200/32 chunks with the path and the lead
        # (the defaults before 250/50); the older rows go without the document's lead, to show
        # what each setting added before it.
        lead_200 = defaults.model_copy(update={"size": 200, "overlap": 32})
        no_lead = lead_200.model_copy(update={"lead_tokens": 0})
        bare = no_lead.model_copy(update={"include_path": False})
        wide = no_lead.model_copy(update={"size": 250, "overlap": 50})
        small = no_lead.model_copy(update={"size": 128, "overlap": 24})
        long_lead = lead_200.model_copy(update={"lead_tokens": 2 * lead_200.lead_tokens})
        store_hybrid = StoreConfig(uri=uri, alias="x", collection="x").hybrid
        product = "sync+Retriever"

        def real(alias: str, chunking: ChunkingConfig, hybrid: bool = False, reach: int = 0):
            return lambda: product_path(
                uri, docs, embedder, questions, names, alias, chunking, hybrid, reach
            )

        size = f"{defaults.size}/{defaults.overlap}"
        default_label = (
            f"(a) kb defaults: {defaults.strategy} {size}, "
            f"{'path, ' if defaults.include_path else ''}"
            f"{f'lead {defaults.lead_tokens}, ' if defaults.lead_tokens else ''}"
            f"{'hybrid' if store_hybrid and serving.hybrid else 'dense'}, "
            f"+-{serving.neighbors} chunk"
        )
        systems: list[tuple[str, str, Callable[[], tuple[int, list[list[Retrieved]]]]]] = [
            (
                default_label,
                product,
                real("kb_lead", defaults, store_hybrid and serving.hybrid, serving.neighbors),
            ),
            (
                f"(b) naive: {args.naive_words}-word windows, overlap {args.naive_overlap}",
                "exact numpy",
                lambda: naive(texts, embedder, questions, args.naive_words, args.naive_overlap),
            ),
            ("old defaults: 200/32, no path, dense", product, real("kb_bare_hybrid", bare)),
            ("hybrid dense+BM25 (RRF), 200/32", product, real("kb_bare_hybrid", bare, True)),
            ("small-to-big + hybrid, 200/32", product, real("kb_bare_hybrid", bare, True, 1)),
            ("path, dense, 200/32", product, real("kb_path_hybrid", no_lead)),
            ("path + hybrid, 200/32", product, real("kb_path_hybrid", no_lead, True)),
            (
                "path + small-to-big, dense, 200/32",
                product,
                real("kb_path_hybrid", no_lead, False, 1),
            ),
            (
                "path + small-to-big + hybrid, 200/32",
                product,
                real("kb_path_hybrid", no_lead, True, 1),
            ),
            ("path + hybrid, 250/50", product, real("kb_path_250", wide, True)),
            ("path + small-to-big + hybrid, 250/50", product, real("kb_path_250", wide, True, 1)),
            ("path + small-to-big + hybrid, 128/24", product, real("kb_path_128", small, True, 1)),
            ("path + lead, dense, 200/32", product, real("kb_lead_200", lead_200)),
            ("path + lead + hybrid, 200/32", product, real("kb_lead_200", lead_200, True)),
            (
                f"path + lead {long_lead.lead_tokens} + small-to-big + hybrid, 200/32",
                product,
                real("kb_lead_long", long_lead, True, 1),
            ),
            (
                "path + lead + small-to-big + hybrid, 200/32",
                product,
                real("kb_lead_200", lead_200, True, 1),
            ),
        ]
        if args.only:
            systems = systems[:2] + [s for s in systems[2:] if any(o in s[0] for o in args.only)]
        print(
            f"model: all-MiniLM-L6-v2 {args.precision} on cpu (loaded in {load_seconds:.1f} s); "
            f"store: milvus-lite server ({uri}) started as the store pod starts it"
        )
        results: list[Result] = []
        for label, how, run in systems:
            began = time.perf_counter()
            chunks, rankings = run()
            seconds = time.perf_counter() - began
            if args.misses and label.startswith("(a)"):
                print_misses(questions, rankings)
            ranks = [first_grounded(q, r) for q, r in zip(questions, rankings, strict=True)]
            context = handed_over(embedder, rankings, serving.top_k)
            scores = score(questions, rankings)
            results.append(Result(label, how, chunks, scores, seconds, ranks, context))
            print(f"  {label}: {chunks} chunks, {seconds:.1f} s", flush=True)
        print(
            f"embedded {embedder.embedded} distinct texts in {embedder.seconds:.1f} s "
            f"({embedder.embedded / max(embedder.seconds, 1e-9):.1f}/s)"
        )
        print_table(results, len(questions), len(documents))
        summarise(results)
        client_close(uri)
    finally:
        if process is not None:
            stop(process)
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def handed_over(
    embedder: CachedEmbedder, rankings: Sequence[Sequence[Retrieved]], top_k: int
) -> tuple[float, int]:
    """Mean and most tokens of each question's first `top_k` results."""
    count = embedder.tokenizer.count
    totals = [sum(count(hit.text) for hit in ranked[:top_k]) for ranked in rankings]
    return sum(totals) / max(len(totals), 1), max(totals, default=0)


def print_misses(questions: Sequence[Question], rankings: Sequence[Sequence[Retrieved]]) -> None:
    """Each question (a) does not ground in its top 5: what it got instead."""
    for question, ranked in zip(questions, rankings, strict=True):
        rank = first_grounded(question, ranked)
        if rank is not None and rank <= 5:
            continue
        print(
            f"  MISS ({rank or '-'}) {question.doc}: {question.question!r} -> {question.answer!r}"
        )
        for i, hit in enumerate(ranked[:5], start=1):
            own = "same doc" if hit.doc == question.doc else hit.doc
            print(f"      {i}. {own}: {' '.join(hit.text.split())[:110]!r}")


def summarise(results: Sequence[Result]) -> None:
    by_label = {r.label.split(":")[0]: r for r in results}
    kb, base = by_label["(a) kb defaults"].scores, by_label["(b) naive"].scores
    ratio_1 = kb.grounded_1 / max(base.grounded_1, 1e-9)
    ratio_5 = kb.grounded_5 / max(base.grounded_5, 1e-9)
    print()
    print(f"RATIO grounded@1 kb defaults / naive   {ratio_1:6.3f}")
    print(f"RATIO grounded@5 kb defaults / naive   {ratio_5:6.3f}")
    best = max(results, key=lambda r: (r.scores.grounded_1, r.scores.mrr))
    points = 100 * (kb.grounded_1 - base.grounded_1)
    print("\nsummary")
    print(
        f"  grounded@1, kb defaults - naive >= +10 points     {points:+6.1f} points  "
        f"{'met' if points >= 10 else 'MISSED'}"
    )
    print(
        f"  grounded@5, kb defaults >= 95%                    {pct(kb.grounded_5)}        "
        f"{'met' if kb.grounded_5 >= 0.95 else 'MISSED'}"
    )
    print(
        f"  best grounded@1: {best.label} ({pct(best.scores.grounded_1)}, "
        f"grounded@5 {pct(best.scores.grounded_5)}, MRR {best.scores.mrr:.3f})"
    )


def client_close(uri: str) -> None:
    from phiops_embed.store import connect

    client = connect(uri)
    for alias in SYNCED:
        drop_family(client, alias)
    client.close()


def stop(process: subprocess.Popen[Any]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    main()
