"""The engine directly: abandoned streams, streamed pieces, and answers identical to peft's
and transformers' own generate."""

from __future__ import annotations

import time
from typing import Any

from phiops_serve.engine import Completion, Engine, Sampling
from phiops_workload.serving import AdapterConfig, ServeConfig

from .conftest import ADAPTER, BASE, OTHER_ADAPTER, TinyModels

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


async def test_answers_match_peft_and_transformers_generating_directly(
    serve_config: ServeConfig, tiny_models: TinyModels
) -> None:
    """The engine generates through the LoRA-injected base, switching adapters per request;
    the text must be what PeftModel.generate (and the plain model for the base) gives."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    other = AdapterConfig(name=OTHER_ADAPTER, path=str(tiny_models.other))
    engine = Engine(serve_config.model_copy(update={"adapters": [*serve_config.adapters, other]}))
    engine.load()
    tokenizer = engine.tokenizer
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)

    def reference(model: Any) -> str:
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        return str(
            tokenizer.decode(out[0, inputs["input_ids"].shape[-1] :], skip_special_tokens=True)
        )

    plain = AutoModelForCausalLM.from_pretrained(tiny_models.base).eval()
    expected = {BASE: reference(plain)}
    for name, path in ((ADAPTER, tiny_models.adapter), (OTHER_ADAPTER, tiny_models.other)):
        fresh = AutoModelForCausalLM.from_pretrained(tiny_models.base)
        expected[name] = reference(PeftModel.from_pretrained(fresh, str(path)).eval())
    assert len(set(expected.values())) == 3
    greedy = Sampling(max_tokens=12, temperature=0)
    for name in (OTHER_ADAPTER, BASE, ADAPTER, BASE, OTHER_ADAPTER, ADAPTER):
        assert (await engine.complete(name, MESSAGES, greedy)).text == expected[name], name
