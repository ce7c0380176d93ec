"""Real parts for the server tests: a tiny random-weight Phi-3 with LoRA adapters, a
milvus-lite server holding the handbook (embedded with the real all-MiniLM-L6-v2), one
session server on real vLLM (`python -m phiops_serve`, as its pod runs it: base, two
adapters, retrieval), and engine-less servers in a thread of their own for retrieval."""

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
from phiops_workload.serving import AdapterConfig, EngineConfig, RetrievalConfig, ServeConfig

from tests.unit.embed.conftest import FIXTURES, StoreServer, job_config, start_store

BASE = "phi-3-tiny"
ADAPTER = "tiny-expert"
OTHER_ADAPTER = "tiny-other"
KB_DATABASE = "support"
SYSTEM = "You are the Acme support assistant."
TEMPLATE = "Sources:\n{context}\nEnd of sources."
# Above the 16 concurrent clients of the tests; the 429 test fills it.
MAX_CONCURRENT = 20


@dataclass(frozen=True)
class TinyModels:
    base: Path
    adapter: Path
    other: Path
    third: Path
    """Served by no one at start: loaded while serving."""


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
        base,
        make_adapter(base, root / "adapter", 1),
        make_adapter(base, root / "other", 2),
        make_adapter(base, root / "third", 3),
    )


@pytest.fixture(scope="session")
def serve_config(tiny_models: TinyModels) -> ServeConfig:
    return ServeConfig(
        base_model_path=str(tiny_models.base),
        base_model_name=BASE,
        adapters=[
            AdapterConfig(name=ADAPTER, path=str(tiny_models.adapter)),
            AdapterConfig(name=OTHER_ADAPTER, path=str(tiny_models.other)),
        ],
        max_new_tokens=1800,
        dtype="float32",
        max_concurrent_requests=MAX_CONCURRENT,
        engine=EngineConfig(enforce_eager=True, max_model_len=2048, kv_cache_space_gib=1),
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
    """Serve `config` without an engine (retrieval only) in a thread of its own; yields the
    base URL once it listens (the knowledge base may still be opening)."""
    port = _free_port()
    loop = asyncio.new_event_loop()
    app = create_app(config, retry_seconds=retry_seconds, start_engine=False)
    runner = web.AppRunner(app)
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


@dataclass(frozen=True)
class Server:
    url: str
    admin: str
    """The adapter API (the operator's port)."""
    process: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def command(config: ServeConfig, folder: Path) -> Iterator[Server]:
    """`python -m phiops_serve --config serve.json` on free ports, as the pod runs it; yields
    once /healthz answers (the engine may still be starting)."""
    port, admin = _free_port(), _free_port()
    changes = {"host": "127.0.0.1", "port": port, "admin_port": admin}
    config = config.model_copy(update={**changes, "work_dir": str(folder / "work")})
    (folder / "serve.json").write_text(config.model_dump_json())
    log = folder / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "phiops_serve", "--config", str(folder / "serve.json")],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        assert process.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
        try:
            return get_json(f"{url}/healthz")[0] == 200
        except OSError:
            return False

    try:
        wait_until(answering, 120, "the server to answer")
        yield Server(url, f"http://127.0.0.1:{admin}", process, log)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def rag_config(config: ServeConfig, kb: KnowledgeStore, token_file: Path) -> ServeConfig:
    """`config` answering from the handbook (hybrid, with citations) under SYSTEM and
    TEMPLATE."""
    retrieval = retrieval_config(kb, hybrid=True, token_file=str(token_file))
    return config.model_copy(
        update={"retrieval": retrieval, "system_prompt": SYSTEM, "context_template": TEMPLATE}
    )


@pytest.fixture(scope="session")
def served(
    serve_config: ServeConfig,
    knowledge_store: KnowledgeStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """The session's vLLM server: the base, two adapters and retrieval from the handbook."""
    folder = tmp_path_factory.mktemp("server")
    token = folder / "token"
    token.write_text("root:Milvus\n")  # milvus-lite has no auth: proves the file is read
    with command(rag_config(serve_config, knowledge_store, token), folder) as server:
        wait_ready(server.url, timeout=300)
        yield server


@pytest.fixture(scope="session")
def server(served: Server) -> str:
    return served.url


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
