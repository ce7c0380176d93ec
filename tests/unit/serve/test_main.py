"""`python -m phiops_serve --config FILE` keeps running (not ready, saying why) when the model
cannot load or Milvus cannot be reached. (The session server of the other tests is started
by the same command.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from phiops_workload.serving import RetrievalConfig, ServeConfig

from .conftest import BASE, _free_port, command, get_json, wait_until


def test_the_command_survives_a_model_and_a_milvus_it_cannot_have(
    serve_config: ServeConfig, tmp_path: Path
) -> None:
    retrieval = RetrievalConfig(uri=f"http://127.0.0.1:{_free_port()}", collection="kb")
    config = serve_config.model_copy(update={"quantize": "nf4", "retrieval": retrieval})
    with command(config, tmp_path) as server:
        url, process = server.url, server.process

        def retried() -> Any:
            status, body = get_json(f"{url}/readyz")
            return status == 503 and body["retrieval"]["attempts"] >= 2 and body

        body = wait_until(retried, 60, "a second attempt at Milvus")
        assert "nf4 needs a CUDA GPU" in body["models"][0]["error"]
        assert body["models"][0]["name"] == BASE
        assert "Fail connecting" in body["retrieval"]["error"]
        time.sleep(1)
        assert process.poll() is None
