"""Adapters in running servers: the loads and unloads that bring a pod to the desired adapters,
and what the pods' /readyz reports say about each adapter."""

from __future__ import annotations

from typing import Any

from phiops_operator.adapter_sync import (
    AdapterState,
    ModelReport,
    PodReport,
    load_request,
    observe,
    parse_model,
    parse_models,
    plan,
    unload_request,
)
from phiops_workload.serving import AdapterConfig

BASE = "tiny-phi3"
TONE = AdapterConfig(name="tone", path="/phiops/volumes/tone-output", sha256="a" * 64)
LEGAL = AdapterConfig(name="legal", path="/phiops/volumes/models/legal")  # no digest known
UP = ModelReport(BASE, loaded=True, path="/phiops/volumes/models/tiny")


def loaded(adapter: AdapterConfig, sha256: str | None = None) -> ModelReport:
    return ModelReport(adapter.name, True, sha256 or adapter.sha256 or "f" * 64, adapter.path)


def models(*reports: ModelReport) -> dict[str, ModelReport]:
    return {r.name: r for r in (UP, *reports)}


def test_readyz_reports_parse_by_name_and_malformed_entries_are_skipped() -> None:
    body: dict[str, Any] = {
        "ready": False,
        "models": [
            {"name": BASE, "loaded": True, "sha256": None, "path": "/m", "error": None},
            {"name": "tone", "loaded": False, "path": "/t", "error": "sha256 mismatch"},
            {"loaded": True},
            "junk",
        ],
        "loaded": [BASE],
    }
    parsed = parse_models(body)
    assert parsed == {
        BASE: ModelReport(BASE, True, None, "/m", None),
        "tone": ModelReport("tone", False, None, "/t", "sha256 mismatch"),
    }
    assert parse_models({"error": {"message": "boom"}}) is None
    assert parse_models(["not", "a", "report"]) is None
    assert parse_model({"name": "x", "loaded": "yes"}) == ModelReport("x", loaded=False)


def test_a_pod_with_every_adapter_at_its_version_needs_nothing() -> None:
    assert plan([TONE, LEGAL], models(loaded(TONE), loaded(LEGAL)), BASE).load == ()
    assert plan([TONE, LEGAL], models(loaded(TONE), loaded(LEGAL)), BASE).unload == ()


def test_missing_adapters_are_loaded() -> None:
    todo = plan([TONE, LEGAL], models(loaded(LEGAL)), BASE)
    assert todo.load == (TONE,) and todo.unload == ()


def test_another_version_is_replaced_by_sha256_or_by_path() -> None:
    old = loaded(TONE, sha256="b" * 64)
    assert plan([TONE], models(old), BASE).load == (TONE,)
    moved = ModelReport("legal", True, "c" * 64, "/phiops/volumes/old/legal")
    assert plan([LEGAL], models(moved), BASE).load == (LEGAL,)


def test_an_adapter_folder_without_a_known_digest_matches_by_path() -> None:
    # The server reports the digest it read; the operator has none to compare for a pvc.
    assert plan([LEGAL], models(loaded(LEGAL, sha256="d" * 64)), BASE).load == ()


def test_adapters_no_longer_wanted_are_unloaded_never_the_base() -> None:
    failed = ModelReport("old-bad", False, None, "/x", "not a LoRA adapter")
    todo = plan([TONE], models(loaded(TONE), loaded(LEGAL), failed), BASE)
    assert todo.load == ()
    assert todo.unload == ("legal", "old-bad")
    assert BASE not in plan([], models(loaded(TONE)), BASE).unload


def test_an_adapter_the_server_is_loading_is_left_alone() -> None:
    loading = ModelReport("tone", False, TONE.sha256, TONE.path)
    assert plan([TONE], models(loading), BASE).load == ()
    # ... unless another version is wanted now.
    other = AdapterConfig(name="tone", path=TONE.path, sha256="e" * 64)
    assert plan([other], models(loading), BASE).load == (other,)


def test_a_failed_adapter_is_asked_again_once_the_last_request_is_not_recent() -> None:
    failed = ModelReport("tone", False, TONE.sha256, TONE.path, "sha256 mismatch")
    assert plan([TONE], models(failed), BASE).load == (TONE,)
    assert plan([TONE], models(failed), BASE, recent={load_request(TONE)}).load == ()
    # A recent request for another version does not hold back this one.
    other = AdapterConfig(name="tone", path=TONE.path, sha256="e" * 64)
    assert plan([other], models(failed), BASE, recent={load_request(TONE)}).load == (other,)


def test_a_recent_unload_is_not_repeated() -> None:
    todo = plan([], models(loaded(LEGAL)), BASE, recent={unload_request("legal")})
    assert todo.unload == ()


def test_nothing_is_asked_of_a_server_whose_engine_is_not_up() -> None:
    starting = {BASE: ModelReport(BASE, loaded=False), "legal": loaded(LEGAL)}
    assert plan([TONE], starting, BASE) == plan([TONE], {}, BASE)
    assert plan([TONE], {}, BASE).load == () and plan([TONE], {}, BASE).unload == ()


def test_an_adapter_is_loaded_when_every_ready_pod_has_its_version() -> None:
    reports = [
        PodReport("p1", ready=True, models=models(loaded(TONE))),
        PodReport("p2", ready=True, models=models(loaded(TONE))),
        PodReport("p3", ready=False, models=models()),  # starting: not counted
    ]
    state = observe(TONE, reports)
    assert state == AdapterState(ready_replicas=2, loaded_replicas=2, answering_replicas=2)
    assert state.loaded


def test_an_old_version_answers_but_is_not_loaded() -> None:
    reports = [
        PodReport("p1", ready=True, models=models(loaded(TONE))),
        PodReport("p2", ready=True, models=models(loaded(TONE, sha256="b" * 64))),
    ]
    state = observe(TONE, reports)
    assert (state.loaded_replicas, state.answering_replicas, state.loaded) == (1, 2, False)


def test_a_pod_that_does_not_answer_counts_as_not_loaded() -> None:
    reports = [
        PodReport("p1", ready=True, models=models(loaded(TONE))),
        PodReport("p2", ready=True, models=None),
    ]
    state = observe(TONE, reports)
    assert (state.loaded_replicas, state.silent_replicas, state.loaded) == (1, 1, False)
    assert not observe(TONE, []).loaded  # no ready pod: nothing is loaded


def test_a_pods_error_names_the_pod_ready_or_not_but_not_an_outgoing_one() -> None:
    failed = ModelReport("tone", False, TONE.sha256, TONE.path, "sha256 mismatch")
    reports = [
        PodReport("old", ready=True, current=False, models=models(failed)),
        PodReport("new", ready=False, models=models(failed)),
    ]
    assert observe(TONE, reports).error == "new: sha256 mismatch"
    assert observe(TONE, reports[:1]).error is None
