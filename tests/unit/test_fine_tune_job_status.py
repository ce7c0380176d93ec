"""Next step and status of a FineTuneJob from tables of observed states."""

from typing import Any

from phiops_operator.status.fine_tune_job import (
    PREFLIGHT_RETRY_SECONDS,
    FineTuneObservation,
    StepObservation,
    compute,
    next_action,
)
from phiops_workload.contracts import WorkloadResult
from phiops_workload.finetune import GIB, Progress

PREFLIGHT_OK = StepObservation(
    "p",
    "succeeded",
    WorkloadResult(
        outcome="Succeeded",
        reason="PreflightPassed",
        figures={
            "dataset": {"records": 10, "invalid": 1, "sha256": "abc", "problems": ["line 3: x"]},
            "total_steps": 20,
        },
    ),
)


def obs(**kw: Any) -> FineTuneObservation:
    base: dict[str, Any] = {"spec_hash": "h1", "backoff_limit": 2, "estimate_bytes": 4 * GIB}
    return FineTuneObservation(**(base | kw))


def ready(o: FineTuneObservation) -> tuple[str, str, str]:
    conds, fields = compute(o)
    c = next(c for c in conds if c.type == "Ready")
    return c.status, c.reason, fields["phase"]


def test_preflight_comes_first_then_training() -> None:
    assert next_action(obs()) == ("preflight", 0)
    running = StepObservation("p", "active")
    assert next_action(obs(preflight=running)) == ("none", 0)
    assert ready(obs(preflight=running)) == ("False", "Validating", "Validating")
    assert next_action(obs(preflight=PREFLIGHT_OK)) == ("train", 0)


def test_invalid_dataset_never_reaches_a_gpu() -> None:
    failed = StepObservation(
        "p",
        "failed",
        WorkloadResult(outcome="Failed", reason="InvalidDataset", message="line 2: bad JSON"),
    )
    assert next_action(obs(preflight=failed)) == ("none", 0)
    conds, _ = compute(obs(preflight=failed))
    assert ready(obs(preflight=failed)) == ("False", "InvalidDataset", "Failed")
    assert "line 2" in conds[0].message


def test_missing_inputs_are_a_waiting_state() -> None:
    waiting = obs(missing_inputs=["ConfigMap chat (spec.dataset.configMap.name)"])
    assert next_action(waiting) == ("none", 0)
    assert ready(waiting) == ("False", "WaitingForInputs", "Pending")
    conds, _ = compute(waiting)
    stalled = next(c for c in conds if c.type == "Stalled")
    assert stalled.status == "False"  # nothing is wrong: kstatus must not call it failed
    assert "spec.dataset.configMap.name" in conds[0].message


def test_a_preflight_missing_an_input_on_its_volume_runs_again_after_a_while() -> None:
    # The base model folder is copied a moment after the job was applied.
    missing = StepObservation(
        "p",
        "failed",
        WorkloadResult(
            outcome="Failed",
            reason="WaitingForInputs",
            message="the base model folder /phiops/model/tiny (spec.baseModel.pvc) is missing",
        ),
        finished="2026-01-01T00:00:00Z",
    )
    finished = 1767225600.0
    assert next_action(obs(preflight=missing, now=finished + 1)) == ("none", 0)
    due = finished + PREFLIGHT_RETRY_SECONDS
    assert next_action(obs(preflight=missing, now=due)) == ("retry-preflight", 0)
    assert ready(obs(preflight=missing, now=due)) == ("False", "WaitingForInputs", "Pending")


def test_failed_attempts_retry_within_the_budget_but_oom_never() -> None:
    evicted = StepObservation(
        "t0", "failed", exit_code=137, pod_reason="Evicted", pods=1, spec_hash="h1"
    )
    assert next_action(obs(preflight=PREFLIGHT_OK, attempts=[evicted])) == ("train", 1)
    assert ready(obs(preflight=PREFLIGHT_OK, attempts=[evicted])) == (
        "False",
        "Retrying",
        "Running",
    )
    three = [evicted, evicted, evicted]
    assert next_action(obs(preflight=PREFLIGHT_OK, attempts=three)) == ("none", 0)
    assert ready(obs(preflight=PREFLIGHT_OK, attempts=three)) == (
        "False",
        "TrainingFailed",
        "Failed",
    )
    oom = StepObservation("t0", "failed", exit_code=3, pods=1, spec_hash="h1")
    assert next_action(obs(preflight=PREFLIGHT_OK, attempts=[oom])) == ("none", 0)
    conds, _ = compute(obs(preflight=PREFLIGHT_OK, attempts=[oom]))
    assert conds[0].reason == "GPUOutOfMemory"
    assert "batchSize" in conds[0].message and "qlora" in conds[0].message


def test_progress_and_success_figures() -> None:
    active = StepObservation("t0", "active", pods=1, started="T0", spec_hash="h1")
    progress = Progress(step=5, total_steps=20, epoch=0.5, loss=2.25, tokens_per_second=100.0)
    _, fields = compute(obs(preflight=PREFLIGHT_OK, attempts=[active], progress=progress))
    assert fields["progress"] == {
        "step": 5,
        "totalSteps": 20,
        "percent": 25,
        "epoch": 0.5,
        "loss": 2.25,
        "tokensPerSecond": 100.0,
    }
    assert fields["dataset"]["problems"] == ["line 3: x"]
    done = StepObservation(
        "t0",
        "succeeded",
        WorkloadResult(
            outcome="Succeeded",
            reason="Trained",
            figures={
                "adapter": {"path": "/phiops/output", "size_bytes": 1234, "sha256": "f00"},
                "final_loss": 1.5,
                "steps": 20,
                "duration_seconds": 30.0,
            },
        ),
        pods=2,
        started="T0",
        finished="T1",
        spec_hash="h1",
    )
    o = obs(preflight=PREFLIGHT_OK, attempts=[done], output=("tone-output", "."))
    assert ready(o) == ("True", "Succeeded", "Succeeded")
    _, fields = compute(o)
    assert fields["adapter"] == {
        "claimName": "tone-output",
        "path": ".",
        "sizeBytes": 1234,
        "sha256": "f00",
    }
    assert fields["restarts"] == 1
    assert fields["progress"]["percent"] == 100


def test_estimate_over_the_declared_gpu_fails_early_and_spec_changes_are_reported() -> None:
    too_big = obs(estimate_bytes=30 * GIB, declared_gpu_bytes=24 * GIB)
    assert next_action(too_big) == ("none", 0)
    assert ready(too_big) == ("False", "InsufficientGPUMemory", "Failed")
    started = StepObservation("t0", "active", pods=1, spec_hash="h0")
    conds, _ = compute(obs(preflight=PREFLIGHT_OK, attempts=[started]))
    immutable = next(c for c in conds if c.type == "SpecImmutable")
    assert (immutable.status, immutable.reason) == ("True", "SpecChangedAfterStart")
