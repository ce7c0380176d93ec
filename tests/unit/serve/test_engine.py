"""The vLLM engine behind the API: answers equal vLLM's offline engine alone and batched
(base and adapters mixed: the zero-adapter guard), concurrency, cancellation that frees the
slot, and adapters loaded, replaced and unloaded while clients stream."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam
from peft import PrefixTuningConfig
from phiops_serve.rag import grounded_messages
from transformers import AutoTokenizer

from tests.helpers import Streamer

from .conftest import (
    ADAPTER,
    BASE,
    OTHER_ADAPTER,
    SYSTEM,
    TEMPLATE,
    Server,
    TinyModels,
    client_for,
    get_json,
    wait_until,
)
from .test_metrics import scrape, value

QUESTIONS = [
    "When will my refund arrive?",
    "Which carrier delivers heavy parcels and tents?",
    "Is the rain jacket waterproof?",
]
MODELS = [BASE, ADAPTER, OTHER_ADAPTER]
TOKENS = 12
RUNNING = "vllm:num_requests_running"


def ask(question: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": question}]


async def _answer(client: AsyncOpenAI, model: str, question: str) -> str:
    completion = await client.chat.completions.create(
        model=model,
        messages=ask(question),
        max_tokens=TOKENS,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    return completion.choices[0].message.content or ""


def _prompt_ids(server: Server, tiny: TinyModels, question: str) -> list[int]:
    """The token ids the server generates from: the question grounded in the very chunks
    its retrieval finds, under its system prompt and template."""
    hits = client_for(server.url).post("/retrieve", body={"query": question}, cast_to=object)
    chunks = [SimpleNamespace(**hit) for hit in hits["data"]]  # type: ignore[index]
    messages = grounded_messages([{"role": "user", "content": question}], chunks, SYSTEM, TEMPLATE)
    tokenizer = AutoTokenizer.from_pretrained(tiny.base)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


@pytest.fixture(scope="module")
def offline(served: Server, tiny_models: TinyModels, tmp_path_factory: Any) -> dict[str, str]:
    """(model, question) -> vLLM's offline answer, each prompt generated alone."""
    pairs = [(model, question) for model in MODELS for question in QUESTIONS]
    request = {
        "model": str(tiny_models.base),
        "adapters": {ADAPTER: str(tiny_models.adapter), OTHER_ADAPTER: str(tiny_models.other)},
        "prompts": [{"model": m, "ids": _prompt_ids(served, tiny_models, q)} for m, q in pairs],
        "max_tokens": TOKENS,
        "max_model_len": 2048,
    }
    path = Path(tmp_path_factory.mktemp("offline")) / "request.json"
    path.write_text(json.dumps(request))
    script = Path(__file__).with_name("offline_reference.py")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(path), str(path.with_name("answer.json"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    texts = json.loads(path.with_name("answer.json").read_text())["texts"]
    return {f"{m}|{q}": text for (m, q), text in zip(pairs, texts, strict=True)}


def test_answers_equal_the_offline_engine_alone_and_batched(
    server: str, offline: dict[str, str]
) -> None:
    async def run() -> None:
        client = AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
        for model in MODELS:  # one at a time
            for question in QUESTIONS:
                assert await _answer(client, model, question) == offline[f"{model}|{question}"]
        # Then all at once, three of each model in flight together, in a shuffled order.
        jobs = [(m, q) for q in QUESTIONS for m in MODELS][::-1]
        answers = await asyncio.gather(*(_answer(client, m, q) for m, q in jobs))
        wrong = [
            (m, q) for (m, q), a in zip(jobs, answers, strict=True) if a != offline[f"{m}|{q}"]
        ]
        assert wrong == []

    asyncio.run(run())
    # The adapters matter: no two models answer alike.
    for question in QUESTIONS:
        assert len({offline[f"{m}|{question}"] for m in MODELS}) == 3


def test_sixteen_concurrent_streams_complete_with_their_usage(server: str) -> None:
    async def stream(client: AsyncOpenAI, index: int) -> tuple[int, int, int]:
        chunks = await client.chat.completions.create(
            model=MODELS[index % 3],
            messages=ask(f"Question number {index}: how do I clean my boots?"),
            max_tokens=20 + index,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        pieces, usage = 0, None
        async for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
            if chunk.usage is not None:
                usage = chunk.usage
        assert usage is not None
        return usage.completion_tokens, pieces, 20 + index

    async def run() -> list[tuple[int, int, int]]:
        client = AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
        return await asyncio.gather(*(stream(client, i) for i in range(16)))

    for completion_tokens, pieces, asked in asyncio.run(run()):
        assert completion_tokens == asked
        assert 0 < pieces <= asked


def _running(url: str) -> float:
    return sum(v for (name, _), v in scrape(url).items() if name == RUNNING)


def test_a_client_that_leaves_mid_stream_frees_its_slot(server: str) -> None:
    client = client_for(server)
    stream = client.chat.completions.create(
        model=ADAPTER,
        messages=ask("Tell me everything about tents."),
        max_tokens=250,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    next(chunks), next(chunks)  # generating
    wait_until(lambda: _running(server) == 1, 30, "the request to run")
    stream.close()
    wait_until(lambda: _running(server) == 0, 30, "vLLM to abort the request")


def test_a_client_that_leaves_a_whole_answer_frees_its_slot(server: str) -> None:
    body = {
        "model": BASE,
        "messages": ask("Tell me everything about boots."),
        "max_tokens": 250,
        "ignore_eos": True,
    }
    request = urllib.request.Request(
        f"{server}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(OSError):  # the client gives up long before 250 tokens
        urllib.request.urlopen(request, timeout=0.5)
    wait_until(lambda: _running(server) == 0, 30, "vLLM to abort the abandoned request")
    assert value(scrape(server), "phiops_serve_requests_in_flight") == 0


def _admin(served: Server, method: str, name: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{served.admin}/v1/adapters/{name}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _models(url: str) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in get_json(f"{url}/readyz")[1]["models"]}


def sha256(path: Path) -> str:
    return hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_an_adapter_is_replaced_loaded_and_unloaded_while_clients_stream(
    served: Server, tiny_models: TinyModels, tmp_path: Path
) -> None:
    url, client = served.url, client_for(served.url)
    before = client.chat.completions.create(
        model=ADAPTER, messages=ask(QUESTIONS[0]), max_tokens=TOKENS, temperature=0
    )
    retrained = shutil.copytree(tiny_models.third, tmp_path / "retrained")
    tent = "Is the tent waterproof?"
    with (
        Streamer(client, ADAPTER, tent, 24) as on_adapter,
        Streamer(client, BASE, tent, 24) as on_base,
    ):
        wait_until(lambda: on_adapter.done >= 2 and on_base.done >= 2, 60, "streams")
        # A retrained version of ADAPTER, in place of the old one.
        digest = sha256(retrained)
        status, report = _admin(served, "PUT", ADAPTER, {"path": str(retrained), "sha256": digest})
        assert status == 200 and report["sha256"] == digest and report["loaded"]
        # A new adapter, then gone again.
        status, _ = _admin(served, "PUT", "newcomer", {"path": str(tiny_models.other)})
        assert status == 200
        assert "newcomer" in [m.id for m in client.models.list().data]
        newcomer = client.chat.completions.create(
            model="newcomer", messages=ask(QUESTIONS[0]), max_tokens=TOKENS, temperature=0
        )
        assert newcomer.choices[0].message.content
        assert _admin(served, "DELETE", "newcomer")[0] == 200
        done = on_adapter.done
        wait_until(lambda: on_adapter.done >= done + 2, 60, "streams after the reload")
    assert on_adapter.failures == [] and on_base.failures == []
    after = client.chat.completions.create(
        model=ADAPTER, messages=ask(QUESTIONS[0]), max_tokens=TOKENS, temperature=0
    )
    assert after.choices[0].message.content != before.choices[0].message.content
    assert _models(url)[ADAPTER]["path"] == str(retrained)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="newcomer", messages=ask("hi"), max_tokens=1)
    assert _admin(served, "DELETE", "newcomer")[0] == 404
    # Put the session's adapter back for the other tests.
    status, _ = _admin(served, "PUT", ADAPTER, {"path": str(tiny_models.adapter)})
    assert status == 200


def test_bad_adapters_are_refused_and_the_others_serve(
    served: Server, tiny_models: TinyModels, tmp_path: Path
) -> None:
    corrupt = shutil.copytree(tiny_models.adapter, tmp_path / "corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    prefix = tmp_path / "prefix"
    PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4).save_pretrained(str(prefix))
    wide = tmp_path / "wide"
    config = json.loads((tiny_models.other / "adapter_config.json").read_text())
    shutil.copytree(tiny_models.other, wide)
    (wide / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    digest = sha256(tiny_models.adapter)
    cases = {
        "corrupt": ({"path": str(corrupt)}, "cannot load the adapter"),
        "tampered": ({"path": str(tiny_models.other), "sha256": digest}, f"expected {digest}"),
        "prefix": ({"path": str(prefix)}, "only LoRA adapters are served"),
        "wide": ({"path": str(wide)}, "max_lora_rank 16"),
        "missing": ({"path": str(tmp_path / "nothing")}, "cannot load the adapter"),
    }
    for name, (body, message) in cases.items():
        status, answer = _admin(served, "PUT", name, body)
        assert status == 422, (name, answer)
        assert message in answer["error"]["message"], name
        state = _models(served.url)[name]
        assert state["loaded"] is False and message in state["error"]
    # A failed reload of a served adapter keeps the old version serving.
    status, answer = _admin(served, "PUT", ADAPTER, {"path": str(corrupt)})
    assert status == 422 and "previous version keeps serving" in answer["error"]["message"]
    ready, body = get_json(f"{served.url}/readyz")
    assert ready == 200 and body["ready"] is True
    client: OpenAI = client_for(served.url)
    for model in (BASE, ADAPTER, OTHER_ADAPTER):
        completion = client.chat.completions.create(model=model, messages=ask("hi"), max_tokens=2)
        assert completion.usage is not None and completion.usage.completion_tokens == 2
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="tampered", messages=ask("hi"), max_tokens=2)
    assert caught.value.status_code == 503 and "sha256" in str(caught.value.body)
    for name in cases:
        assert _admin(served, "DELETE", name)[0] == 200
    assert _admin(served, "PUT", ADAPTER, {"path": str(tiny_models.adapter)})[0] == 200
