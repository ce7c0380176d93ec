"""The engine directly: a stream the caller abandons frees the model at once."""

from __future__ import annotations

import time

from phiops_serve.engine import Completion, Engine, Sampling
from phiops_workload.serving import ServeConfig

from .conftest import ADAPTER, BASE

MESSAGES = [{"role": "user", "content": "Tell me everything."}]


async def test_an_abandoned_stream_stops_generating(serve_config: ServeConfig) -> None:
    engine = Engine(serve_config.model_copy(update={"max_new_tokens": 5000}))
    engine.load()
    assert engine.ready
    usage = Completion()
    stream = engine.stream(ADAPTER, MESSAGES, Sampling(max_tokens=5000, temperature=0), usage)
    started = time.monotonic()
    async for piece in stream:
        assert isinstance(piece, str)
        break
    await stream.aclose()
    assert time.monotonic() - started < 5
    done = await engine.complete(BASE, MESSAGES, Sampling(max_tokens=3, temperature=0))
    assert done.completion_tokens == 3
    assert done.finish_reason == "length"
