"""The progress publisher against a stand-in API server, and the entrypoint's other paths."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from phiops_finetune import cli
from phiops_finetune.publisher import ProgressPublisher, api_url
from phiops_workload.finetune import PROGRESS_KEY, Progress, ProgressTarget
from phiops_workload.runtime import EXIT_BAD_CONFIG

from tests.unit.finetune.conftest import RESOURCE, FakeApiServer, result

TARGET = ProgressTarget(namespace="ml", config_map="job-progress")


def test_publisher_throttles_and_always_sends_the_last(
    api_server: FakeApiServer, tmp_path: Path
) -> None:
    with ProgressPublisher(
        TARGET, base_url=api_server.url, serviceaccount_dir=str(tmp_path), interval=0.3
    ) as publisher:
        for step in range(1, 31):
            publisher.submit(Progress(step=step, total_steps=30))
            time.sleep(0.01)
    sent = [
        Progress.model_validate_json(r["body"]["data"][PROGRESS_KEY]) for r in api_server.requests
    ]
    assert 2 <= len(sent) <= 4, [p.step for p in sent]  # ~0.3 s of submissions, 0.3 s apart
    assert sent[-1].step == 30
    assert publisher.published == len(sent) and publisher.failures == 0
    request = api_server.requests[0]
    assert request["path"] == "/api/v1/namespaces/ml/configmaps/job-progress"
    assert "Authorization" not in request["headers"]  # no token file in that folder


def test_publishing_failures_are_logged_never_raised(
    api_server: FakeApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api_server.status = 403
    publisher = ProgressPublisher(TARGET, base_url=api_server.url, interval=0.0)
    assert publisher.publish(Progress(step=1, total_steps=2)) is False
    assert publisher.failures == 1 and "HTTP 403" in caplog.text

    closed = ProgressPublisher(TARGET, base_url="http://127.0.0.1:1", interval=0.0)
    with closed:
        closed.submit(Progress(step=1, total_steps=2))
    assert closed.failures >= 1 and closed.published == 0


def test_api_url_from_the_pod_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHIOPS_KUBE_API_URL", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    assert api_url() == "https://10.0.0.1:6443"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert api_url() == "https://[fd00::1]:6443"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert api_url() is None
    monkeypatch.setenv("PHIOPS_KUBE_API_URL", "http://127.0.0.1:8001/")
    assert api_url() == "http://127.0.0.1:8001"


def test_make_tiny_model_is_deterministic_and_loads(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Phi3ForCausalLM

    args = ["--layers", "1", "--hidden", "32", "--vocab", "600"]
    assert cli.main(["make-tiny-model", "--out", str(tmp_path / "a"), *args]) == 0
    assert cli.main(["make-tiny-model", "--out", str(tmp_path / "b"), *args]) == 0
    for name in ("model.safetensors", "tokenizer.json"):
        digests = {hashlib.sha256((tmp_path / d / name).read_bytes()).hexdigest() for d in "ab"}
        assert len(digests) == 1, name

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert isinstance(model, Phi3ForCausalLM)
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 32
    assert model.config.vocab_size >= len(tokenizer) > 500
    for token in ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"):
        assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1, token
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert end in model.generation_config.eos_token_id
    text = "The warranty covers defects for two years."
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_bad_and_foreign_configs_exit_2(tmp_path: Path, termination_log: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{}")
    assert cli.main(["train", "--config", str(path)]) == EXIT_BAD_CONFIG
    assert result(termination_log)["reason"] == "InvalidConfig"
    assert cli.main(["preflight", "--config", str(tmp_path / "absent.json")]) == EXIT_BAD_CONFIG

    foreign = {
        "resource": {**RESOURCE, "kind": "KnowledgeBase"},
        "base_model": {"name": "m"},
        "dataset": {"path": "d"},
        "output_dir": "o",
    }
    path.write_text(json.dumps(foreign))
    assert cli.main(["--config", str(path)]) == EXIT_BAD_CONFIG  # the bare form is `train`
    assert "serves a FineTuneJob" in result(termination_log)["message"]
