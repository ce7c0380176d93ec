"""kstatus' rules for custom resources, restated (sigs.k8s.io/cli-utils/pkg/kstatus/status,
`checkGenericProperties` then the fallback for kinds it has no specific rules for), as Flux's
health checks and `kstatus`-based tools apply them to phiops's kinds:

1. `metadata.deletionTimestamp` set                          -> Terminating
2. `status.observedGeneration` present and != `generation`   -> InProgress
3. condition `Reconciling=True`                              -> InProgress
4. condition `Stalled=True`                                  -> Failed
5. condition `Ready` present: `True` -> Current, else        -> InProgress
   (the `Ready` reading Flux adds for custom resources)
6. nothing of the above (no status yet, no conditions)       -> Current

Rule 6 is why a resource the operator has not written a status for yet reads Current: wait
on `Ready` (`kubectl wait --for=condition=Ready`) where that matters (docs/operations/gitops.md).
"""

from __future__ import annotations

from typing import Any, Literal

Status = Literal["InProgress", "Failed", "Current", "Terminating"]


def compute(obj: dict[str, Any]) -> tuple[Status, str]:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating", "Resource scheduled for deletion"
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return (
            "InProgress",
            f"{obj['kind']} generation is {generation}, "
            f"but latest observed generation is {observed}",
        )
    conditions = status.get("conditions") or []
    for condition in conditions:
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return "InProgress", str(condition.get("message", ""))
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return "Failed", str(condition.get("message", ""))
    for condition in conditions:
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return "Current", str(condition.get("message", ""))
            return "InProgress", str(condition.get("message", ""))
    return "Current", "Resource is current"
