"""Readiness: adapters checked against their sha256 and loaded one by one (a bad one never
takes the others down), nf4 without a GPU, and a knowledge base opened in the background
with retries until Milvus answers."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from peft import PrefixTuningConfig
from phiops_serve.engine import Engine
from phiops_workload.serving import AdapterConfig, ServeConfig

from tests.unit.embed.conftest import free_port

from .conftest import (
    ADAPTER,
    BASE,
    KnowledgeStore,
    TinyModels,
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


def test_bad_adapters_are_reported_and_the_others_serve(
    serve_config: ServeConfig, tiny_models: TinyModels, tmp_path: Path, server: str
) -> None:
    corrupt = shutil.copytree(tiny_models.adapter, tmp_path / "corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    digest = sha256(tiny_models.adapter)
    prefix = tmp_path / "prefix"
    PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4).save_pretrained(str(prefix))
    adapters = [
        # First, so that peft has already wrapped the base when it fails.
        AdapterConfig(name="corrupt", path=str(corrupt)),
        AdapterConfig(name=ADAPTER, path=str(tiny_models.adapter), sha256=digest),
        AdapterConfig(name="tampered", path=str(tiny_models.other), sha256=digest),
        AdapterConfig(name="prefix", path=str(prefix)),
    ]
    with running(serve_config.model_copy(update={"adapters": adapters})) as url:
        state = wait_until(lambda: models(url)[ADAPTER]["loaded"] and models(url), 60)
        status, body = get_json(f"{url}/readyz")
        assert status == 503 and body["ready"] is False
        assert state[BASE] == {"name": BASE, "loaded": True, "sha256": None, "error": None}
        assert state[ADAPTER] == {"name": ADAPTER, "loaded": True, "sha256": digest, "error": None}
        assert not state["corrupt"]["loaded"]
        assert "cannot load the adapter" in state["corrupt"]["error"]
        assert not state["tampered"]["loaded"]
        assert state["tampered"]["sha256"] == sha256(tiny_models.other)
        assert f"expected {digest}" in state["tampered"]["error"]
        assert "only LoRA is served" in state["prefix"]["error"]
        # The good adapter and the base answer exactly as on a server without the bad ones.
        assert answer(url, ADAPTER) == answer(server, ADAPTER)
        assert answer(url, BASE) == answer(server, BASE)
        with pytest.raises(openai.InternalServerError) as caught:
            answer(url, "tampered")
        assert caught.value.status_code == 503
        assert "sha256" in str(caught.value.body)


def test_nf4_without_a_gpu_fails_loading_with_a_clear_message(serve_config: ServeConfig) -> None:
    config = serve_config.model_copy(update={"quantize": "nf4", "device": "auto"})
    with running(config) as url:
        state = wait_until(lambda: models(url)[BASE]["error"] and models(url), 60)
        assert "nf4 needs a CUDA GPU" in state[BASE]["error"]
        assert state[ADAPTER]["error"] == "not loaded: the base model did not load"
        assert not any(m["loaded"] for m in state.values())
        assert get_json(f"{url}/readyz")[0] == 503
        assert get_json(f"{url}/healthz")[0] == 200
        with pytest.raises(openai.InternalServerError):
            answer(url, BASE)


def test_an_unreadable_hub_token_is_reported(serve_config: ServeConfig, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-token")
    engine = Engine(serve_config.model_copy(update={"hub_token_file": missing}))
    engine.load()
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
        # Milvus is not there: the server runs, the models load, readiness says why not.
        retrieval = wait_until(lambda: (r := readiness(url))["attempts"] >= 3 and r, 60)
        assert retrieval["ready"] is False
        assert str(port) in retrieval["error"]
        assert get_json(f"{url}/readyz")[0] == 503
        assert all(m["loaded"] for m in models(url).values())
        with pytest.raises(openai.InternalServerError) as caught:
            answer(url, BASE)
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
            wait_until(lambda: get_json(f"{url}/readyz")[0] == 200, 60, "ready")
            assert readiness(url) == {
                "collection": late.alias,
                "ready": True,
                "attempts": readiness(url)["attempts"],
                "error": None,
            }
            completion = client_for(url).chat.completions.create(
                model=ADAPTER, messages=ASK, max_tokens=2
            )
            assert (completion.model_extra or {})["citations"][0]["doc_id"] == "docs/warranty.md"
        finally:
            store.stop()


def readiness(url: str) -> dict[str, Any]:
    retrieval: dict[str, Any] = get_json(f"{url}/readyz")[1]["retrieval"]
    return retrieval
