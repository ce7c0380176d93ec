"""/metrics: each request moves exactly its series; in-flight requests and the 429 limit."""

from __future__ import annotations

import urllib.request

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ADAPTER, BASE, MAX_CONCURRENT, OTHER_ADAPTER, client_for, wait_until

ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Do tents leak?"}]
CHAT = "/v1/chat/completions"
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Series:
    """Every sample on /metrics: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"{url}/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


def changed(before: Series, after: Series) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if after[key] != before.get(key, 0.0) and not key[0].endswith("_created")
    }


def test_a_completion_moves_its_models_series(server: str) -> None:
    before = scrape(server)
    completion = client_for(server).chat.completions.create(
        model=ADAPTER, messages=ASK, max_tokens=5, temperature=0
    )
    after = scrape(server)
    assert completion.usage is not None
    delta = changed(before, after)
    m = (("model", ADAPTER),)
    assert delta[("phiops_serve_requests_total", (("code", "200"), ("endpoint", CHAT), *m))] == 1
    assert delta[("phiops_serve_prompt_tokens_total", m)] == completion.usage.prompt_tokens
    assert delta[("phiops_serve_generated_tokens_total", m)] == completion.usage.completion_tokens
    for histogram in (
        "phiops_serve_request_duration_seconds",
        "phiops_serve_time_to_first_token_seconds",
        "phiops_serve_generation_tokens_per_second",
    ):
        assert delta[(f"{histogram}_count", m)] == 1
        assert delta[(f"{histogram}_sum", m)] > 0
    assert delta[("phiops_serve_retrieval_duration_seconds_count", ())] == 1
    # Nothing of the base model's moved, and nothing is left in flight.
    assert not [key for key in delta if ("model", BASE) in key[1]]
    assert value(after, "phiops_serve_requests_in_flight") == 0
    assert value(after, "phiops_serve_model_loaded", model=BASE) == 1
    assert value(after, "phiops_serve_model_loaded", model=ADAPTER) == 1


def test_errors_are_counted_with_their_code_and_no_model(server: str) -> None:
    before = scrape(server)
    with pytest.raises(openai.NotFoundError):
        client_for(server).chat.completions.create(model="nope", messages=ASK)
    delta = changed(before, scrape(server))
    labels = (("code", "404"), ("endpoint", CHAT), ("model", ""))
    assert {k: v for k, v in delta.items() if k[0].startswith("phiops_")} == {
        ("phiops_serve_requests_total", labels): 1
    }


def test_the_engines_own_series_are_on_the_same_endpoint(server: str) -> None:
    client_for(server).chat.completions.create(model=BASE, messages=ASK, max_tokens=2)
    names = {name for name, _ in scrape(server)}
    for series in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:lora_requests_info",
    ):
        assert series in names


def test_requests_beyond_the_limit_get_429_and_in_flight_counts(server: str) -> None:
    url, limited = server, client_for(server)
    streams = [
        limited.chat.completions.create(
            # long enough to outlast the test (the tiny model writes ~300 tokens/s in all)
            model=BASE,
            messages=ASK,
            max_tokens=1500,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for _ in range(MAX_CONCURRENT)
    ]
    try:
        for stream in streams:
            next(iter(stream))  # admitted and generating
        assert value(scrape(url), "phiops_serve_requests_in_flight") == MAX_CONCURRENT
        with pytest.raises(openai.RateLimitError) as caught:
            limited.chat.completions.create(model=ADAPTER, messages=ASK, max_tokens=1)
        assert caught.value.status_code == 429
        assert caught.value.code == "rate_limit_exceeded"
        body = caught.value.body
        assert isinstance(body, dict) and body["type"] == "requests"
        # Listing models holds no model: always let in.
        assert [m.id for m in limited.models.list().data] == [BASE, ADAPTER, OTHER_ADAPTER]
    finally:
        for stream in streams:
            stream.close()
    # The client left: generation stops and the slot frees up.
    wait_until(lambda: value(scrape(url), "phiops_serve_requests_in_flight") == 0, 30)
    completion = limited.chat.completions.create(model=ADAPTER, messages=ASK, max_tokens=1)
    assert completion.usage is not None and completion.usage.completion_tokens == 1
    # Refused before the body is read: no model label.
    labels = {"model": "", "endpoint": CHAT, "code": "429"}
    assert value(scrape(url), "phiops_serve_requests_total", **labels) == 1
