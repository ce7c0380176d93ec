"""Real parts for the server tests: a tiny random-weight Phi-3 with two LoRA adapters, a
milvus-lite server holding the handbook (embedded with the real all-MiniLM-L6-v2), and
servers started on free ports in a thread of their own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from openai import OpenAI
from phiops_serve.app import create_app
from phiops_workload.serving import AdapterConfig, RetrievalConfig, ServeConfig

from tests.unit.embed.conftest import FIXTURES, StoreServer, job_config, start_store

BASE = "phi-3-tiny"
ADAPTER = "tiny-expert"
OTHER_ADAPTER = "tiny-other"
KB_DATABASE = "support"


@dataclass(frozen=True)
class TinyModels:
    base: Path
    adapter: Path
    other: Path


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter that starts non-zero (`init_lora_weights=False`), so it matters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(
        r=8,
        lora_alpha=32,
        target_modules=["qkv_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, lora).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    from phiops_finetune.tiny_model import make_tiny_model

    root = tmp_path_factory.mktemp("serve")
    base = make_tiny_model(root / "base")
    return TinyModels(
        base, make_adapter(base, root / "adapter", 1), make_adapter(base, root / "other", 2)
    )


@pytest.fixture(scope="session")
def serve_config(tiny_models: TinyModels) -> ServeConfig:
    return ServeConfig(
        base_model_path=str(tiny_models.base),
        base_model_name=BASE,
        adapters=[AdapterConfig(name=ADAPTER, path=str(tiny_models.adapter))],
        max_new_tokens=16,
        dtype="float32",
        device="cpu",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> tuple[int, Any]:
    """(status, parsed body) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def wait_until(check: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.1)
    return result


def wait_ready(url: str, timeout: float = 120) -> None:
    wait_until(lambda: get_json(f"{url}/readyz")[0] == 200, timeout, "/readyz to turn 200")


@contextlib.contextmanager
def running(config: ServeConfig, retry_seconds: float = 0.2) -> Iterator[str]:
    """Serve `config` in a thread of its own; yields the base URL once it listens (the
    models and the knowledge base may still be loading)."""
    port = _free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(config, retry_seconds=retry_seconds))
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def client_for(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def server(serve_config: ServeConfig) -> Iterator[str]:
    """The base model and one adapter, no retrieval; its URL once /readyz says ready."""
    with running(serve_config) as url:
        wait_ready(url)
        yield url


@dataclass(frozen=True)
class KnowledgeStore:
    uri: str
    alias: str
    database: str


def embed_handbook(
    uri: str, database: str = KB_DATABASE, hybrid: bool = True, alias: str | None = None
) -> str:
    """Sync the handbook into `uri` the way the embedding Job does; returns the alias."""
    from phiops_embed.embedder import SentenceTransformerEmbedder
    from phiops_embed.sync import run_sync

    config = job_config(uri, FIXTURES, alias, hybrid=hybrid, database=database)
    run_sync(config, SentenceTransformerEmbedder())
    return config.store.alias


def start_store_on(data_dir: Path, port: int) -> StoreServer:
    """A milvus-lite server on a given port (as the store pod runs it), once it listens."""
    command = [sys.executable, "-m", "phiops_embed", "serve-store", "--data-dir", str(data_dir)]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        assert process.poll() is None, "the milvus-lite server exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False

    wait_until(listening, 60, "milvus-lite to listen")
    return StoreServer(process, f"http://127.0.0.1:{port}", data_dir)


@pytest.fixture(scope="session")
def knowledge_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnowledgeStore]:
    """The handbook (dense + BM25) in a named database of a real milvus-lite server."""
    store: StoreServer = start_store(tmp_path_factory.mktemp("kb") / "data")
    try:
        yield KnowledgeStore(store.uri, embed_handbook(store.uri), KB_DATABASE)
    finally:
        if store.process.poll() is None:
            store.stop()


def retrieval_config(kb: KnowledgeStore, **changes: Any) -> RetrievalConfig:
    return RetrievalConfig(
        uri=kb.uri, collection=kb.alias, database=kb.database, **{"top_k": 3, **changes}
    )
