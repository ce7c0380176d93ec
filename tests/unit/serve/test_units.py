"""The server's parts without a model: config, request checks, stop handling, RAG, readiness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from phiops_serve.app import ApiError, create_app, parse_request
from phiops_serve.engine import Engine, cut_at_stop, held_back
from phiops_serve.rag import CONTEXT_HEADER, Augmenter
from phiops_workload.serving import RetrievalConfig, ServeConfig
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


def test_stop_sequences() -> None:
    assert cut_at_stop("hello world", ("o w", "ld")) == ("hell", True)
    assert cut_at_stop("hello", ("xyz",)) == ("hello", False)
    assert held_back("answer: EN", ("END",)) == 2
    assert held_back("answer", ("END",)) == 0
    assert held_back("abc", ()) == 0


class _Hit:
    def __init__(self, source: str, text: str) -> None:
        self.source, self.text = source, text


class FakeSearcher:
    def __init__(self, hits: list[_Hit]) -> None:
        self.hits = hits
        self.asked: list[tuple[str, int, bool, float | None]] = []

    def search(
        self,
        question: str,
        top_k: int = 5,
        hybrid: bool = False,
        score_threshold: float | None = None,
    ) -> list[_Hit]:
        self.asked.append((question, top_k, hybrid, score_threshold))
        return self.hits[:top_k]


RETRIEVAL = RetrievalConfig(uri="memory", collection="kb", top_k=1, score_threshold=0.5)


async def test_rag_puts_the_closest_chunks_in_the_system_prompt() -> None:
    searcher = FakeSearcher([_Hit("manual.md", "The jacket is waterproof."), _Hit("x", "y")])
    augmenter = Augmenter(searcher, RETRIEVAL, "You are a support expert.")
    messages = await augmenter.augment(USER)
    assert searcher.asked == [("Is it waterproof?", 1, False, 0.5)]
    assert messages[1:] == USER
    system = messages[0]
    assert system["role"] == "system"
    assert system["content"].startswith("You are a support expert.")
    assert CONTEXT_HEADER in system["content"]
    assert "[1] (manual.md)\nThe jacket is waterproof." in system["content"]
    assert "[2]" not in system["content"]


async def test_rag_keeps_the_callers_system_prompt_and_works_without_hits() -> None:
    augmenter = Augmenter(FakeSearcher([]), RETRIEVAL, "default")
    mine = [{"role": "system", "content": "Be brief."}, *USER]
    assert await augmenter.augment(mine) == mine
    assert await augmenter.augment(USER) == [{"role": "system", "content": "default"}, *USER]
    with_hits = Augmenter(FakeSearcher([_Hit("s", "t")]), RETRIEVAL, "default")
    answer = await with_hits.augment(mine)
    assert answer[0]["content"].startswith("Be brief.")
    assert answer[1:] == USER


async def test_not_ready_until_loaded() -> None:
    engine = Engine(ServeConfig.model_validate({**CONFIG, "retrieval": None}))
    async with TestClient(TestServer(create_app(engine, load=False))) as client:
        assert (await client.get("/healthz")).status == 200
        ready = await client.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["ready"] is False
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
