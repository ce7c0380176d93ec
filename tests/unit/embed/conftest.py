"""Real components for the embedding tests: the bundled MiniLM and a milvus-lite server
started the way the embedded store pod starts it (`python -m phiops_embed serve-store`)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from phiops_embed.embedder import SentenceTransformerEmbedder
from phiops_workload.contracts import ResourceIdentity
from phiops_workload.knowledge import (
    ChunkingConfig,
    EmbeddingConfig,
    EmbedJobConfig,
    ShardConfig,
    SourceConfig,
    StoreConfig,
    physical_collection,
    settings_fingerprint,
)

FIXTURES = Path(__file__).resolve().parents[2] / "embed_fixtures" / "handbook"
RESOURCE = {
    "apiVersion": "phiops.dev/v1alpha1",
    "kind": "KnowledgeBase",
    "namespace": "default",
    "name": "handbook",
    "uid": "0000",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class StoreServer:
    process: subprocess.Popen[bytes]
    uri: str
    data_dir: Path

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def start_store(data_dir: Path) -> StoreServer:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "phiops_embed",
            "serve-store",
            "--data-dir",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the milvus-lite server did not start") from None
            time.sleep(0.1)
    return StoreServer(process, f"http://127.0.0.1:{port}", data_dir)


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreServer]:
    server = start_store(tmp_path_factory.mktemp("milvus") / "data")
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A private copy of the fixture handbook the test may edit."""
    target = tmp_path / "docs"
    shutil.copytree(FIXTURES, target)
    return target


def job_config(
    uri: str,
    docs: Path,
    alias: str | None = None,
    *,
    chunking: ChunkingConfig | None = None,
    embedding: EmbeddingConfig | None = None,
    hybrid: bool = False,
    shard: tuple[int, int] = (0, 1),
    **store_extra: Any,
) -> EmbedJobConfig:
    """The config the operator would render, with a collection of its own per test."""
    alias = alias or f"kb_test_{uuid.uuid4().hex[:8]}"
    chunking = chunking or ChunkingConfig()
    embedding = embedding or EmbeddingConfig()
    store = StoreConfig(uri=uri, alias=alias, collection="pending", hybrid=hybrid, **store_extra)
    collection = physical_collection(alias, settings_fingerprint(chunking, embedding, store))
    return EmbedJobConfig(
        resource=ResourceIdentity.model_validate(RESOURCE),
        sync_id="sync-1",
        sources=[SourceConfig(name="docs", kind="persistentVolumeClaim", local_path=str(docs))],
        chunking=chunking,
        embedding=embedding,
        store=store.model_copy(update={"collection": collection}),
        shard=ShardConfig(index=shard[0], count=shard[1]),
    )
