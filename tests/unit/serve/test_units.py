"""The server's parts without a model: config, request checks, stop handling, RAG, readiness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from phiops_embed.retrieval import Hit
from phiops_serve.app import create_app
from phiops_serve.errors import ApiError
from phiops_serve.loading import resolve_dtype
from phiops_serve.rag import (
    DEFAULT_CONTEXT_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    citations,
    grounded_messages,
)
from phiops_serve.tokens import cut_at_stop, held_back
from phiops_serve.validation import parse_request, parse_retrieve
from phiops_workload.serving import ServeConfig
from pydantic import ValidationError

CONFIG = {
    "base_model_path": "/models/phi-3",
    "base_model_name": "phi-3-mini",
    "adapters": [{"name": "support", "path": "/adapters/support"}],
    "max_new_tokens": 64,
    "retrieval": {"uri": "http://milvus:19530", "collection": "kb", "top_k": 2},
    "system_prompt": "You are a support expert.",
}
USER = [{"role": "user", "content": "Is it waterproof?"}]


def test_config_loads_from_json(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(CONFIG))
    config = ServeConfig.load(path)
    assert config.adapters[0].name == "support"
    assert config.retrieval is not None and config.retrieval.top_k == 2
    assert config.port == 8000 and config.dtype == "auto"


@pytest.mark.parametrize(
    "change",
    [
        {"adapters": [{"name": "phi-3-mini", "path": "/a"}]},  # clashes with the base
        {"max_new_tokens": 0},
        {"dtype": "int3"},
        {"surprise": True},
    ],
)
def test_config_rejects(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ServeConfig.model_validate({**CONFIG, **change})


def test_request_defaults() -> None:
    model, messages, sampling, stream = parse_request({"model": "m", "messages": USER}, 64)
    assert (model, messages, stream) == ("m", USER, False)
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p) == (64, 1.0, 1.0)


def test_request_text_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "Is it "}, {"type": "text", "text": "waterproof?"}]
    body = {"model": "m", "messages": [{"role": "user", "content": parts}], "stop": "\n"}
    _, messages, sampling, _ = parse_request(body, 64)
    assert messages == USER
    assert sampling.stop == ("\n",)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"stop": [1]}, "stop"),
        ({"n": 2}, "n"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_request_rejects(change: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_request({"model": "m", "messages": USER, **change}, 64)
    assert caught.value.status == 400
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "query"),
        ({"query": "  "}, "query"),
        ({"query": "q", "top_k": 0}, "top_k"),
        ({"query": "q", "top_k": "3"}, "top_k"),
        ({"query": "q", "top_k": True}, "top_k"),
        ({"query": "q", "score_threshold": "high"}, "score_threshold"),
        ({"query": "q", "hybrid": "yes"}, "hybrid"),
        ({"query": "q", "limit": 3}, "limit"),
    ],
)
def test_retrieve_rejects(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_retrieve(body)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_request_ignore_eos_and_retrieve_defaults() -> None:
    body = {"model": "m", "messages": USER, "ignore_eos": True}
    assert parse_request(body, 64)[2].ignore_eos
    ask = parse_retrieve({"query": "tents?"})
    assert (ask.top_k, ask.score_threshold, ask.hybrid) == (None, None, None)


def test_stop_sequences() -> None:
    assert cut_at_stop("hello world", ("o w", "ld")) == ("hell", True)
    assert cut_at_stop("hello", ("xyz",)) == ("hello", False)
    assert held_back("answer: EN", ("END",)) == 2
    assert held_back("answer", ("END",)) == 0
    assert held_back("abc", ()) == 0


def hit(doc_id: str, text: str, heading: str = "", score: float = 0.5) -> Hit:
    return Hit(doc_id=doc_id, source="docs", heading=heading, chunk_index=0, text=text, score=score)


HITS = [hit("docs/manual.md", "The jacket is waterproof.", "Jackets"), hit("docs/x.md", "y")]


def test_the_context_is_numbered_and_follows_the_system_prompt() -> None:
    messages = grounded_messages(USER, HITS, "You are a support expert.", None)
    assert messages[1:] == USER
    assert messages[0]["role"] == "system"
    expected_context = DEFAULT_CONTEXT_TEMPLATE.replace(
        "{context}", "[1] docs/manual.md (Jackets)\nThe jacket is waterproof.\n\n[2] docs/x.md\ny"
    )
    assert messages[0]["content"] == f"You are a support expert.\n\n{expected_context}"


def test_the_context_template_takes_the_chunks_where_it_says() -> None:
    template = "Sources {with braces}:\n{context}\n-- end"
    messages = grounded_messages(USER, HITS[1:], None, template)
    assert messages[0]["content"] == (
        f"{DEFAULT_SYSTEM_PROMPT}\n\nSources {{with braces}}:\n[1] docs/x.md\ny\n-- end"
    )


def test_the_callers_system_prompt_wins_and_no_hits_adds_no_context() -> None:
    mine = [{"role": "system", "content": "Be brief."}, *USER]
    assert grounded_messages(mine, [], "default", None) == mine
    assert grounded_messages(USER, [], "default", None) == [
        {"role": "system", "content": "default"},
        *USER,
    ]
    assert grounded_messages(USER, [], None, None) == USER
    answer = grounded_messages(mine, HITS, "default", None)
    assert answer[0]["content"].startswith("Be brief.\n\n")
    assert answer[1:] == USER


def test_citations_number_the_chunks_as_the_prompt_does() -> None:
    assert citations(HITS) == [
        {
            "index": 1,
            "source": "docs",
            "doc_id": "docs/manual.md",
            "heading": "Jackets",
            "chunk_index": 0,
            "score": 0.5,
        },
        {
            "index": 2,
            "source": "docs",
            "doc_id": "docs/x.md",
            "heading": "",
            "chunk_index": 0,
            "score": 0.5,
        },
    ]


async def test_not_ready_until_loaded() -> None:
    config = ServeConfig.model_validate({**CONFIG, "retrieval": None})
    async with TestClient(TestServer(create_app(config, load=False))) as client:
        assert (await client.get("/healthz")).status == 200
        ready = await client.get("/readyz")
        assert ready.status == 503
        body = await ready.json()
        assert body["ready"] is False
        assert body["models"][0] == {
            "name": "phi-3-mini",
            "loaded": False,
            "sha256": None,
            "error": None,
        }
        assert body["retrieval"] is None
        models = await (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["phi-3-mini", "support"]
        assert models["data"][1]["parent"] == "phi-3-mini"
        body = {"model": "support", "messages": USER}
        answer = await client.post("/v1/chat/completions", json=body)
        assert answer.status == 503
        assert (await answer.json())["error"]["type"] == "server_error"
        unknown = await client.post("/v1/chat/completions", json={**body, "model": "nope"})
        assert unknown.status == 404
        assert (await unknown.json())["error"]["code"] == "model_not_found"
        garbage = await client.post("/v1/chat/completions", data=b"{not json")
        assert garbage.status == 400
        missing = await client.get("/v1/nothing")
        assert missing.status == 404
        assert set((await missing.json())["error"]) == {"message", "type", "param", "code"}


def test_auto_dtype_is_float32_on_cpu_and_explicit_dtypes_stay() -> None:
    import torch

    auto = ServeConfig.model_validate({**CONFIG, "retrieval": None})
    assert resolve_dtype(auto, "cpu") == torch.float32
    bf16 = auto.model_copy(update={"dtype": "bfloat16"})
    assert resolve_dtype(bf16, "cpu") == torch.bfloat16
