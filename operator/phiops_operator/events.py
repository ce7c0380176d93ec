"""Events for a resource's Ready transitions: what `kubectl describe` and `kubectl get events`
show an admin who does not read conditions. One Event per change of Ready's status or reason
(never per reconcile, so an idle or retrying resource posts nothing more); a Warning when the
resource is stalled (invalid spec, a failure only a user can fix), Normal otherwise."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from phiops_operator import conditions

REPORTER = "phiops-operator"
# The API server refuses an Event message over 1 KiB (events.k8s.io's limit; core/v1 is laxer).
MAX_MESSAGE = 1024
# This operator process (its pod's name in a cluster): looked up once, not per Event.
INSTANCE = os.environ.get("HOSTNAME") or socket.gethostname()


@dataclass(frozen=True)
class Transition:
    type: str  # Normal or Warning
    reason: str
    message: str


def transition(
    previous: Iterable[dict[str, Any]] | None, observed: Sequence[conditions.Observation]
) -> Transition | None:
    """The Event that observing `observed` over the `previous` conditions deserves, if any."""
    ready = next((o for o in observed if o.type == conditions.READY), None)
    if ready is None:
        return None
    before = conditions.find(previous, conditions.READY)
    if before is not None and (before.get("status"), before.get("reason")) == (
        ready.status,
        ready.reason,
    ):
        return None
    stalled = any(o.type == conditions.STALLED and o.status == "True" for o in observed)
    return Transition("Warning" if stalled else "Normal", ready.reason, ready.message)


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def manifest(
    resource: Mapping[str, Any], event: Transition, now: str, version: str | None = None
) -> dict[str, Any]:
    """A core/v1 Event about `resource` (the form every Kubernetes version reads), at its
    resourceVersion `version` when given (the status write that made the change)."""
    meta = resource["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": resource["apiVersion"],
            "kind": resource["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": version or meta.get("resourceVersion"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": _clip(event.message or event.reason),
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": REPORTER},
        "reportingComponent": f"phiops.dev/{REPORTER}",
        "reportingInstance": INSTANCE,
    }
