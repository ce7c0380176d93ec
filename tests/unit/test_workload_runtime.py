"""A workload entrypoint reads its config and always leaves a result behind."""

import json
from pathlib import Path

import pytest
from phiops_workload.contracts import WorkloadConfig, WorkloadResult
from phiops_workload.runtime import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_OK, WorkloadError, run

CONFIG = {
    "resource": {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "KnowledgeBase",
        "namespace": "ns",
        "name": "kb",
        "uid": "u",
        "generation": 1,
    },
    "spec": {"sources": []},
}


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    monkeypatch.setenv("PHIOPS_TERMINATION_LOG", str(path))
    return path


def write_config(tmp_path: Path, data: object) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_success_writes_result_and_exits_zero(tmp_path: Path, termination_log: Path) -> None:
    def main(config: WorkloadConfig) -> WorkloadResult:
        return WorkloadResult(
            outcome="Succeeded", reason="Done", figures={"name": config.resource.name}
        )

    code = run("t", "KnowledgeBase", main, ["--config", write_config(tmp_path, CONFIG)])
    assert code == EXIT_OK
    assert json.loads(termination_log.read_text())["figures"] == {"name": "kb"}


def test_workload_error_keeps_its_reason_and_exit_code(
    tmp_path: Path, termination_log: Path
) -> None:
    def main(config: WorkloadConfig) -> WorkloadResult:
        raise WorkloadError("SourceNotFound", "ConfigMap docs not found", exit_code=7)

    code = run("t", "KnowledgeBase", main, ["--config", write_config(tmp_path, CONFIG)])
    assert code == 7
    result = json.loads(termination_log.read_text())
    assert (result["outcome"], result["reason"]) == ("Failed", "SourceNotFound")


def test_bad_or_foreign_config_is_reported(tmp_path: Path, termination_log: Path) -> None:
    def main(config: WorkloadConfig) -> WorkloadResult:  # pragma: no cover - never reached
        raise AssertionError("main must not run")

    assert (
        run("t", "KnowledgeBase", main, ["--config", str(tmp_path / "missing")]) == EXIT_BAD_CONFIG
    )
    assert json.loads(termination_log.read_text())["reason"] == "InvalidConfig"
    foreign = run("t", "FineTuneJob", main, ["--config", write_config(tmp_path, CONFIG)])
    assert foreign == EXIT_BAD_CONFIG
    assert "config is for a KnowledgeBase" in json.loads(termination_log.read_text())["message"]


def test_failed_result_exits_non_zero(tmp_path: Path, termination_log: Path) -> None:
    def main(config: WorkloadConfig) -> WorkloadResult:
        return WorkloadResult(outcome="Failed", reason="Partial")

    assert (
        run("t", "KnowledgeBase", main, ["--config", write_config(tmp_path, CONFIG)]) == EXIT_FAILED
    )
