"""Retrieval quality of a KnowledgeBase, measured on documents no one here wrote.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_retrieval.py

The evaluation set (`retrieval_eval/`): 38 of Debian's own documents (manual pages of
coreutils, git, apt, tar, grep, sed, make...; READMEs and FAQs from /usr/share/doc),
extracted at run time by the recipe in `retrieval_eval/corpus.py`, and 70 questions written
here that paraphrase one passage each and name the answer string found verbatim in it.

Side by side in one run, for every system: document hit@1 (the top result comes from the
right document), grounded@1 / @4 / @5 (a result among the first 1 / 4 / 5 is from the right
document and holds the answer string; 4 is the inference server's default `top_k`) and the
MRR of the first grounded result in the top 10.

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
from phiops_embed.chunking import HEADING_SEPARATOR, Chunk, Chunker, Section, split_sections
from phiops_embed.embedder import SentenceTransformerEmbedder
from phiops_embed.formats import detect_format, extract
from phiops_embed.retrieval import Hit, Retriever
from phiops_embed.store import drop_family
from phiops_embed.sync import run_sync
from phiops_workload.contracts import ResourceIdentity
from phiops_workload.knowledge import (
    FIELD_CHUNK_INDEX,
    FIELD_DOC_ID,
    FIELD_TEXT,
    ChunkingConfig,
    EmbeddingConfig,
    EmbedJobConfig,
    SourceConfig,
    StoreConfig,
    physical_collection,
    settings_fingerprint,
)
from retrieval_eval.corpus import DOCUMENTS, Document, materialise
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


# -- the product's own path: run_sync into milvus-lite, Retriever.search --------------------


def job(uri: str, docs: Path, alias: str, chunking: ChunkingConfig, hybrid: bool) -> EmbedJobConfig:
    embedding = EmbeddingConfig()
    store = StoreConfig(uri=uri, alias=alias, collection="x", hybrid=hybrid)
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


def neighbours(retriever: Retriever, hit: Hit, reach: int) -> str:
    """The hit's text with up to `reach` chunks either side of it (small-to-big)."""
    low, high = hit.chunk_index - reach, hit.chunk_index + reach
    doc = hit.doc_id.replace("\\", "\\\\").replace('"', '\\"')
    rows = retriever.client.query(
        retriever.alias,
        filter=f'{FIELD_DOC_ID} == "{doc}" and {FIELD_CHUNK_INDEX} >= {low} '
        f"and {FIELD_CHUNK_INDEX} <= {high}",
        output_fields=[FIELD_CHUNK_INDEX, FIELD_TEXT],
    )
    rows = sorted(rows, key=lambda r: int(r[FIELD_CHUNK_INDEX]))
    return "\n".join(str(r[FIELD_TEXT]) for r in rows) or hit.text


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
    config = job(uri, docs, alias, chunking, hybrid)
    report = run_sync(config, embedder, progress_interval=3600)
    if report.figures.documents.failed:
        raise RuntimeError(f"sync failed for {report.figures.documents.failed_names}")
    retriever = Retriever(uri, alias, embedder=embedder)  # type: ignore[arg-type]
    rankings: list[list[Retrieved]] = []
    try:
        for question in questions:
            hits = retriever.search(question.question, top_k=TOP_K, hybrid=hybrid)
            rankings.append(
                [
                    Retrieved(
                        names[hit.doc_id],
                        neighbours(retriever, hit, reach) if reach else hit.text,
                    )
                    for hit in hits
                ]
            )
    finally:
        retriever.close()
    return report.figures.chunks, rankings


# -- in this process: the real Chunker (or fixed word windows) and exact cosine search ------


def chunk_document(chunker: Chunker, document: Document, data: bytes, prefix: bool) -> list[Chunk]:
    """The sync's extraction and chunking; with `prefix`, the document's path leads every
    chunk's heading path (so the model reads it with every chunk)."""
    text = extract(data, detect_format(document.file_name, None, data))
    if not prefix:
        return chunker.chunk(text.text, text.structured)
    if chunker.strategy == "markdown" and text.structured:
        sections = split_sections(text.text)
    else:
        sections = [Section("", text.text)]
    chunks: list[Chunk] = []
    for section in sections:
        heading = HEADING_SEPARATOR.join(p for p in (document.file_name, section.heading) if p)
        chunks.extend(chunker._chunk_section(Section(heading, section.text)))
    return chunks


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


def in_process(
    docs: Path,
    documents: Sequence[Document],
    embedder: CachedEmbedder,
    questions: Sequence[Question],
    chunking: ChunkingConfig,
    prefix: bool,
    reach: int = 0,
) -> tuple[int, list[list[Retrieved]]]:
    """With `reach`, each hit is handed over with up to `reach` chunks either side of it."""
    chunker = Chunker(chunking, embedder.tokenizer, embedder.max_tokens)
    passages = []
    for d in documents:
        chunks = chunk_document(chunker, d, (docs / d.file_name).read_bytes(), prefix)
        for i, chunk in enumerate(chunks):
            around = chunks[max(0, i - reach) : i + reach + 1]
            passages.append((d.name, "\n".join(c.text for c in around), chunk.embed_text))
    return len(passages), exact_search(embedder, questions, passages)


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
        f"{'system':<44} {'search':<16} {'chunks':>6} {'doc@1':>7} {'grd@1':>7} "
        f"{'grd@4':>7} {'grd@5':>7} {'MRR':>6} {'@5 vs (a)':>9}"
    )
    print(header)
    print("-" * len(header))
    reference = results[0].ranks
    for r in results:
        s = r.scores
        print(
            f"{r.label:<44} {r.how:<16} {r.chunks:>6} {pct(s.doc_hit_1):>7} "
            f"{pct(s.grounded_1):>7} {pct(s.grounded_4):>7} {pct(s.grounded_5):>7} "
            f"{s.mrr:6.3f} {paired(r.ranks, reference):>9}"
        )
    print(
        "@5 vs (a): questions grounded in the top 5 here but not by (a), and the reverse "
        f"(one question is {100 / questions:.1f} points)"
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
        "--precision", choices=["float32", "bfloat16"], default="float32", help="embedding"
    )
    parser.add_argument("--naive-words", type=int, default=180)
    parser.add_argument("--naive-overlap", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="6 documents, their questions: a smoke test"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
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
        wide = ChunkingConfig(size=250, overlap=50)
        small = ChunkingConfig(size=128, overlap=24)
        product = "sync+Retriever"
        exact = "exact numpy"

        def real(alias: str, chunking: ChunkingConfig, hybrid: bool = False, reach: int = 0):
            return lambda: product_path(
                uri, docs, embedder, questions, names, alias, chunking, hybrid, reach
            )

        def local(chunking: ChunkingConfig, prefix: bool, reach: int = 0):
            return lambda: in_process(docs, documents, embedder, questions, chunking, prefix, reach)

        systems: list[tuple[str, str, Callable[[], tuple[int, list[list[Retrieved]]]]]] = [
            ("(a) kb defaults: markdown 200/32, dense", product, real("kb_defaults", defaults)),
            (
                f"(b) naive: {args.naive_words}-word windows, overlap {args.naive_overlap}",
                exact,
                lambda: naive(texts, embedder, questions, args.naive_words, args.naive_overlap),
            ),
            ("(a') kb defaults, exact search", exact, local(defaults, False)),
            ("chunks 250/50", product, real("kb_250", wide)),
            ("chunks 128/24", product, real("kb_128", small)),
            ("path in embedded text, 200/32", exact, local(defaults, True)),
            ("path in embedded text, 250/50", exact, local(wide, True)),
            ("hybrid dense+BM25 (RRF), 200/32", product, real("kb_hybrid", defaults, True)),
            ("hybrid dense+BM25 (RRF), 250/50", product, real("kb_hybrid_250", wide, True)),
            (
                "small-to-big: hit +-1 chunk, 200/32",
                product,
                real("kb_defaults", defaults, reach=1),
            ),
            ("small-to-big + hybrid, 200/32", product, real("kb_hybrid", defaults, True, 1)),
            ("small-to-big + hybrid, 250/50", product, real("kb_hybrid_250", wide, True, 1)),
            ("path + small-to-big, 200/32", exact, local(defaults, True, 1)),
            ("small-to-big, exact search, 200/32", exact, local(defaults, False, 1)),
        ]
        print(
            f"model: all-MiniLM-L6-v2 {args.precision} on cpu (loaded in {load_seconds:.1f} s); "
            f"store: milvus-lite server ({uri}) started as the store pod starts it"
        )
        results: list[Result] = []
        for label, how, run in systems:
            began = time.perf_counter()
            chunks, rankings = run()
            seconds = time.perf_counter() - began
            ranks = [first_grounded(q, r) for q, r in zip(questions, rankings, strict=True)]
            results.append(Result(label, how, chunks, score(questions, rankings), seconds, ranks))
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
    for alias in ("kb_defaults", "kb_250", "kb_128", "kb_hybrid", "kb_hybrid_250"):
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
