"""A reconcile that observes what the status already says writes nothing."""

from __future__ import annotations

from typing import Any

from phiops_operator import conditions
from phiops_operator.reconcile import merged, status_patch


def body(status: dict[str, Any] | None = None, generation: int = 2) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": status or {}}


def test_merge_patch_semantics() -> None:
    before = {"a": 1, "nested": {"x": 1, "y": 2}, "gone": True}
    after = merged(before, {"nested": {"y": 3}, "gone": None, "b": [1]})
    assert after == {"a": 1, "nested": {"x": 1, "y": 3}, "b": [1]}


def test_first_status_is_written_then_the_same_observation_is_not() -> None:
    observed = conditions.ready("Synced", "all good")
    first = status_patch(body(), observed, {"chunks": 4})
    assert first is not None and first["chunks"] == 4 and first["observedGeneration"] == 2
    again = status_patch(body(merged({}, first)), observed, {"chunks": 4})
    assert again is None


def test_a_changed_field_condition_or_generation_is_written() -> None:
    observed = conditions.ready("Synced", "all good")
    current = merged({}, status_patch(body(), observed, {"chunks": 4}) or {})
    assert status_patch(body(current), observed, {"chunks": 5}) is not None
    other = conditions.reconciling("Syncing", "sync 2 running")
    assert status_patch(body(current), other, {"chunks": 4}) is not None
    assert status_patch(body(current, generation=3), observed, {"chunks": 4}) is not None
