"""Readiness: an engine that cannot start says why (nf4 on the CPU build, an unreadable hub
token), and a knowledge base opened in the background with retries until Milvus answers.
Bad adapters: test_engine.py."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from phiops_serve.engine import Engine
from phiops_workload.serving import ServeConfig

from tests.unit.embed.conftest import free_port

from .conftest import (
    ADAPTER,
    BASE,
    KnowledgeStore,
    client_for,
    embed_handbook,
    get_json,
    retrieval_config,
    running,
    start_store_on,
    wait_until,
)

ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the warranty?"}]


def answer(url: str, model: str) -> str | None:
    completion = client_for(url).chat.completions.create(
        model=model, messages=ASK, max_tokens=8, temperature=0
    )
    return completion.choices[0].message.content


def models(url: str) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in get_json(f"{url}/readyz")[1]["models"]}


def sha256(path: Path) -> str:
    return hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()


async def test_nf4_on_the_cpu_build_fails_starting_with_a_clear_message(
    serve_config: ServeConfig, tmp_path: Path
) -> None:
    engine = Engine(serve_config.model_copy(update={"quantize": "nf4"}), tmp_path)
    await engine.start()
    assert not engine.ready and engine.llm is None
    assert "nf4 needs a CUDA GPU" in (engine.states[BASE].error or "")
    assert engine.states[ADAPTER].error == "not loaded: the base model did not load"
    assert not any(state.loaded for state in engine.states.values())


async def test_an_unreadable_hub_token_is_reported(
    serve_config: ServeConfig, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-token")
    engine = Engine(serve_config.model_copy(update={"hub_token_file": missing}), tmp_path)
    await engine.start()
    assert not engine.ready
    assert "cannot read the model hub token file" in (engine.states[BASE].error or "")


def test_the_embedding_model_runs_on_the_retrieval_device(
    serve_config: ServeConfig, knowledge_store: KnowledgeStore
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA: the device must fail to prove it is used")
    retrieval = retrieval_config(knowledge_store, device="cuda")
    with running(serve_config.model_copy(update={"retrieval": retrieval})) as url:
        failed = wait_until(lambda: (r := readiness(url))["error"] and r, 60)
        assert "CUDA" in failed["error"] and failed["ready"] is False


def test_the_knowledge_base_is_retried_until_milvus_answers(
    serve_config: ServeConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    late = KnowledgeStore(f"http://127.0.0.1:{port}", "kb_late", "late")
    config = serve_config.model_copy(update={"retrieval": retrieval_config(late)})
    with caplog.at_level(logging.WARNING, "phiops_serve"), running(config) as url:
        # Milvus is not there: the server runs, readiness says why not.
        retrieval = wait_until(lambda: (r := readiness(url))["attempts"] >= 3 and r, 60)
        assert retrieval["ready"] is False
        assert str(port) in retrieval["error"]
        assert get_json(f"{url}/readyz")[0] == 503
        with pytest.raises(openai.InternalServerError) as caught:
            client_for(url).post("/retrieve", body={"query": "warranty"}, cast_to=object)
        assert "knowledge base" in str(caught.value.body)
        assert len([r for r in caplog.records if "retrying in" in r.message]) >= 2
        # Milvus comes up empty (still not ready), then the first sync writes the alias.
        store = start_store_on(tmp_path / "data", port)
        try:
            refused = retrieval["error"]
            missing = wait_until(lambda: readiness(url)["error"] not in (refused, None), 60)
            assert "does not exist" in readiness(url)["error"], missing
            assert readiness(url)["ready"] is False
            embed_handbook(late.uri, late.database, alias=late.alias)
            wait_until(lambda: readiness(url)["ready"], 60, "retrieval ready")
            assert readiness(url) == {
                "collection": late.alias,
                "ready": True,
                "attempts": readiness(url)["attempts"],
                "error": None,
            }
            found = client_for(url).post("/retrieve", body={"query": "warranty"}, cast_to=object)
            assert found["data"][0]["doc_id"] == "docs/warranty.md"  # type: ignore[index]
        finally:
            store.stop()


def readiness(url: str) -> dict[str, Any]:
    retrieval: dict[str, Any] = get_json(f"{url}/readyz")[1]["retrieval"]
    return retrieval
