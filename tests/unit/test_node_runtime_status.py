"""When the node runtime sends a pod's status again: whenever the apiserver's copy says
something else than what it published (another writer changed it), and only then."""

from __future__ import annotations

from typing import Any

from phiops_devcluster.node_runtime.pods import agrees


def status(phase: str = "Running", ip: str | None = "10.244.0.5", **conds: str) -> dict[str, Any]:
    conditions = {"Initialized": "True", "Ready": "True", "PodScheduled": "True", **conds}
    return {
        "phase": phase,
        "podIP": ip,
        "conditions": [
            {"type": kind, "status": value, "lastTransitionTime": "2026-01-01T00:00:00Z"}
            for kind, value in conditions.items()
        ],
    }


def test_the_same_statuses_agree_whatever_the_timestamps() -> None:
    server = status()
    server["conditions"][1]["lastTransitionTime"] = "2026-02-02T00:00:00Z"
    assert agrees(status(), server)


def test_a_pod_marked_not_ready_by_the_node_lifecycle_controller_is_sent_again() -> None:
    assert not agrees(status(), status(Ready="False"))


def test_phase_and_pod_ip_count() -> None:
    assert not agrees(status(), status(phase="Pending"))
    assert not agrees(status(), status(ip=None))


def test_other_writers_conditions_are_theirs() -> None:
    assert agrees(status(), status(**{"example.com/gate": "False"}))
