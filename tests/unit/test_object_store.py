"""The operator's read cache: versions only move forward, our deletions are not undone by late
events, a fresh listing drops what the watch missed, and what is kept is what reconciles read."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from phiops_operator import controller
from phiops_operator.handlers import phi_deployment as pd_handler
from phiops_operator.k8s import Kube
from phiops_operator.object_store import ObjectStore, parse_selector, project
from phiops_operator.observe import job_state, job_times

from tests import children

OURS = {"app.kubernetes.io/managed-by": "phiops-operator"}


def obj(kind: str, name: str, version: int, **fields: Any) -> dict[str, Any]:
    api_version = {"Job": "batch/v1", "Deployment": "apps/v1"}.get(kind, "v1")
    labels = fields.pop("labels", {})
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": str(version),
            "labels": labels,
            **fields.pop("metadata", {}),
        },
        **fields,
    }


def test_a_newer_version_replaces_an_older_one_and_never_the_reverse() -> None:
    store = ObjectStore()
    store.observe(obj("Job", "a", 5, status={"active": 1}))
    store.observe(obj("Job", "a", 4, status={"failed": 1}))
    assert store.get("batch/v1", "Job", "ns", "a")["status"] == {"active": 1}  # type: ignore[index]
    store.observe(obj("Job", "a", 7, status={"succeeded": 1}))
    assert store.get("batch/v1", "Job", "ns", "a")["status"] == {"succeeded": 1}  # type: ignore[index]


def test_our_deletion_is_not_undone_by_an_older_event_but_a_recreation_shows() -> None:
    store = ObjectStore()
    store.observe(obj("Job", "a", 5))
    store.forget("batch/v1", "Job", "ns", "a")
    store.observe(obj("Job", "a", 5))  # an event that was on its way
    assert store.get("batch/v1", "Job", "ns", "a") is None
    store.observe(obj("Job", "a", 9))  # made again since
    assert store.get("batch/v1", "Job", "ns", "a") is not None


def test_a_watched_deletion_removes_unless_the_store_knows_a_newer_version() -> None:
    store = ObjectStore()
    store.observe(obj("ConfigMap", "a", 8))
    store.deleted(obj("ConfigMap", "a", 6))  # an old incarnation's deletion
    assert store.get("v1", "ConfigMap", "ns", "a") is not None
    store.deleted(obj("ConfigMap", "a", 8))
    assert store.get("v1", "ConfigMap", "ns", "a") is None


def test_a_fresh_listing_drops_ghosts_and_keeps_what_the_watch_brought_since() -> None:
    store = ObjectStore()
    store.observe(obj("Pod", "ghost", 3))
    store.observe(obj("Pod", "kept", 4))
    store.observe(obj("Pod", "newer", 12))  # created after the listing was taken
    store.observe({**obj("Pod", "other-ns", 2), "metadata": {"name": "x", "namespace": "b"}})
    listed = [obj("Pod", "kept", 6), obj("Pod", "added", 7)]
    for item in listed:
        del item["apiVersion"], item["kind"]  # list items come without them
    dropped = store.refresh("v1", "Pod", "ns", listed, listed_at=10)
    assert [d["metadata"]["name"] for d in dropped] == ["ghost"]
    assert {p["metadata"]["name"] for p in store.list("v1", "Pod", "ns", "") or []} == {
        "kept",
        "added",
        "newer",
    }
    assert store.get("v1", "Pod", "ns", "kept")["metadata"]["resourceVersion"] == "6"  # type: ignore[index]
    assert store.get("v1", "Pod", "b", "x") is not None


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=a", {"p1", "p2"}),
        ("app=a,tier=web", {"p1"}),
        ("app==a,tier!=web", {"p2"}),
        ("tier", {"p1", "p3"}),
        ("!tier", {"p2"}),
        ("", {"p1", "p2", "p3"}),
    ],
)
def test_equality_selectors_select_like_the_api_server(selector: str, expected: set[str]) -> None:
    store = ObjectStore()
    store.observe(obj("Pod", "p1", 1, labels={"app": "a", "tier": "web"}))
    store.observe(obj("Pod", "p2", 1, labels={"app": "a"}))
    store.observe(obj("Pod", "p3", 1, labels={"app": "b", "tier": "db"}))
    found = store.list("v1", "Pod", "ns", selector)
    assert found is not None
    assert {p["metadata"]["name"] for p in found} == expected


def test_set_based_selectors_are_left_to_the_api_server() -> None:
    assert parse_selector("app in (a,b)") is None
    assert ObjectStore().list("v1", "Pod", "ns", "app notin (a)") is None


def test_reads_are_copies() -> None:
    store = ObjectStore()
    store.observe(obj("Job", "a", 1, status={"active": 1}))
    store.get("batch/v1", "Job", "ns", "a")["status"]["active"] = 9  # type: ignore[index]
    assert store.get("batch/v1", "Job", "ns", "a")["status"] == {"active": 1}  # type: ignore[index]


def test_a_users_config_map_keeps_its_keys_and_ours_its_data() -> None:
    theirs = obj(
        "ConfigMap",
        "docs",
        1,
        data={"a.md": "x" * 10_000},
        metadata={"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
    )
    ours = obj("ConfigMap", "progress", 1, data={"progress.json": "{}"}, labels=OURS)
    assert project(theirs)["data"] == {"a.md": ""}
    assert "annotations" not in project(theirs)["metadata"]
    assert project(ours)["data"] == {"progress.json": "{}"}


def test_projections_keep_what_reconciles_read_of_every_child() -> None:
    """The handlers' readers give the same answers on a stored copy as on the whole object."""
    checked = 0
    for _, child in children.all_children():
        if not ObjectStore.holds(child["apiVersion"], child["kind"]):
            continue
        kept = project(child)
        meta, kept_meta = child["metadata"], kept["metadata"]
        assert kept_meta["labels"] == meta.get("labels", {})
        assert kept_meta.get("annotations", {}) == meta.get("annotations", {})
        if child["kind"] == "Deployment":
            assert pd_handler._config_hash(kept) == pd_handler._config_hash(child)
            assert pd_handler._mounted_claims(kept) == pd_handler._mounted_claims(child)
            assert kept["spec"]["selector"] == child["spec"]["selector"]
            assert kept["spec"].get("replicas") == child["spec"].get("replicas")
        if child["kind"] == "Job":
            assert (job_state(kept), job_times(kept)) == (job_state(child), job_times(child))
        checked += 1
    assert checked > 20


class RecordingKube(Kube):
    """A Kube whose applies are recorded (and take a moment) instead of sent."""

    def __init__(self) -> None:
        super().__init__(api=None)  # type: ignore[arg-type]
        self.started: list[str] = []
        self.running = 0
        self.most = 0

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        self.started.append(manifest["kind"])
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.01)
        self.running -= 1
        return {"applied": manifest["metadata"]["name"]}

    async def _call(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a read the store could answer went to the API server")


def test_apply_all_sends_a_wave_at_once_roles_before_bindings_and_workloads_last() -> None:
    kube = RecordingKube()
    kinds = ["Job", "RoleBinding", "ConfigMap", "Role", "ServiceAccount", "Deployment"]
    manifests = [{"kind": k, "metadata": {"name": f"n{i}"}} for i, k in enumerate(kinds)]
    results = asyncio.run(kube.apply_all(manifests))
    assert [r["applied"] for r in results if r] == [f"n{i}" for i in range(len(kinds))]
    assert set(kube.started[:3]) == {"ConfigMap", "Role", "ServiceAccount"}
    assert kube.started[3] == "RoleBinding"
    assert set(kube.started[4:]) == {"Job", "Deployment"}
    assert kube.most == 3


def test_reads_of_stored_kinds_do_not_reach_the_api_server() -> None:
    kube = RecordingKube()
    kube.objects = ObjectStore()
    kube.objects.observe(obj("Job", "train-1", 3, labels={"app.kubernetes.io/instance": "x"}))

    async def reads() -> tuple[Any, Any, Any]:
        return (
            await kube.get("batch/v1", "Job", "ns", "train-1"),
            await kube.get("v1", "PersistentVolumeClaim", "ns", "absent"),
            await kube.list("batch/v1", "Job", "ns", "app.kubernetes.io/instance=x"),
        )

    job, claim, jobs = asyncio.run(reads())
    assert job["metadata"]["name"] == "train-1"
    assert claim is None
    assert [j["metadata"]["name"] for j in jobs] == ["train-1"]


def test_the_controller_keeps_resources_without_their_bookkeeping() -> None:
    body = obj(
        "ConfigMap",
        "r",
        1,
        spec={"a": 1},
        metadata={
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{...}",
                "phiops.dev/sync-requested": "now",
            },
        },
    )
    kept = controller._kept(body)
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"phiops.dev/sync-requested": "now"}
    assert kept["spec"] == {"a": 1}
    assert "managedFields" in body["metadata"]  # the event's body is left alone


def test_stored_objects_are_packed_and_reads_decode_them_whole() -> None:
    store = ObjectStore()
    job = obj("Job", "a", 5, labels=dict(OURS), status={"active": 1, "conditions": []})
    store.observe(job)
    packed = store._objects[("batch/v1", "Job")]["ns"]["a"]
    assert isinstance(packed.blob, bytes) and packed.version == 5
    assert packed.labels == OURS
    assert store.get("batch/v1", "Job", "ns", "a") == project(job)
    assert store.list("batch/v1", "Job", "ns", "app.kubernetes.io/managed-by=phiops-operator") == [
        project(job)
    ]


def test_the_controller_keeps_bodies_packed_and_reconciles_only_on_desired_changes() -> None:
    body = obj("ConfigMap", "r", 1, spec={"a": 1}, status={"x": 1})
    first = controller._Resource.of(controller._kept(body))
    status_only = controller._Resource.of(controller._kept({**body, "status": {"x": 2}}))
    spec_change = controller._Resource.of(controller._kept({**body, "spec": {"a": 2}}))
    assert first.desired == status_only.desired != spec_change.desired
    assert first.version == 1 and len(first.desired) == 16
