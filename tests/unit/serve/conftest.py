"""A tiny Phi-3 with one LoRA adapter, served on a free port for the whole session."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from phiops_serve.app import create_app
from phiops_serve.engine import Engine
from phiops_workload.serving import AdapterConfig, ServeConfig

BASE = "phi-3-tiny"
ADAPTER = "tiny-expert"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base model folder, LoRA adapter folder); the adapter starts non-zero, so it matters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from phiops_finetune.tiny_model import make_tiny_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("serve")
    base = make_tiny_model(root / "base")
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(
        r=8,
        lora_alpha=32,
        target_modules=["qkv_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    adapter = root / "adapter"
    get_peft_model(model, lora).save_pretrained(str(adapter))
    return base, adapter


@pytest.fixture(scope="session")
def serve_config(tiny_models: tuple[Path, Path]) -> ServeConfig:
    base, adapter = tiny_models
    return ServeConfig(
        base_model_path=str(base),
        base_model_name=BASE,
        adapters=[AdapterConfig(name=ADAPTER, path=str(adapter))],
        max_new_tokens=16,
        dtype="float32",
        device="cpu",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def server(serve_config: ServeConfig) -> Iterator[str]:
    """The server's base URL (`http://127.0.0.1:PORT`), once /readyz says it is ready."""
    import urllib.error
    import urllib.request

    port = _free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(Engine(serve_config)))
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz") as response:
                if response.status == 200:
                    break
        except urllib.error.HTTPError as err:
            assert err.code == 503
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.2)
    yield url
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
