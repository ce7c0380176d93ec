"""`python -m phiops_embed <subcommand>`: the entrypoint of the phiops-embed image.

- `sync --config FILE`: the embedding Job (the default when no subcommand is given);
- `promote --config FILE`: switch the alias after every shard of a sync succeeded;
- `query --uri URI --collection ALIAS QUESTION`: what retrieval returns, as JSON;
- `serve-store --data-dir DIR`: the embedded milvus-lite server;
- `drop --uri URI --alias ALIAS`: remove a knowledge base's collections (reclaimPolicy Delete).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from phiops_workload.contracts import WorkloadResult
from phiops_workload.knowledge import REASON_STORE_UNAVAILABLE, EmbedJobConfig
from phiops_workload.runtime import (
    DEFAULT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    run_job,
    write_result,
)

SUBCOMMANDS = ("sync", "promote", "query", "serve-store", "drop")
RESOURCE_KIND = "KnowledgeBase"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phiops_embed", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    config_default = os.environ.get("PHIOPS_CONFIG", DEFAULT_CONFIG)

    sync = sub.add_parser("sync", help="embed the sources into Milvus (the embedding Job)")
    sync.add_argument("--config", default=config_default)
    sync.add_argument("--progress-interval", type=float, default=10.0)

    promote = sub.add_parser("promote", help="point the alias at the synced collection")
    promote.add_argument("--config", default=config_default)

    query = sub.add_parser("query", help="print the chunks retrieval returns for a question")
    query.add_argument("--uri", required=True)
    query.add_argument("--collection", required=True, help="the alias readers use")
    query.add_argument("--token-file")
    query.add_argument("--database", default="default")
    query.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    query.add_argument("--device", default="cpu")
    query.add_argument("--provider", choices=["sentenceTransformers", "openai"])
    query.add_argument("--base-url", help="openai provider: the embeddings endpoint")
    query.add_argument("--api-key-file", help="openai provider: a file holding the key")
    query.add_argument("--dimensions", type=int, help="openai provider: vector width")
    query.add_argument("--top-k", type=int, default=5)
    query.add_argument("--hybrid", action="store_true", help="fuse dense and BM25 results")
    query.add_argument("--score-threshold", type=float)
    query.add_argument("question")

    serve = sub.add_parser("serve-store", help="run the embedded milvus-lite server")
    serve.add_argument("--data-dir", required=True)
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=19530)
    serve.add_argument("--max-workers", type=int, default=10)

    drop = sub.add_parser("drop", help="drop the alias and its <alias>__* collections")
    drop.add_argument("--uri", required=True)
    drop.add_argument("--alias", required=True)
    drop.add_argument("--token-file")
    drop.add_argument("--database", default="default")
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The bare `--config FILE` form (and no arguments at all) means the embedding Job.
    if not args_list or args_list[0] not in (*SUBCOMMANDS, "-h", "--help"):
        args_list.insert(0, "sync")
    args = build_parser().parse_args(args_list)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    command: str = args.command
    if command != "serve-store":
        _quiet_pymilvus()
    if command == "sync":
        from phiops_embed import sync

        return _job(args.config, sync.main)
    if command == "promote":
        from phiops_embed import sync

        return _job(args.config, sync.promote)
    if command == "query":
        return _query(args)
    if command == "serve-store":
        from phiops_embed.serve_store import serve

        return serve(args.data_dir, args.host, args.port, args.max_workers)
    return _drop(args)


def _quiet_pymilvus() -> None:
    """pymilvus logs every failed call with a traceback before raising, and we report each
    failure ourselves. Its import configures its loggers: silence them after that."""
    import pymilvus  # noqa: F401

    for name in ("pymilvus", "pymilvus.milvus_client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _job(config_path: str, run: Callable[[EmbedJobConfig], WorkloadResult]) -> int:
    return run_job("phiops_embed", config_path, EmbedJobConfig, RESOURCE_KIND, run)


def _query(args: argparse.Namespace) -> int:
    from phiops_embed.embedder import EmbeddingError, OpenAIEmbedder
    from phiops_embed.retrieval import Retriever
    from phiops_embed.store import StoreUnavailable

    try:
        embedder = None
        if args.provider == "openai":
            key = Path(args.api_key_file).read_text().strip() if args.api_key_file else ""
            embedder = OpenAIEmbedder(args.model, args.base_url, key, args.dimensions)
        retriever = Retriever(
            args.uri,
            args.collection,
            args.model,
            token_file=args.token_file,
            database=args.database,
            device=args.device,
            embedder=embedder,
        )
        hits = retriever.search(args.question, args.top_k, args.hybrid, args.score_threshold)
    except (StoreUnavailable, EmbeddingError, OSError) as err:
        print(f"query failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps([hit.model_dump() for hit in hits], indent=2, ensure_ascii=False))
    return EXIT_OK


def _drop(args: argparse.Namespace) -> int:
    from phiops_embed.store import StoreUnavailable, connect, drop_family, read_token

    try:
        client = connect(args.uri, read_token(args.token_file), args.database)
        dropped = drop_family(client, args.alias)
    except StoreUnavailable as err:
        write_result(
            WorkloadResult(outcome="Failed", reason=REASON_STORE_UNAVAILABLE, message=str(err))
        )
        return EXIT_FAILED
    message = f"dropped {len(dropped['dropped_collections'])} collections of {args.alias}"
    write_result(
        WorkloadResult(outcome="Succeeded", reason="Dropped", message=message, figures=dropped)
    )
    return EXIT_OK
