"""Conditions every kind shares."""

from __future__ import annotations

from typing import Literal

from phiops_operator.conditions import Observation, reconciling, stalled

ACCEPTED = "Accepted"
JobState = Literal["active", "succeeded", "failed"]


def invalid_spec(message: str) -> list[Observation]:
    """The spec cannot work as written: nothing is built until the user fixes it."""
    return [
        *stalled("InvalidSpec", message),
        Observation(ACCEPTED, "False", "InvalidSpec", message),
    ]


def awaiting_workload(config_name: str, workload: str) -> list[Observation]:
    """The spec is valid and its configuration rendered; the workload itself is not run yet."""
    message = (
        f"spec accepted and rendered into ConfigMap {config_name}; "
        f"this operator version does not run the {workload} workload yet"
    )
    return [
        *reconciling("WorkloadPending", message),
        Observation(ACCEPTED, "True", "SpecValid", f"rendered into ConfigMap {config_name}"),
    ]
