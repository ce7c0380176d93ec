"""Events: one per change of Ready's status or reason, Warning when stalled, and a failed post
never fails the reconcile that wrote the status."""

from __future__ import annotations

import asyncio
from typing import Any

from phiops_operator import conditions, events
from phiops_operator.models.kinds import KNOWLEDGE_BASE
from phiops_operator.reconcile import _write, merged
from phiops_operator.status.common import invalid_spec


def wire(observed: list[conditions.Observation]) -> list[dict[str, Any]]:
    return conditions.merge(None, observed, 1)


def test_the_first_status_and_each_change_of_ready_post_one_event() -> None:
    first = events.transition(None, conditions.reconciling("Syncing", "sync 1 running"))
    assert first == events.Transition("Normal", "Syncing", "sync 1 running")
    ready = events.transition(
        wire(conditions.reconciling("Syncing", "x")), conditions.ready("Synced")
    )
    assert ready is not None and (ready.type, ready.reason) == ("Normal", "Synced")
    # Another reason with the same status is a transition too; the same one is not.
    other = events.transition(
        wire(conditions.reconciling("Syncing", "x")), conditions.reconciling("Waiting", "y")
    )
    assert other is not None and other.reason == "Waiting"
    again = events.transition(
        wire(conditions.reconciling("Syncing", "sync 1")), conditions.reconciling("Syncing", "2")
    )
    assert again is None


def test_stalled_is_a_warning_that_carries_the_message() -> None:
    message = "spec.lora.r: must be at least 1"
    event = events.transition(None, invalid_spec(message))
    assert event == events.Transition("Warning", "InvalidSpec", message)


def resource() -> dict[str, Any]:
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "KnowledgeBase",
        "metadata": {
            "name": "handbook",
            "namespace": "team",
            "uid": "u-1",
            "resourceVersion": "42",
            "generation": 1,
        },
        "spec": {},
    }


def test_the_manifest_names_the_resource_and_clips_long_messages() -> None:
    event = events.Transition("Warning", "InvalidSpec", "x" * 5000)
    made = events.manifest(resource(), event, "2026-11-30T00:00:00Z", "43")
    assert made["involvedObject"] == {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "KnowledgeBase",
        "name": "handbook",
        "namespace": "team",
        "uid": "u-1",
        "resourceVersion": "43",  # the status write's
    }
    assert made["metadata"] == {"generateName": "handbook.", "namespace": "team"}
    assert (made["type"], made["reason"], made["count"]) == ("Warning", "InvalidSpec", 1)
    assert len(made["message"]) == events.MAX_MESSAGE and made["message"].endswith("...")


class FakeKube:
    """Answers status patches as the API server does; Event posts fail when told to."""

    def __init__(self, fail_events: bool = False) -> None:
        self.fail_events = fail_events
        self.posted: list[dict[str, Any]] = []

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        body = resource()
        body["status"] = merged({}, status)
        return body

    async def post_event(self, event: dict[str, Any]) -> None:
        if self.fail_events:
            raise OSError("connection refused")
        self.posted.append(event)


def write(kube: FakeKube, body: dict[str, Any], observed: list[conditions.Observation]) -> Any:
    return asyncio.run(_write(kube, KNOWLEDGE_BASE, body, observed, {}))  # type: ignore[arg-type]


def test_a_status_write_posts_its_transition_once() -> None:
    kube = FakeKube()
    written = write(kube, resource(), conditions.ready("Synced", "3 documents"))
    assert [e["reason"] for e in kube.posted] == ["Synced"]
    # The same observation again writes nothing and posts nothing.
    assert write(kube, written, conditions.ready("Synced", "3 documents")) is None
    assert len(kube.posted) == 1


def test_a_failed_post_still_returns_the_written_status() -> None:
    kube = FakeKube(fail_events=True)
    written = write(kube, resource(), invalid_spec("spec.sources: empty"))
    assert written is not None and written["status"]["conditions"][0]["reason"] == "InvalidSpec"
    assert kube.posted == []
