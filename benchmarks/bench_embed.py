"""Benchmark of the embedding workload: ratios measured side by side in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_embed.py [--docs 150] [--search-n 20000]

1. ingest throughput end to end (read + chunk + embed + write, `run_sync`) vs raw
   `model.encode` of the very same chunk texts at the same batch size (target >= 0.90x);
2. Milvus write time vs embedding time inside that sync (target <= 0.05x);
3. re-sync after changing 1% of the documents vs the full sync (target <= 0.10x);
4. search latency p50/p99 and recall@10 of the store's index vs exact numpy search over
   `--search-n` real MiniLM embeddings of generated passages (never random vectors: on
   those HNSW recall means nothing);
5. GPU embedding: sentence-transformers' `encode` against phiops' tokenise-ahead path, float32
   and bf16 weights (where CUDA is available; a dry run on the CPU otherwise).

Everything runs against a milvus-lite server started as the store pod starts it
(`python -m phiops_embed serve-store`), reached over gRPC like a real deployment.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from phiops_embed.chunking import Chunker
from phiops_embed.embedder import SentenceTransformerEmbedder
from phiops_embed.formats import extract
from phiops_embed.store import connect, drop_family
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

# -- generated text: real words and grammar, so the embeddings are real embeddings ---------

PRODUCTS = [
    "tent",
    "backpack",
    "sleeping-bag",
    "stove",
    "headlamp",
    "rain-jacket",
    "hiking-boot",
    "trekking-pole",
    "water-filter",
    "kayak",
    "paddle",
    "harness",
    "carabiner",
    "rope",
    "helmet",
    "compass",
    "tarp",
    "hammock",
    "cooler",
    "camping-chair",
    "lantern",
    "gaiter",
    "glove",
    "fleece",
    "down-jacket",
    "insulated-bottle",
    "map-case",
]
ACTIONS = [
    "ships",
    "repairs",
    "replaces",
    "refunds",
    "inspects",
    "restocks",
    "insures",
    "tracks",
    "delivers",
    "exchanges",
    "recalls",
    "certifies",
    "cleans",
    "waterproofs",
    "tests",
    "packs",
    "weighs",
    "labels",
    "registers",
    "discounts",
]
PLACES = [
    "Rotterdam",
    "Amsterdam",
    "Utrecht",
    "Berlin",
    "Munich",
    "Vienna",
    "Zurich",
    "Oslo",
    "Lyon",
    "Milan",
    "Madrid",
    "Lisbon",
    "Dublin",
    "Copenhagen",
    "Stockholm",
    "Helsinki",
    "Prague",
    "Warsaw",
    "Brussels",
    "Antwerp",
]
TOPICS = [
    "refund policy",
    "shipping times",
    "warranty claims",
    "account security",
    "store hours",
    "gift cards",
    "product care",
    "repair service",
    "rental program",
    "loyalty points",
    "corporate orders",
    "sustainability",
    "sizing guide",
    "returns portal",
    "price matching",
]
CONDITIONS = [
    "when the seal is unbroken",
    "if the receipt is attached",
    "after a quality inspection",
    "unless the item was used outdoors",
    "for members of the loyalty program",
    "during the winter sale",
    "when the parcel weighs more than two kilograms",
    "if the customer lives outside the European Union",
    "after the warranty card is registered",
]


def sentence(rng: random.Random) -> str:
    product = rng.choice(PRODUCTS).replace("-", " ")
    kind = rng.randrange(5)
    if kind == 0:
        days = rng.randint(1, 90)
        return (
            f"Our {rng.choice(PLACES)} team {rng.choice(ACTIONS)} every {product} within "
            f"{days} days {rng.choice(CONDITIONS)}."
        )
    if kind == 1:
        price = rng.randint(5, 900)
        return f"The {product} costs {price} euros and {rng.choice(CONDITIONS)} it is free."
    if kind == 2:
        return (
            f"Customers asking about {rng.choice(TOPICS)} for a {product} should contact "
            f"the {rng.choice(PLACES)} office {rng.choice(CONDITIONS)}."
        )
    if kind == 3:
        return (
            f"A {product} that fails {rng.choice(CONDITIONS)} is {rng.choice(ACTIONS)[:-1]}ed "
            f"at no cost by the {rng.choice(PLACES)} workshop."
        )
    return (
        f"Staff in {rng.choice(PLACES)} note that the {product} {rng.choice(ACTIONS)} "
        f"poorly {rng.choice(CONDITIONS)}, so check the {rng.choice(TOPICS)} page."
    )


def document(rng: random.Random, sections: int) -> str:
    lines = [f"# {rng.choice(TOPICS).title()} handbook {rng.randint(1, 10_000)}", ""]
    for _ in range(sections):
        lines += [f"## {rng.choice(TOPICS).capitalize()} in {rng.choice(PLACES)}", ""]
        for _ in range(rng.randint(1, 3)):
            lines += [" ".join(sentence(rng) for _ in range(rng.randint(2, 6))), ""]
    return "\n".join(lines)


# -- infrastructure ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_store(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            *[sys.executable, "-m", "phiops_embed", "serve-store"],
            *["--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("milvus-lite server did not start") from None
            time.sleep(0.1)


def job(uri: str, docs: Path, embedding: EmbeddingConfig, index_type: str) -> EmbedJobConfig:
    chunking = ChunkingConfig()
    store = StoreConfig(uri=uri, alias="kb_bench", collection="x", index_type=index_type)
    collection = physical_collection("kb_bench", settings_fingerprint(chunking, embedding, store))
    return EmbedJobConfig(
        resource=ResourceIdentity.model_validate(
            {
                "apiVersion": "phiops.dev/v1alpha1",
                "kind": "KnowledgeBase",
                "namespace": "bench",
                "name": "bench",
                "uid": "0",
            }
        ),
        sync_id="bench",
        sources=[SourceConfig(name="docs", kind="persistentVolumeClaim", local_path=str(docs))],
        chunking=chunking,
        embedding=embedding,
        store=store.model_copy(update={"collection": collection}),
    )


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# -- the measurements -------------------------------------------------------------------------


def bench_ingest(args: argparse.Namespace, uri: str, work: Path) -> None:
    rng = random.Random(7)
    docs = work / "docs"
    docs.mkdir()
    for i in range(args.docs):
        (docs / f"doc-{i:05d}.md").write_text(document(rng, args.sections))
    embedding = EmbeddingConfig(batch_size=args.batch_size, precision=args.precision)
    embedder = SentenceTransformerEmbedder(
        batch_size=args.batch_size, precision=args.precision, device=args.device
    )
    config = job(uri, docs, embedding, args.index_type)
    chunker = Chunker(config.chunking, embedder.tokenizer, embedder.max_tokens)
    texts = [
        chunk.embed_text
        for path in sorted(docs.iterdir())
        for chunk in chunker.chunk(extract(path.read_bytes(), "markdown").text)
    ]
    embedder.embed(texts[: args.batch_size * 2])  # warm-up: first calls allocate

    # Raw encode and a full sync (into a fresh collection) alternate, `--rounds` times; the
    # best round of each counts, the one least disturbed by anything else on the machine.
    client = connect(uri)
    raw_times: list[float] = []
    reports = []
    for _ in range(args.rounds):
        began = time.perf_counter()
        embedder.model.encode(
            texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        raw_times.append(time.perf_counter() - began)
        drop_family(client, config.store.alias)
        reports.append(run_sync(config, embedder))
    raw_seconds = min(raw_times)
    report = min(reports, key=lambda r: r.timings.total)
    full = report.timings
    n = report.figures.chunks_embedded
    assert n == len(texts), (n, len(texts))
    raw_rate = n / raw_seconds
    e2e_rate = n / full.total

    changed = max(1, math.ceil(args.docs * args.changed))
    for path in sorted(docs.iterdir())[:changed]:
        path.write_text(path.read_text() + "\n\n" + sentence(rng) + "\n")
    again = run_sync(config, embedder)
    assert again.figures.documents.updated == changed

    tokens = [embedder.tokenizer.count(t) for t in texts]
    print(f"corpus: {args.docs} documents, {n} chunks (mean {np.mean(tokens):.0f} tokens)")
    print(f"model: all-MiniLM-L6-v2 {args.precision} on {args.device}, batch {args.batch_size}")
    rounds = f"best of {args.rounds}: " + ", ".join(f"{t:.1f}" for t in raw_times)
    print(f"raw model.encode            {raw_rate:8.1f} chunks/s  ({raw_seconds:.1f} s; {rounds})")
    totals = ", ".join(f"{r.timings.total:.1f}" for r in reports)
    print(f"sync end to end             {e2e_rate:8.1f} chunks/s  ({full.total:.1f} s; {totals})")
    print(f"  read {full.read:.2f} s, chunk {full.chunk:.2f} s, embed {full.embed:.2f} s, ")
    print(f"  write {full.write:.2f} s, scan {full.scan:.2f} s")
    print(f"RATIO ingest / raw encode   {e2e_rate / raw_rate:8.3f}   (target >= 0.90)")
    print(f"RATIO write / embed         {full.write / full.embed:8.3f}   (target <= 0.05)")
    print(
        f"RATIO re-sync {changed} of {args.docs} docs / full sync "
        f"{again.timings.total / full.total:8.3f}   (target <= 0.10; "
        f"{again.timings.total:.2f} s vs {full.total:.1f} s)"
    )


def bench_search(args: argparse.Namespace, uri: str) -> None:
    from pymilvus import DataType

    rng = random.Random(11)
    # The recall compares the index with exact search on the same vectors, so the corpus
    # may be embedded in bf16 (cosine 0.9999 to fp32, about twice as fast on CPUs with AMX).
    embedder = SentenceTransformerEmbedder(
        batch_size=64, precision=args.search_precision, device=args.device
    )
    passages = [
        " ".join(sentence(rng) for _ in range(rng.randint(1, 3))) for _ in range(args.search_n)
    ]
    questions = [sentence(rng) for _ in range(args.queries)]
    began = time.perf_counter()
    vectors = embedder.embed(passages)
    embed_seconds = time.perf_counter() - began
    queries = embedder.embed(questions)

    client = connect(uri)
    name = "bench_search"
    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type=args.index_type, metric_type="COSINE")
    client.create_collection(name, schema=schema, index_params=index)
    began = time.perf_counter()
    for start in range(0, len(vectors), 1000):
        rows = [
            {"id": i, "vector": vectors[i]} for i in range(start, min(start + 1000, len(vectors)))
        ]
        client.insert(name, rows)
    client.flush(name)
    insert_seconds = time.perf_counter() - began

    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    for q in queries[:5]:  # warm-up (index build on first search)
        client.search(name, data=[q.tolist()], anns_field="vector", limit=10)
    latencies: list[float] = []
    recall: list[float] = []
    for q, truth in zip(queries, exact, strict=True):
        began = time.perf_counter()
        result = client.search(name, data=[q.tolist()], anns_field="vector", limit=10)
        latencies.append((time.perf_counter() - began) * 1000)
        found = {hit["id"] for hit in result[0]}
        recall.append(len(found & set(truth.tolist())) / 10)
    print(
        f"search corpus: {args.search_n} passages, real embeddings ({embed_seconds:.0f} s to "
        f"embed in {args.search_precision}, {insert_seconds:.1f} s to insert), "
        f"index {args.index_type}, {args.queries} queries"
    )
    print(
        f"search top-10 latency       p50 {pct(latencies, 50):.1f} ms, "
        f"p99 {pct(latencies, 99):.1f} ms"
    )
    print(f"RATIO recall@10 vs exact    {np.mean(recall):8.3f}")


def bench_gpu(args: argparse.Namespace) -> None:
    """MiniLM on the GPU: sentence-transformers' own `encode` (tokenising on the calling thread
    between batches) against phiops' path (`pipeline.embed_ahead`: length-sorted batches
    tokenised ahead by a thread) in float32 and with bf16 weights, same texts, same batch
    size. Without CUDA the section runs on the CPU on a few texts, a dry run of its code."""
    import copy

    import torch
    from phiops_embed.pipeline import embed_ahead

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    count = args.gpu_texts if cuda else 96
    rng = random.Random(3)
    texts = [document(rng, 1) for _ in range(count)]
    full = SentenceTransformerEmbedder(device=device, precision="float32").model
    half = copy.deepcopy(full).to(torch.bfloat16)
    batch = args.gpu_batch
    runs = {
        "encode, float32": lambda: full.encode(
            texts, batch_size=batch, normalize_embeddings=True, show_progress_bar=False
        ),
        "ahead, float32": lambda: embed_ahead(full, texts, batch, device),
        "ahead, bf16 weights": lambda: embed_ahead(half, texts, batch, device),
    }
    rates: dict[str, list[float]] = {label: [] for label in runs}
    for warm_up in runs.values():
        warm_up()  # kernels, allocator, tokenizer threads
    for _ in range(args.rounds):
        for label, run in runs.items():
            began = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize()
            rates[label].append(count / (time.perf_counter() - began))
    where = torch.cuda.get_device_name() if cuda else "no CUDA here: a dry run on the cpu"
    print(f"gpu section on {where}: {count} chunks, batch {batch}, best of {args.rounds}")
    best = {label: max(values) for label, values in rates.items()}
    for label, rate in best.items():
        print(f"  {label:<22} {rate:9.0f} chunks/s")
    plain = best["encode, float32"]
    print(f"RATIO gpu ahead fp32 / encode fp32    {best['ahead, float32'] / plain:6.2f}")
    print(f"RATIO gpu ahead bf16 / encode fp32    {best['ahead, bf16 weights'] / plain:6.2f}")


def bench_precision(args: argparse.Namespace) -> None:
    """CPU embedding in float32 vs bfloat16 autocast on the same chunks, rounds alternating
    (the best of each counts), with the fidelity of bf16 and what `precision: auto` picks."""
    from phiops_embed.precision import cpu_flags, resolve_precision

    rng = random.Random(13)
    embedders = {
        p: SentenceTransformerEmbedder(batch_size=args.batch_size, precision=p, device="cpu")
        for p in ("float32", "bfloat16")
    }
    fp32 = embedders["float32"]
    chunker = Chunker(ChunkingConfig(), fp32.tokenizer, fp32.max_tokens)
    texts = [
        c.embed_text
        for _ in range(args.precision_docs)
        for c in chunker.chunk(extract(document(rng, args.sections).encode(), "markdown").text)
    ]
    for embedder in embedders.values():
        embedder.embed(texts[: args.batch_size])  # warm-up
    seconds: dict[str, list[float]] = {p: [] for p in embedders}
    vectors = {}
    for _ in range(args.rounds):
        for name, embedder in embedders.items():
            began = time.perf_counter()
            vectors[name] = embedder.embed(texts)
            seconds[name].append(time.perf_counter() - began)
    rates = {p: len(texts) / min(t) for p, t in seconds.items()}
    cosine = np.sum(vectors["float32"] * vectors["bfloat16"], axis=1)
    flags = sorted(f for f in cpu_flags() if "bf16" in f or f.startswith(("amx", "avx512")))
    print(f"cpu precision: {len(texts)} chunks, batch {args.batch_size}, best of {args.rounds}")
    for name, rate in rates.items():
        runs = ", ".join(f"{t:.1f}" for t in seconds[name])
        print(f"  {name:<9} {rate:8.1f} chunks/s  ({runs} s)")
    print(f"  bf16 cosine to float32: min {cosine.min():.5f}, mean {cosine.mean():.5f}")
    auto = resolve_precision("auto", "cpu")
    print(f"  cpu bf16 flags: {', '.join(flags) or 'none'}; auto picks {auto}")
    print(f"RATIO cpu bf16 / fp32       {rates['bfloat16'] / rates['float32']:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=150)
    parser.add_argument("--sections", type=int, default=3, help="sections per document")
    parser.add_argument("--changed", type=float, default=0.01, help="share changed for re-sync")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="raw/sync rounds (best counts)")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="float32")
    parser.add_argument("--precision-docs", type=int, default=40, help="for the cpu section")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpu-texts", type=int, default=20_000, help="chunks the gpu embeds")
    parser.add_argument("--gpu-batch", type=int, default=512, help="batch size on the gpu")
    parser.add_argument("--index-type", default="AUTOINDEX")
    parser.add_argument("--search-n", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--search-precision", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["ingest", "search", "gpu", "precision"]
    )
    args = parser.parse_args()
    import logging

    import pymilvus  # noqa: F401  (its import sets its loggers' levels: override after)

    logging.basicConfig(level=logging.WARNING)
    for name in ("pymilvus", "pymilvus.milvus_client"):
        logging.getLogger(name).setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="phiops-bench-"))
    process, uri = start_store(work / "milvus")
    try:
        if "ingest" not in args.skip:
            bench_ingest(args, uri, work)
        if "search" not in args.skip:
            bench_search(args, uri)
        if "gpu" not in args.skip:
            bench_gpu(args)
        if "precision" not in args.skip:
            bench_precision(args)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
