"""Applies that would change nothing are not sent; deleted or edited children are re-applied."""

from __future__ import annotations

from typing import Any

from phiops_operator.child_cache import ChildCache


def manifest(replicas: int = 1, kind: str = "Deployment") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1" if kind == "Deployment" else "v1",
        "kind": kind,
        "metadata": {"name": "x-server", "namespace": "ns"},
        "spec": {"replicas": replicas},
    }


def answer(m: dict[str, Any], version: int, generation: int | None = 1) -> dict[str, Any]:
    meta = {**m["metadata"], "resourceVersion": str(version)}
    if generation is not None:
        meta["generation"] = generation
    return {**m, "metadata": meta}


def test_the_same_manifest_again_is_unchanged_another_is_not() -> None:
    cache = ChildCache()
    assert not cache.unchanged(manifest())
    cache.applied(manifest(), answer(manifest(), 10))
    assert cache.unchanged(manifest())
    assert not cache.unchanged(manifest(replicas=2))


def test_a_deleted_child_is_applied_again() -> None:
    cache = ChildCache()
    cache.applied(manifest(), answer(manifest(), 10))
    cache.observed(answer(manifest(), 11), deleted=True)
    assert not cache.unchanged(manifest())


def test_status_changes_keep_it_but_an_edit_by_someone_else_does_not() -> None:
    cache = ChildCache()
    cache.applied(manifest(), answer(manifest(), 10, generation=3))
    cache.observed(answer(manifest(), 12, generation=3))  # status moved
    assert cache.unchanged(manifest())
    cache.observed(answer(manifest(), 13, generation=4))  # spec edited elsewhere
    assert not cache.unchanged(manifest())


def test_an_event_older_than_our_apply_is_ignored() -> None:
    cache = ChildCache()
    cache.applied(manifest(), answer(manifest(), 20, generation=5))
    cache.observed(answer(manifest(), 15, generation=4))
    assert cache.unchanged(manifest())


def test_kinds_without_a_generation_count_any_newer_version_as_an_edit() -> None:
    cache = ChildCache()
    config = manifest(kind="ConfigMap")
    cache.applied(config, answer(config, 10, generation=None))
    cache.observed(answer(config, 10, generation=None))  # the event of our own apply
    assert cache.unchanged(config)
    cache.observed(answer(config, 11, generation=None))
    assert not cache.unchanged(config)


def test_the_echo_of_our_own_apply_tells_nothing_a_later_change_does() -> None:
    cache = ChildCache()
    cache.applied(manifest(), answer(manifest(), 10, generation=3))
    assert not cache.observed(answer(manifest(), 10, generation=3))
    assert cache.observed(answer(manifest(), 11, generation=3))
    assert cache.observed(answer(manifest(), 12), deleted=True)
    assert cache.observed(answer(manifest(), 1))  # never applied here: news
