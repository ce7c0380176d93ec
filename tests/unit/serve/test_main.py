"""`python -m phiops_serve --config FILE` serves the configured models, and keeps running
(not ready, saying why) when the model cannot load or Milvus cannot be reached."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from phiops_workload.serving import RetrievalConfig, ServeConfig

from .conftest import BASE, _free_port, get_json, wait_until


@contextmanager
def command(config: ServeConfig, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    path = tmp_path / "serve.json"
    path.write_text(config.model_copy(update={"host": "127.0.0.1", "port": port}).model_dump_json())
    process = subprocess.Popen(
        [sys.executable, "-m", "phiops_serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        assert process.poll() is None, "the server exited"
        try:
            return get_json(f"{url}/healthz")[0] == 200
        except OSError:
            return False

    try:
        wait_until(answering, 120, "the server to answer")
        yield url, process
    finally:
        process.terminate()
        process.wait(30)


def test_the_command_serves_the_config(serve_config: ServeConfig, tmp_path: Path) -> None:
    with command(serve_config, tmp_path) as (url, _):
        wait_until(lambda: get_json(f"{url}/readyz")[0] == 200, 120, "ready")
        ids = [m["id"] for m in get_json(f"{url}/v1/models")[1]["data"]]
        assert ids == [serve_config.base_model_name, *(a.name for a in serve_config.adapters)]


def test_the_command_survives_a_model_and_a_milvus_it_cannot_have(
    serve_config: ServeConfig, tmp_path: Path
) -> None:
    retrieval = RetrievalConfig(uri=f"http://127.0.0.1:{_free_port()}", collection="kb")
    config = serve_config.model_copy(update={"quantize": "nf4", "retrieval": retrieval})
    with command(config, tmp_path) as (url, process):

        def retried() -> Any:
            status, body = get_json(f"{url}/readyz")
            return status == 503 and body["retrieval"]["attempts"] >= 2 and body

        body = wait_until(retried, 60, "a second attempt at Milvus")
        assert "nf4 needs a CUDA GPU" in body["models"][0]["error"]
        assert body["models"][0]["name"] == BASE
        assert "Fail connecting" in body["retrieval"]["error"]
        time.sleep(1)
        assert process.poll() is None
