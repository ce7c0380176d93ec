"""Conditions as the Kubernetes API conventions define them.

`Ready` is the summary; `Reconciling` and `Stalled` are the abnormal-true pair that Flux's
kstatus and `kubectl wait` understand. `lastTransitionTime` moves only when a status flips.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from phiops_operator.models.base import Condition, ConditionStatus

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Observation:
    """One condition as a status computation wants it; times are filled in by `merge`."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


def merge(
    previous: Iterable[dict[str, Any]] | None,
    observed: Sequence[Observation],
    generation: int,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """New condition list: observed conditions replace their namesakes, others are kept.

    A condition keeps its lastTransitionTime when its status did not change.
    """
    stamp = now or now_rfc3339()
    by_type = {c["type"]: c for c in (previous or []) if "type" in c}
    for obs in observed:
        before = by_type.get(obs.type)
        unchanged = before is not None and before.get("status") == obs.status
        transition = before["lastTransitionTime"] if unchanged and before else stamp
        by_type[obs.type] = Condition(
            type=obs.type,
            status=obs.status,
            reason=obs.reason,
            # Never an empty string: the 1.20 API server reads "" as null and rejects it.
            message=obs.message or None,
            last_transition_time=transition,
            observed_generation=generation,
        ).to_wire()
    order = {READY: 0, RECONCILING: 1, STALLED: 2}
    return sorted(by_type.values(), key=lambda c: (order.get(c["type"], 3), c["type"]))


def ready(reason: str, message: str = "") -> list[Observation]:
    return [
        Observation(READY, "True", reason, message),
        Observation(RECONCILING, "False", reason, message),
        Observation(STALLED, "False", reason, message),
    ]


def reconciling(reason: str, message: str) -> list[Observation]:
    """Work in progress: not ready yet, but nothing is wrong."""
    return [
        Observation(READY, "False", reason, message),
        Observation(RECONCILING, "True", reason, message),
        Observation(STALLED, "False", reason, message),
    ]


def stalled(reason: str, message: str) -> list[Observation]:
    """The operator cannot make progress until someone changes something."""
    return [
        Observation(READY, "False", reason, message),
        Observation(RECONCILING, "False", reason, message),
        Observation(STALLED, "True", reason, message),
    ]


def find(conditions: Iterable[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)
