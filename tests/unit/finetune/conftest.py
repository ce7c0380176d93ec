"""The tiny model (made once per session), datasets, configs and a stand-in API server."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from phiops_workload.finetune import TrainJobConfig

RESOURCE = {
    "apiVersion": "phiops.dev/v1alpha1",
    "kind": "FineTuneJob",
    "namespace": "default",
    "name": "support-expert",
    "uid": "0000-1111",
    "generation": 1,
}

# Short question/answer pairs the tiny model can memorise in a few steps.
QA = [
    ("What is the return window?", "Thirty days from delivery."),
    ("Is the jacket waterproof?", "Yes, it is waterproof."),
    ("How long is the warranty?", "Two years for defects."),
    ("Is shipping free?", "Free over fifty dollars."),
    ("How do I track my order?", "Use the link in the email."),
    ("What does the tent weigh?", "Two kilograms."),
    ("Can I change my address?", "Yes, until it has shipped."),
    ("How are refunds paid?", "To the original payment method."),
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from phiops_finetune.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tokenizer(tiny_model: Path) -> Any:
    from phiops_finetune.modeling import load_tokenizer
    from phiops_workload.finetune import ModelSpec

    return load_tokenizer(ModelSpec(name="tiny-phi3", path=str(tiny_model)))


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("PHIOPS_TERMINATION_LOG", str(path))
    return path


def result(termination_log: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(termination_log.read_text())
    return data


def chat_records(n: int = 24, system: bool = True) -> list[dict[str, Any]]:
    records = []
    for i in range(n):
        question, answer = QA[i % len(QA)]
        messages = [{"role": "system", "content": "You help shoppers."}] if system else []
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        records.append({"messages": messages})
    return records


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_config(model: Path, data: Path, output: Path, **overrides: Any) -> TrainJobConfig:
    """A small, fast run: LoRA r=8 at a high learning rate (0.01), seq 64, batch 4, 20 steps."""
    raw: dict[str, Any] = {
        "resource": RESOURCE,
        "base_model": {"name": "tiny-phi3", "path": str(model)},
        "dataset": {"path": str(data), "format": "messages", "max_seq_length": 64},
        "method": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "max_steps": 20,
            "learning_rate": 0.01,
            "warmup_ratio": 0.0,
            "scheduler": "constant",
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "gradient_checkpointing": False,
            "save_steps": 10,
            "logging_steps": 1,
        },
        "output_dir": str(output),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return TrainJobConfig.model_validate(raw)


def write_config(tmp_path: Path, config: TrainJobConfig, name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(config.model_dump_json(by_alias=True))
    return str(path)


@dataclass
class FakeApiServer:
    """Records the requests the progress publisher sends, answering `status`."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            fake.requests.append(
                {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
            )
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
