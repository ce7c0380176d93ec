"""The server against the official `openai` client: models, completions, streaming, errors."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest
from openai import OpenAI
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from .conftest import ADAPTER, BASE, OTHER_ADAPTER, client_for

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the return window?"}
]


@pytest.fixture(scope="module")
def client(server: str) -> OpenAI:
    return client_for(server)


def _complete(
    client: OpenAI,
    model: str,
    temperature: float = 0,
    top_p: float | None = None,
    seed: int | None = None,
    stop: list[str] | None = None,
) -> ChatCompletion:
    return client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        temperature=temperature,
        max_tokens=8,
        top_p=top_p,
        seed=seed,
        stop=stop,
    )


def _stream(client: OpenAI, model: str) -> tuple[str, list[str | None], CompletionUsage | None]:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons: list[str | None] = [c.choices[0].finish_reason for c in chunks if c.choices]
    return text, reasons, chunks[-1].usage


def test_health_and_readiness(server: str) -> None:
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(server + path) as response:
            assert response.status == 200
    with urllib.request.urlopen(server + "/readyz") as response:
        assert json.load(response)["loaded"] == [BASE, ADAPTER, OTHER_ADAPTER]


def test_lists_the_base_and_its_adapters(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {BASE, ADAPTER, OTHER_ADAPTER}
    assert models[ADAPTER].model_extra == {"parent": BASE}
    assert models[BASE].model_extra == {"parent": None}


def test_completion_counts_tokens_and_is_deterministic_when_greedy(client: OpenAI) -> None:
    first = _complete(client, BASE)
    assert first.object == "chat.completion"
    assert first.model == BASE
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].finish_reason in ("stop", "length")
    assert first.usage is not None
    assert first.usage.prompt_tokens > 0
    assert 0 < first.usage.completion_tokens <= 8
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert _complete(client, BASE).choices[0].message.content == first.choices[0].message.content


def test_the_adapter_changes_the_answer(client: OpenAI) -> None:
    base = _complete(client, BASE).choices[0].message.content
    expert = _complete(client, ADAPTER)
    assert expert.model == ADAPTER
    assert expert.choices[0].message.content != base
    # Selecting the base again really switches the adapter off.
    assert _complete(client, BASE).choices[0].message.content == base


@pytest.mark.parametrize("model", [BASE, ADAPTER])
def test_streaming_matches_the_whole_answer(client: OpenAI, model: str) -> None:
    whole = _complete(client, model)
    text, reasons, usage = _stream(client, model)
    assert text == whole.choices[0].message.content
    assert reasons[-1] == whole.choices[0].finish_reason
    assert all(r is None for r in reasons[:-1])
    assert usage == whole.usage


def test_streams_end_with_done(server: str) -> None:
    body = {"model": BASE, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    request = urllib.request.Request(
        f"{server}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_stop_sequences_cut_the_answer(client: OpenAI) -> None:
    whole = _complete(client, BASE).choices[0].message.content
    assert whole
    stop = whole[len(whole) // 2 :][:2] or whole
    cut = _complete(client, BASE, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == whole[: whole.find(stop)]


def test_unknown_model_is_404_model_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        _complete(client, "no-such-model")
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def test_invalid_temperature_is_400_naming_it(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=BASE,
            messages=MESSAGES,
            temperature=-1,
        )
    assert caught.value.status_code == 400
    assert caught.value.param == "temperature"
    body = caught.value.body
    assert isinstance(body, dict)
    assert "temperature" in body["message"]
    assert set(body) == {"message", "type", "param", "code"}


def test_sampling_with_a_seed_repeats(client: OpenAI) -> None:
    first = _complete(client, ADAPTER, temperature=0.9, top_p=0.9, seed=7)
    again = _complete(client, ADAPTER, temperature=0.9, top_p=0.9, seed=7)
    assert first.choices[0].message.content == again.choices[0].message.content


def test_streaming_honours_stop_sequences(client: OpenAI) -> None:
    whole = _complete(client, ADAPTER).choices[0].message.content
    assert whole
    stop = whole[len(whole) // 2 :][:2] or whole
    chunks = list(
        client.chat.completions.create(
            model=ADAPTER,
            messages=MESSAGES,
            temperature=0,
            max_tokens=8,
            stop=stop,
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole[: whole.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_engine_takes_is_400_naming_messages(
    client: OpenAI, stream: bool
) -> None:
    long: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "tents and boots " * 1500}
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=BASE, messages=long, max_tokens=4, stream=stream)
    assert caught.value.param == "messages"
    assert "at most 2048 tokens" in str(caught.value.body)
