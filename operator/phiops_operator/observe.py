"""Reading what workload Jobs did: their state and their pods' termination messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phiops_workload.contracts import WorkloadResult
from pydantic import ValidationError

from phiops_operator.k8s import Kube
from phiops_operator.status.common import JobState


def job_state(job: dict[str, Any]) -> JobState:
    job_status = job.get("status") or {}
    if int(job_status.get("succeeded") or 0) >= 1:
        return "succeeded"
    failed = any(
        c.get("type") == "Failed" and c.get("status") == "True"
        for c in job_status.get("conditions") or []
    )
    return "failed" if failed else "active"


def job_times(job: dict[str, Any]) -> tuple[str | None, str | None]:
    """(started, finished) of a Job; finished is the completion or failure time."""
    job_status = job.get("status") or {}
    finished = job_status.get("completionTime")
    if finished is None and job_state(job) == "failed":
        finished = (job_status.get("conditions") or [{}])[-1].get("lastTransitionTime")
    return job_status.get("startTime"), finished


@dataclass(frozen=True)
class PodOutcome:
    """What the Job's latest finished pod reported, and how many pods the Job ran."""

    result: WorkloadResult | None
    exit_code: int | None
    pod_reason: str | None
    pods: int


async def job_outcome(kube: Kube, namespace: str, job: str, fallback_reason: str) -> PodOutcome:
    """The termination message of the Job's latest finished pod, parsed as a WorkloadResult.

    A message that is not one (a crash before the workload could write it, with the log tail
    as the message) becomes a Failed result with `fallback_reason`.
    """
    pods = await kube.list("v1", "Pod", namespace, f"job-name={job}")
    pods.sort(key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
    for pod in pods:
        pod_status = pod.get("status") or {}
        for container in pod_status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if not terminated:
                continue
            message = terminated.get("message") or ""
            exit_code = terminated.get("exitCode")
            try:
                result: WorkloadResult | None = WorkloadResult.model_validate_json(message)
            except ValidationError:
                text = message.strip()[-500:] or f"exit code {exit_code}"
                result = WorkloadResult(outcome="Failed", reason=fallback_reason, message=text)
            reason = pod_status.get("reason") or terminated.get("reason")
            return PodOutcome(result, exit_code, reason, len(pods))
    return PodOutcome(None, None, None, len(pods))
