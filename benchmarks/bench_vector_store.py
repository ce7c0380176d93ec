"""Vector search at knowledge-base scale: a real Milvus server vs the embedded milvus-lite
store vs an exact numpy scan, over the same real MiniLM embeddings, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_vector_store.py [--rows 100000]

Corpus: sentences of real text written by others, read from Debian's documentation
(/usr/share/doc: changelogs, READMEs, copyright notes), embedded with all-MiniLM-L6-v2 (384-d,
the embedder's `auto` precision; the comparison is between stores on the same vectors).
Queries: held-out sentences from the same text, never inserted. Embeddings are
cached outside the checkout, so a rerun measures the stores only.

Reports, one query at a time, top-10:
1. the real Milvus server (PyPI `milvus` 2.3.5) with the collection as phiops makes it
   (AUTOINDEX, COSINE), searched without parameters (the server's own breadth) and at each
   `--ef` (the retriever sends 64 unless told), and with HNSW M 16 efConstruction 200 at the
   same `ef`s: p50/p99 latency and recall@10 against the exact scan;
2. milvus-lite (the embedded store, `phiops_embed serve-store`) at growing row counts, with
   the index phiops gives it (FLAT: exact) and with its own AUTOINDEX (faiss HNSW): how p50/p99
   grow, which sets the KnowledgeBase's StoreSizeWarning limit, and what HNSW's recall is;
3. the exact scan (numpy, float32 matrix-vector product) as the yardstick.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from bench_embed import pct, start_store
from phiops_devcluster.milvus_server import MilvusServer, wait_indexed
from phiops_embed.embedder import SentenceTransformerEmbedder
from phiops_embed.store import connect

DOC_ROOT = Path("/usr/share/doc")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phiops" / "bench"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
TOP_K = 10
SLICE = 10_000
# The embedded store's index as phiops makes it (AUTOINDEX there means FLAT, an exact scan)
# beside milvus-lite's own AUTOINDEX (faiss HNSW).
LITE_INDEXES = {"FLAT": "FLAT (phiops default)", "AUTOINDEX": "AUTOINDEX (HNSW)"}


def documents() -> Iterator[str]:
    for path in sorted(DOC_ROOT.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        if b"\0" in raw[:4096]:
            continue  # binary
        yield raw.decode("utf-8", errors="ignore")


def sentences(limit: int) -> list[str]:
    """Distinct sentences of 6-60 words, in a fixed order."""
    seen: set[str] = set()
    found: list[str] = []
    for text in documents():
        for part in SENTENCE_END.split(" ".join(text.split())):
            words = part.split()
            if 6 <= len(words) <= 60 and part not in seen:
                seen.add(part)
                found.append(part)
                if len(found) >= limit:
                    return found
    return found


def corpus(rows: int, queries: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(row vectors, query vectors, distinct sentences found), normalised, cached."""
    texts = sentences(rows + queries)
    if len(texts) < rows + queries:
        raise SystemExit(f"only {len(texts)} sentences under {DOC_ROOT}; ask for fewer rows")
    random.Random(7).shuffle(texts)
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cached = CACHE / f"vector-store-{key}.npy"
    if cached.exists():
        vectors = np.load(cached)
    else:
        # Slice by slice, each cached: 100k sentences take over 10 minutes on 2 cores, and an
        # interrupted run resumes where it stopped.
        embedder = SentenceTransformerEmbedder(batch_size=128, precision="auto")
        CACHE.mkdir(parents=True, exist_ok=True)
        parts = []
        began = time.perf_counter()
        for start in range(0, len(texts), SLICE):
            part = CACHE / f"vector-store-{key}-{start}.npy"
            if not part.exists():
                np.save(part, np.asarray(embedder.embed(texts[start : start + SLICE]), np.float32))
                print(f"embedded {start + SLICE} sentences", flush=True)
            parts.append(np.load(part))
        vectors = np.concatenate(parts)
        print(f"embedded {len(texts)} sentences in {time.perf_counter() - began:.0f} s")
        np.save(cached, vectors)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors[queries:], vectors[:queries], len(texts)


def exact(rows: np.ndarray, queries: np.ndarray) -> tuple[list[float], np.ndarray]:
    latencies, truth = [], []
    for q in queries:
        began = time.perf_counter()
        scores = rows @ q
        top = np.argpartition(-scores, TOP_K)[:TOP_K]
        top = top[np.argsort(-scores[top])]
        latencies.append((time.perf_counter() - began) * 1000)
        truth.append(top)
    return latencies, np.array(truth)


def fill(client: Any, name: str, rows: np.ndarray, start: int, index: dict[str, Any]) -> None:
    """Create `name` (if absent) with an id and a 384-d vector, insert rows[start:]."""
    from pymilvus import DataType

    if not client.has_collection(name):
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=rows.shape[1])
        params = client.prepare_index_params()
        params.add_index(field_name="vector", metric_type="COSINE", **index)
        client.create_collection(name, schema=schema, index_params=params)
    for begin in range(start, len(rows), 2000):
        batch = rows[begin : begin + 2000]
        client.insert(name, [{"id": begin + i, "vector": v} for i, v in enumerate(batch)])
    client.flush(name)
    wait_indexed(client, name, len(rows))
    # Loaded again by the caller: the searches then use the index just built.
    client.release_collection(name)


def searched(
    client: Any, name: str, queries: np.ndarray, truth: np.ndarray, params: dict[str, Any]
) -> tuple[list[float], float]:
    for q in queries[:5]:  # warm-up
        client.search(name, data=[q.tolist()], limit=TOP_K, search_params=params)
    latencies, recall = [], []
    for q, want in zip(queries, truth, strict=True):
        began = time.perf_counter()
        result = client.search(name, data=[q.tolist()], limit=TOP_K, search_params=params)
        latencies.append((time.perf_counter() - began) * 1000)
        recall.append(len({h["id"] for h in result[0]} & set(want.tolist())) / TOP_K)
    return latencies, float(np.mean(recall))


def line(label: str, latencies: list[float], recall: float | None, base: float) -> None:
    p99 = pct(latencies, 99)
    shown = "     -" if recall is None else f"{recall:6.3f}"
    print(
        f"{label:<44} p50 {pct(latencies, 50):8.1f} ms  p99 {p99:8.1f} ms  "
        f"recall@10 {shown}  p99/exact {p99 / base:6.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--lite-sizes", default="10000,25000,50000,100000")
    parser.add_argument("--lite-queries", type=int, default=40, help="milvus-lite is slow")
    parser.add_argument("--ef", default="64,128,256")
    args = parser.parse_args()

    efs = [int(e) for e in args.ef.split(",") if e]
    rows, queries, found = corpus(args.rows, args.queries)
    print(
        f"corpus: {len(rows)} sentences of {DOC_ROOT} (of {found} read), {len(queries)} held-out "
        f"queries, all-MiniLM-L6-v2 {rows.shape[1]}-d; top-{TOP_K}, one query at a time"
    )
    exact_ms, truth = exact(rows, queries)
    base = pct(exact_ms, 99)
    line("exact numpy scan", exact_ms, 1.0, base)

    work = Path(tempfile.mkdtemp(prefix="bench-vector-store-"))
    try:
        with MilvusServer(work / "milvus-server") as server:
            client = connect(server.uri)
            began = time.perf_counter()
            fill(client, "auto", rows, 0, {"index_type": "AUTOINDEX"})
            client.load_collection("auto")
            print(
                f"Milvus {client.get_server_version()}: {len(rows)} rows inserted and indexed "
                f"in {time.perf_counter() - began:.0f} s"
            )
            built = client.describe_index("auto", "vector")
            print(f"AUTOINDEX built as: {built.get('index_type')} {built.get('params', '')}")
            ms, recall = searched(client, "auto", queries, truth, {})
            line("Milvus server, AUTOINDEX, no search params", ms, recall, base)
            # What a KnowledgeBase's default `ef` does to the server's own index.
            for ef in efs:
                ms, recall = searched(client, "auto", queries, truth, {"params": {"ef": ef}})
                line(f"Milvus server, AUTOINDEX, ef {ef}", ms, recall, base)
            hnsw = {"index_type": "HNSW", "params": {"M": 16, "efConstruction": 200}}
            fill(client, "hnsw", rows, 0, hnsw)
            client.load_collection("hnsw")
            for ef in efs:
                ms, recall = searched(client, "hnsw", queries, truth, {"params": {"ef": ef}})
                line(f"Milvus server, HNSW M16 efC200, ef {ef}", ms, recall, base)
            print(f"Milvus server resident memory: {server.memory_mb():.0f} MB")
            client.close()

        proc, uri = start_store(work / "milvus-lite")
        try:
            lite = connect(uri)
            done = 0
            for size in sorted(int(s) for s in args.lite_sizes.split(",") if s):
                size = min(size, len(rows))
                n = args.lite_queries
                _, sub_truth = exact(rows[:size], queries[:n])
                for index, label in LITE_INDEXES.items():
                    name = f"lite_{index.lower()}"
                    began = time.perf_counter()
                    fill(lite, name, rows[:size], done, {"index_type": index})
                    lite.load_collection(name)
                    inserted = time.perf_counter() - began
                    ms, recall = searched(lite, name, queries[:n], sub_truth, {})
                    text = f"milvus-lite {label}, {size:>7,} rows ({n} q, +{inserted:.0f} s)"
                    line(text, ms, recall, base)
                done = size
            lite.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
