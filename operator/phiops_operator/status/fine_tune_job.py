"""PURE: what was observed about a FineTuneJob's inputs, pre-flight and training attempts ->
the next step to take, conditions and status fields."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from phiops_workload.contracts import WorkloadResult
from phiops_workload.finetune import (
    REASON_GPU_OOM,
    REASON_INVALID_DATASET,
    REASON_TRAINING_FAILED,
    REASON_WAITING_FOR_INPUTS,
    PreflightFigures,
    Progress,
    TrainFigures,
    format_gib,
)
from phiops_workload.runtime import EXIT_OUT_OF_MEMORY
from pydantic import ValidationError

from phiops_operator import conditions
from phiops_operator.conditions import Observation
from phiops_operator.status.common import ACCEPTED, JobState
from phiops_operator.units import parse_time

SPEC_IMMUTABLE = "SpecImmutable"
# A pre-flight that found an input missing on its volume runs again this long after.
PREFLIGHT_RETRY_SECONDS = 15
OOM_ADVICE = (
    "the training pod ran out of GPU memory; lower training.batchSize or dataset.maxSeqLength, "
    "use method qlora, or turn on training.gradientCheckpointing, then create a new FineTuneJob"
)


@dataclass(frozen=True)
class StepObservation:
    """A pre-flight Job or one training attempt, with what its last pod said."""

    name: str
    state: JobState
    result: WorkloadResult | None = None
    exit_code: int | None = None
    pod_reason: str | None = None
    pods: int = 0
    started: str | None = None
    finished: str | None = None
    spec_hash: str | None = None


@dataclass(frozen=True)
class FineTuneObservation:
    spec_hash: str
    backoff_limit: int
    estimate_bytes: int
    declared_gpu_bytes: int | None = None
    missing_inputs: Sequence[str] = ()
    preflight: StepObservation | None = None
    attempts: Sequence[StepObservation] = ()
    progress: Progress | None = None
    output: tuple[str, str] = ("", ".")
    now: float = 0.0
    """When this was observed (epoch seconds): when a waiting pre-flight may run again."""


Action = tuple[Literal["preflight", "retry-preflight", "train", "none"], int]


def _waiting(step: StepObservation | None) -> bool:
    """The pre-flight found an input not there yet: waiting, not failed."""
    return bool(
        step
        and step.state == "failed"
        and step.result
        and step.result.reason == REASON_WAITING_FOR_INPUTS
    )


def _out_of_memory(step: StepObservation) -> bool:
    reason = step.result.reason if step.result else None
    return step.exit_code == EXIT_OUT_OF_MEMORY or reason == REASON_GPU_OOM


def preflight_retry_in(obs: FineTuneObservation) -> float | None:
    """Seconds until a pre-flight that found its inputs missing is run again (None when no
    pre-flight waits): the reconcile loop's deadline for it."""
    if obs.preflight is None or not _waiting(obs.preflight):
        return None
    finished = parse_time(obs.preflight.finished) if obs.preflight.finished else 0.0
    return max(0.0, finished + PREFLIGHT_RETRY_SECONDS - obs.now)


def next_action(obs: FineTuneObservation) -> Action:
    """What to start now, decided from observation alone (so a restarted operator agrees)."""
    if obs.missing_inputs or _insufficient(obs):
        return ("none", 0)
    if obs.preflight is None:
        return ("preflight", 0)
    if _waiting(obs.preflight):
        finished = parse_time(obs.preflight.finished) if obs.preflight.finished else 0.0
        due = obs.now >= finished + PREFLIGHT_RETRY_SECONDS
        return ("retry-preflight", 0) if due else ("none", 0)
    if obs.preflight.state != "succeeded":
        return ("none", 0)
    if not obs.attempts:
        return ("train", 0)
    last = obs.attempts[-1]
    if last.state != "failed" or _out_of_memory(last):
        return ("none", 0)
    if len(obs.attempts) <= obs.backoff_limit:
        return ("train", len(obs.attempts))
    return ("none", 0)


def _insufficient(obs: FineTuneObservation) -> bool:
    return obs.declared_gpu_bytes is not None and obs.estimate_bytes > obs.declared_gpu_bytes


def _preflight_figures(step: StepObservation | None) -> PreflightFigures | None:
    if step is None or step.result is None or step.state != "succeeded":
        return None
    try:
        return PreflightFigures.model_validate(step.result.figures)
    except ValidationError:
        return None


def _train_figures(step: StepObservation) -> TrainFigures | None:
    if step.result is None:
        return None
    try:
        return TrainFigures.model_validate(step.result.figures)
    except ValidationError:
        return None


def _progress_fields(progress: Progress | None, total: int | None) -> dict[str, Any]:
    if progress is None and total is None:
        return {}
    out: dict[str, Any] = {"step": progress.step if progress else 0}
    total_steps = (progress.total_steps if progress else None) or total
    if total_steps:
        out["totalSteps"] = total_steps
        out["percent"] = min(100, int(100 * out["step"] / total_steps))
    if progress is not None:
        for key, value in (
            ("epoch", progress.epoch),
            ("loss", progress.loss),
            ("evalLoss", progress.eval_loss),
            ("tokensPerSecond", progress.tokens_per_second),
            ("etaSeconds", progress.eta_seconds),
        ):
            if value is not None:
                out[key] = round(value, 4) if isinstance(value, float) else value
    return out


def compute(obs: FineTuneObservation) -> tuple[list[Observation], dict[str, Any]]:
    estimate = format_gib(obs.estimate_bytes)
    fields: dict[str, Any] = {"estimatedGpuMemory": estimate}
    accepted = [Observation(ACCEPTED, "True", "SpecValid", "spec is valid")]
    started_hash = next((a.spec_hash for a in obs.attempts if a.spec_hash), None)
    if started_hash is not None:
        fields["specHash"] = started_hash
        if started_hash != obs.spec_hash:
            accepted.append(
                Observation(
                    SPEC_IMMUTABLE,
                    "True",
                    "SpecChangedAfterStart",
                    "the spec changed after training started and is NOT applied; "
                    "create a new FineTuneJob for a new run",
                )
            )
        else:
            accepted.append(
                Observation(
                    SPEC_IMMUTABLE, "False", "SpecUnchanged", "the spec training started with"
                )
            )
    preflight = _preflight_figures(obs.preflight)
    if preflight is not None:
        report = preflight.dataset
        fields["dataset"] = {
            "records": report.records,
            "invalid": report.invalid,
            "sha256": report.sha256,
            **({"problems": report.problems[:20]} if report.problems else {}),
        }

    def done(phase: str, observed: list[Observation]) -> tuple[list[Observation], dict[str, Any]]:
        fields["phase"] = phase
        return [*observed, *accepted], fields

    if _insufficient(obs):
        message = (
            f"estimated peak GPU memory {estimate} exceeds resources.gpuMemory "
            f"{format_gib(obs.declared_gpu_bytes or 0)}; use method qlora, a smaller "
            "training.batchSize or dataset.maxSeqLength, or a larger GPU"
        )
        return done("Failed", conditions.stalled("InsufficientGPUMemory", message))
    if obs.missing_inputs:
        message = (
            f"waiting for {', '.join(obs.missing_inputs)}; nothing is created until they exist, "
            "then the job starts by itself"
        )
        return done("Pending", conditions.reconciling(REASON_WAITING_FOR_INPUTS, message))
    if _waiting(obs.preflight):
        assert obs.preflight is not None and obs.preflight.result is not None
        message = (
            f"{obs.preflight.result.message}; the pre-flight checks again every "
            f"{PREFLIGHT_RETRY_SECONDS}s"
        )
        return done("Pending", conditions.reconciling(REASON_WAITING_FOR_INPUTS, message))
    if obs.preflight is None or obs.preflight.state == "active":
        return done("Validating", conditions.reconciling("Validating", "validating the dataset"))
    if obs.preflight.state == "failed":
        result = obs.preflight.result
        reason = result.reason if result else REASON_INVALID_DATASET
        message = result.message if result else "pre-flight failed; see the pre-flight Job's logs"
        return done("Failed", conditions.stalled(reason, message))

    total = preflight.total_steps if preflight else None
    if not obs.attempts:
        fields["progress"] = _progress_fields(None, total)
        return done("Pending", conditions.reconciling("Scheduling", "starting the training pod"))
    last = obs.attempts[-1]
    fields["restarts"] = max(0, sum(a.pods for a in obs.attempts) - 1)
    fields["startTime"] = obs.attempts[0].started
    fields["progress"] = _progress_fields(obs.progress, total)
    if last.state == "succeeded":
        figures = _train_figures(last)
        claim_name, sub = obs.output
        if figures is not None:
            fields["adapter"] = {
                "claimName": claim_name,
                "path": sub,
                "sizeBytes": figures.adapter.size_bytes,
                "sha256": figures.adapter.sha256,
            }
            fields["progress"]["step"] = figures.steps
            fields["progress"]["percent"] = 100
            if figures.final_loss is not None:
                fields["progress"]["loss"] = round(figures.final_loss, 4)
        fields["completionTime"] = last.finished
        message = f"adapter written to PersistentVolumeClaim {claim_name}"
        return done("Succeeded", conditions.ready("Succeeded", message))
    if last.state == "failed":
        if _out_of_memory(last):
            return done("Failed", conditions.stalled(REASON_GPU_OOM, OOM_ADVICE))
        if len(obs.attempts) > obs.backoff_limit:
            result = last.result
            why = result.message if result else f"exit code {last.exit_code} ({last.pod_reason})"
            message = f"training failed after {len(obs.attempts)} attempt(s): {why}"
            fields["completionTime"] = last.finished
            return done("Failed", conditions.stalled(REASON_TRAINING_FAILED, message))
        message = f"attempt {len(obs.attempts)} failed ({last.pod_reason or 'Error'}); retrying"
        return done("Running", conditions.reconciling("Retrying", message))
    step = fields["progress"].get("step", 0)
    message = f"training: step {step}/{fields['progress'].get('totalSteps', '?')}"
    return done("Running", conditions.reconciling("Training", message))
