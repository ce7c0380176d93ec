"""The server's parts without a model: config, request checks, stop handling, RAG, readiness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from phiops_embed.retrieval import Hit
from phiops_serve.app import create_app
from phiops_serve.engine_args import (
    engine_environment,
    engine_kwargs,
    lora_rank_limit,
    lora_slots,
    resolve_dtype,
)
from phiops_serve.errors import ApiError
from phiops_serve.loading import LoadError, lora_rank
from phiops_serve.rag import (
    DEFAULT_CONTEXT_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    Grounding,
    citations,
    fitted,
    grounded_messages,
)
from phiops_serve.validation import parse_request, parse_retrieve
from phiops_serve.zero_adapter import write_zero_adapter
from phiops_workload.serving import EngineConfig, ServeConfig
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


def test_engine_arguments_follow_the_settings() -> None:
    config = ServeConfig.model_validate(
        {
            **CONFIG,
            "engine": {"max_model_len": 4096, "max_num_seqs": 32, "enforce_eager": True},
        }
    )
    cpu = engine_kwargs(config, cpu=True, max_loras=2, max_lora_rank=16)
    assert cpu["model"] == cpu["tokenizer"] == "/models/phi-3"
    assert cpu["served_model_name"] == ["phi-3-mini"]
    assert (cpu["max_model_len"], cpu["max_num_seqs"], cpu["enforce_eager"]) == (4096, 32, True)
    assert cpu["enable_lora"] and cpu["enable_prefix_caching"]
    assert (cpu["max_loras"], cpu["max_lora_rank"]) == (2, 16)
    assert cpu["max_cpu_loras"] >= cpu["max_loras"]
    assert cpu["dtype"] == "float32" and "gpu_memory_utilization" not in cpu
    gpu = engine_kwargs(
        config.model_copy(
            update={
                "quantize": "nf4",
                "engine": config.engine.model_copy(
                    update={"tensor_parallel_size": 2, "gpu_memory_utilization": 0.8}
                ),
            }
        ),
        cpu=False,
        max_loras=1,
        max_lora_rank=8,
    )
    assert gpu["quantization"] == "bitsandbytes" and gpu["dtype"] == "auto"
    assert gpu["tensor_parallel_size"] == 2
    assert gpu["gpu_memory_utilization"] == 0.8
    # Unset: eager on the CPU build, compiled (CUDA graphs) on GPUs.
    unset = config.model_copy(update={"engine": EngineConfig()})
    assert engine_kwargs(unset, cpu=True, max_loras=1, max_lora_rank=8)["enforce_eager"] is True
    assert engine_kwargs(unset, cpu=False, max_loras=1, max_lora_rank=8)["enforce_eager"] is False
    with pytest.raises(LoadError, match="nf4 needs a CUDA GPU"):
        engine_kwargs(
            config.model_copy(update={"quantize": "nf4"}), cpu=True, max_loras=1, max_lora_rank=8
        )


def test_lora_slots_and_ranks_are_sized_from_the_adapters() -> None:
    config = ServeConfig.model_validate(CONFIG)  # one adapter
    assert lora_slots(config, base_rides_adapter=False) == 1
    assert lora_slots(config, base_rides_adapter=True) == 2  # the base's zero adapter
    none = config.model_copy(update={"adapters": []})
    assert lora_slots(none, base_rides_adapter=False) == 1  # room for the first hot load
    assert lora_rank_limit(config, []) == 16
    assert lora_rank_limit(config, [8, 24]) == 32  # rounded up to a size vLLM is built for
    fixed = config.model_copy(update={"engine": EngineConfig(max_lora_rank=64, max_loras=5)})
    assert lora_rank_limit(fixed, [8]) == 64 and lora_slots(fixed, True) == 6
    with pytest.raises(ValidationError, match="max_lora_rank"):
        EngineConfig(max_lora_rank=12)


def test_the_engine_environment_keeps_vllm_in_the_work_dir(tmp_path: Path) -> None:
    config = ServeConfig.model_validate(CONFIG)
    env = engine_environment(config, tmp_path)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    for key in ("VLLM_CACHE_ROOT", "VLLM_RPC_BASE_PATH", "TMPDIR"):
        assert env[key].startswith(str(tmp_path))
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    sized = config.model_copy(update={"engine": EngineConfig(kv_cache_space_gib=3)})
    assert engine_environment(sized, tmp_path)["VLLM_CPU_KVCACHE_SPACE"] == "3"


def test_the_zero_adapter_changes_nothing_and_loads_as_lora(tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from phiops_finetune.tiny_model import make_tiny_model
    from transformers import AutoModelForCausalLM

    base_dir = make_tiny_model(tmp_path / "base")
    config = json.loads((base_dir / "config.json").read_text())
    zero = write_zero_adapter(config, tmp_path / "zero")
    assert lora_rank(str(zero)) == 1
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = model(ids).logits
        wrapped = PeftModel.from_pretrained(model, str(zero))(ids).logits
    assert torch.equal(plain, wrapped)


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


def test_the_lowest_ranked_chunks_make_room_for_the_answer() -> None:
    """A prompt is as many tokens as its characters here."""
    hits = [hit(f"docs/{name}.md", "x" * 20) for name in ("best", "second", "third")]
    grounding = Grounding(USER, hits, None, None, cite=True, used=3)

    def tokenize(messages: list[dict[str, str]]) -> list[int]:
        return [0] * sum(len(m["content"]) for m in messages)

    sizes = [len(tokenize(grounding.first(n).messages)) for n in range(4)]
    context = sizes[3] + 50  # every chunk fits in the prompt; the answer's room decides

    def kept(completion: int, context: int = context) -> list[str]:
        ids, fit = fitted(grounding, tokenize, lambda i: context - len(i), completion)
        assert len(ids) == len(tokenize(fit.messages))
        assert fit.dropped == 3 - fit.used
        return [c["doc_id"] for c in fit.citations or []]

    assert kept(50) == ["docs/best.md", "docs/second.md", "docs/third.md"]
    assert kept(51) == ["docs/best.md", "docs/second.md"]
    assert kept(context - sizes[1]) == ["docs/best.md"]
    # No room for the whole answer beside even the best chunk: that chunk stays.
    assert kept(context) == ["docs/best.md"]
    # Not a token left after the best chunk: the prompt goes without context.
    assert kept(1, context=sizes[1]) == []
    # No known limit (an engine without max_model_len): everything goes in.
    assert fitted(grounding, tokenize, lambda i: None, 10**6)[1].used == 3


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
            "path": "/models/phi-3",
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


def test_auto_dtype_is_float32_on_cpu_and_the_models_own_on_gpu() -> None:
    auto = ServeConfig.model_validate({**CONFIG, "retrieval": None})
    assert resolve_dtype(auto, cpu=True) == "float32"
    assert resolve_dtype(auto, cpu=False) == "auto"
    bf16 = auto.model_copy(update={"dtype": "bfloat16"})
    assert resolve_dtype(bf16, cpu=True) == "bfloat16"
