"""The server's Prometheus metrics, in a registry of each app's own (several apps can live in
one process, as in tests). Alert rules depend on these names: do not rename them."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from phiops_serve.engine import Completion
from phiops_serve.loading import ModelState

# From a few tokens on a GPU to a long answer on a CPU.
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_ENGINE_PREFIXES = ("vllm:", "# HELP vllm:", "# TYPE vllm:")
_RETRIEVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "phiops_serve_requests_total",
            "API requests answered, by model ('' when none applies), endpoint and status code.",
            ["model", "endpoint", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "phiops_serve_request_duration_seconds",
            "Chat completion time, from arrival to the last byte.",
            ["model"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "phiops_serve_time_to_first_token_seconds",
            "From arrival to the first generated token (waiting and retrieval included).",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "phiops_serve_prompt_tokens_total",
            "Prompt tokens read (retrieved context included).",
            ["model"],
            registry=registry,
        )
        self.generated_tokens = Counter(
            "phiops_serve_generated_tokens_total",
            "Completion tokens generated.",
            ["model"],
            registry=registry,
        )
        self.tokens_per_second = Histogram(
            "phiops_serve_generation_tokens_per_second",
            "Completion tokens per second of generation (prefill included, waiting not).",
            ["model"],
            buckets=_RATE_BUCKETS,
            registry=registry,
        )
        self.retrieval = Histogram(
            "phiops_serve_retrieval_duration_seconds",
            "Knowledge base searches: query embedding plus Milvus search.",
            buckets=_RETRIEVAL_BUCKETS,
            registry=registry,
        )
        self.context_dropped = Counter(
            "phiops_serve_context_chunks_dropped_total",
            "Retrieved chunks left out of prompts so that the answer's max_tokens fit in the "
            "model's context (the lowest-ranked go first).",
            ["model"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "phiops_serve_requests_in_flight",
            "Chat completion and retrieve requests being answered or waiting for the model.",
            registry=registry,
        )
        self.model_loaded = Gauge(
            "phiops_serve_model_loaded",
            "1 when the model (the base or an adapter) is loaded and serving, else 0.",
            ["model"],
            registry=registry,
        )

    def completion(self, model: str, arrived: float, done: Completion) -> None:
        """Account for one finished generation (`arrived`: time.monotonic() at arrival)."""
        self.prompt_tokens.labels(model).inc(done.prompt_tokens)
        self.generated_tokens.labels(model).inc(done.completion_tokens)
        if done.first_token is not None:
            self.time_to_first_token.labels(model).observe(done.first_token - arrived)
        elapsed = done.finished - done.started
        if done.completion_tokens and elapsed > 0:
            self.tokens_per_second.labels(model).observe(done.completion_tokens / elapsed)

    def render(self, states: Iterable[ModelState], engine: bool = False) -> bytes:
        """The exposition text; with `engine`, vLLM's `vllm:*` series follow (vLLM registers
        them in the process-wide registry)."""
        self.model_loaded.clear()  # adapters come and go while serving
        for state in states:
            self.model_loaded.labels(state.name).set(1 if state.loaded else 0)
        text = generate_latest(self.registry)
        if engine:
            text += _engine_series()
        return text


def _engine_series() -> bytes:
    """vLLM's series only (the default registry also holds process and GC collectors, which
    a second copy of would confuse a scrape)."""
    lines = generate_latest(REGISTRY).decode().splitlines(keepends=True)
    kept = [line for line in lines if line.startswith(_ENGINE_PREFIXES)]
    return "".join(kept).encode()
