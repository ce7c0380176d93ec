"""`python -m phiops_serve --config FILE` serves the configured models."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from phiops_workload.serving import ServeConfig

from .conftest import _free_port


def test_the_command_serves_the_config(serve_config: ServeConfig, tmp_path: Path) -> None:
    port = _free_port()
    path = tmp_path / "serve.json"
    config = serve_config.model_copy(update={"host": "127.0.0.1", "port": port})
    path.write_text(config.model_dump_json())
    process = subprocess.Popen(
        [sys.executable, "-m", "phiops_serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "the server exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models") as response:
            ids = [m["id"] for m in json.load(response)["data"]]
        assert ids == [config.base_model_name, *(a.name for a in config.adapters)]
    finally:
        process.terminate()
        process.wait(30)
