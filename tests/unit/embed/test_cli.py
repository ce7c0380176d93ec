"""The image's entrypoint: termination messages and reasons, `query`, `drop`, and the openai
provider against a local OpenAI-compatible endpoint."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from phiops_embed import cli
from phiops_embed.store import alias_target, connect
from phiops_workload.knowledge import (
    REASON_EMBEDDING_FAILED,
    REASON_SOURCE_NOT_FOUND,
    REASON_STORE_UNAVAILABLE,
    EmbeddingConfig,
    EmbedJobConfig,
    SourceConfig,
)

from tests.unit.embed.conftest import StoreServer, free_port, job_config


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("PHIOPS_TERMINATION_LOG", str(path))
    return path


def run_job(tmp_path: Path, config: EmbedJobConfig, *extra: str) -> int:
    path = tmp_path / "config.json"
    path.write_text(config.model_dump_json(by_alias=True))
    return cli.main(["sync", "--config", str(path), *extra])


def result(termination_log: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(termination_log.read_text())
    return data


def test_sync_writes_figures_then_query_answers(
    store: StoreServer,
    docs: Path,
    tmp_path: Path,
    termination_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = job_config(store.uri, docs)
    path = tmp_path / "config.json"
    path.write_text(config.model_dump_json(by_alias=True))
    assert cli.main(["--config", str(path)]) == 0  # the bare form is `sync`
    message = result(termination_log)
    assert (message["outcome"], message["reason"]) == ("Succeeded", "Synced")
    assert message["figures"]["documents"]["added"] == 5
    assert len(termination_log.read_bytes()) < 4096
    capsys.readouterr()

    question = "What does the warranty cover?"
    argv = ["query", "--uri", store.uri, "--collection", config.store.alias, "--top-k", "2"]
    assert cli.main([*argv, question]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and hits[0]["doc_id"] == "docs/warranty.md"
    assert set(hits[0]) == {"doc_id", "source", "heading", "chunk_index", "text", "score"}


def test_failures_carry_reasons(
    store: StoreServer, docs: Path, tmp_path: Path, termination_log: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    assert run_job(tmp_path, job_config(closed, docs)) == 1
    assert result(termination_log)["reason"] == REASON_STORE_UNAVAILABLE
    assert "127.0.0.1" in result(termination_log)["message"]

    missing = job_config(store.uri, docs)
    source = SourceConfig(name="cm", kind="configMap", local_path=str(tmp_path / "not-mounted"))
    missing = missing.model_copy(update={"sources": [source]})
    assert run_job(tmp_path, missing) == 1
    assert result(termination_log)["reason"] == REASON_SOURCE_NOT_FOUND
    assert "not-mounted" in result(termination_log)["message"]

    bad_model = job_config(store.uri, docs, embedding=EmbeddingConfig(model="nobody/no-model"))
    assert run_job(tmp_path, bad_model) == 1
    assert result(termination_log)["reason"] == REASON_EMBEDDING_FAILED
    assert "nobody/no-model" in result(termination_log)["message"]

    (tmp_path / "config.json").write_text('{"sources": "nope"}')
    assert cli.main(["sync", "--config", str(tmp_path / "config.json")]) == 2
    assert result(termination_log)["reason"] == "InvalidConfig"


def test_drop_removes_the_alias_and_its_collections_only(
    store: StoreServer, termination_log: Path
) -> None:
    client = connect(store.uri)
    alias = "kb_drop_me"
    family = [f"{alias}__0123456789ab", f"{alias}__ba9876543210"]
    others = [f"{alias}x__0123456789ab", f"{alias}__handmade", "kb_drop_me_too"]
    for name in family + others:
        client.create_collection(name, dimension=4)
    client.create_alias(family[0], alias)
    assert cli.main(["drop", "--uri", store.uri, "--alias", alias]) == 0
    assert alias_target(client, alias) is None
    names = set(client.list_collections())
    assert not names & set(family) and set(others) <= names
    figures = result(termination_log)["figures"]
    assert figures["dropped_collections"] == sorted(family) and figures["dropped_alias"]


class _Embeddings(http.server.BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible /v1/embeddings: hashed bags of words (deterministic)."""

    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Embeddings.seen.append({"auth": self.headers["Authorization"], **body})
        width = body.get("dimensions", 32)
        data = []
        for index, text in enumerate(body["input"]):
            vector = np.zeros(width)
            for word in re.findall(r"\w+", text.lower()):
                vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % width] += 1
            data.append({"object": "embedding", "index": index, "embedding": vector.tolist()})
        reply = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }
        raw = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def embeddings_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Embeddings)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def test_openai_provider(
    store: StoreServer,
    docs: Path,
    tmp_path: Path,
    termination_log: Path,
    embeddings_endpoint: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = tmp_path / "api-key"
    key.write_text("sk-test\n")
    embedding = EmbeddingConfig(
        provider="openai",
        model="text-embedding-3-small",
        base_url=embeddings_endpoint,
        dimensions=256,
        api_key_file=str(key),
    )
    config = job_config(store.uri, docs, embedding=embedding)
    assert run_job(tmp_path, config) == 0
    assert result(termination_log)["figures"]["dimension"] == 256
    assert {s["auth"] for s in _Embeddings.seen} == {"Bearer sk-test"}
    assert {s["dimensions"] for s in _Embeddings.seen} == {256}
    capsys.readouterr()
    argv = ["query", "--uri", store.uri, "--collection", config.store.alias, "--top-k", "1"]
    argv += ["--provider", "openai", "--model", "text-embedding-3-small"]
    argv += ["--base-url", embeddings_endpoint, "--api-key-file", str(key)]
    argv += ["--dimensions", "256", "PostNL DHL Express carrier parcels tracking"]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)[0]["doc_id"] == "docs/policies/shipping.md"
