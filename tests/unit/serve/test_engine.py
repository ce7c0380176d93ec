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


async def test_streamed_pieces_add_up_to_the_whole_text(serve_config: ServeConfig) -> None:
    engine = Engine(serve_config.model_copy(update={"max_new_tokens": 200}))
    engine.load()
    sampling = Sampling(max_tokens=200, temperature=0, ignore_eos=True)
    whole = await engine.complete(ADAPTER, MESSAGES, sampling)
    assert (whole.completion_tokens, whole.finish_reason) == (200, "length")
    assert whole.started < (whole.first_token or 0) < whole.finished
    usage = Completion()
    pieces = [piece async for piece in engine.stream(ADAPTER, MESSAGES, sampling, usage)]
    assert "".join(pieces) == whole.text == usage.text
    assert usage.completion_tokens == 200
    # Text leaves as tokens decode, not held back to word boundaries.
    assert len(pieces) > 100, len(pieces)
