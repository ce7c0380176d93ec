"""Status of a KnowledgeBase computed from tables of observed states."""

from phiops_operator.status.knowledge_base import (
    EMBEDDED_STORE_FAST_CHUNKS,
    KnowledgeBaseObservation,
    ShardObservation,
    SyncObservation,
    compute,
)
from phiops_workload.contracts import WorkloadResult

BASE = {"store_uri": "http://kb-store.ns.svc:19530", "alias": "kb_ns_kb"}


def figures(total: int, added: int, failed_names: list[str] | None = None) -> dict[str, object]:
    return {
        "documents": {
            "total": total,
            "added": added,
            "unchanged": total - added,
            "failed": len(failed_names or []),
            "failed_names": failed_names or [],
        },
        "chunks": total * 3,
        "collection": "kb_ns_kb__abc",
        "alias": "kb_ns_kb",
        "model": "all-MiniLM-L6-v2",
        "dimension": 384,
        "duration_seconds": 2.5,
    }


def done(
    sync_id: str, total: int = 4, added: int = 4, when: str = "2026-01-01T00:00:10Z"
) -> SyncObservation:
    result = WorkloadResult(outcome="Succeeded", reason="Synced", figures=figures(total, added))
    return SyncObservation(sync_id, [ShardObservation("j", "succeeded", result, finished=when)])


def reasons(observation: KnowledgeBaseObservation) -> dict[str, tuple[str, str]]:
    conds, _ = compute(observation)
    return {c.type: (c.status, c.reason) for c in conds}


def test_succeeded_sync_is_ready_with_figures() -> None:
    sync = done("s1")
    conds, fields = compute(KnowledgeBaseObservation(**BASE, current=sync, last_success=sync))
    assert {c.type: c.status for c in conds} == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
        "Accepted": "True",
        "StoreSizeWarning": "False",
        "StoreFeaturesMissing": "False",
    }
    assert fields["documents"]["total"] == 4
    assert fields["chunks"] == 12
    assert fields["physicalCollection"] == "kb_ns_kb__abc"
    assert fields["lastSyncTime"] == "2026-01-01T00:00:10Z"
    assert fields["syncId"] == "s1"


def test_running_sync_keeps_the_previous_figures() -> None:
    previous = done("s1", total=4)
    running = SyncObservation("s2", [ShardObservation("j2", "active")])
    obs = KnowledgeBaseObservation(**BASE, current=running, last_success=previous)
    assert reasons(obs)["Ready"] == ("False", "Syncing")
    assert reasons(obs)["Reconciling"] == ("True", "Syncing")
    assert compute(obs)[1]["documents"]["total"] == 4


def test_failed_sync_reports_the_workload_reason() -> None:
    result = WorkloadResult(outcome="Failed", reason="VectorStoreUnavailable", message="refused")
    failed = SyncObservation("s3", [ShardObservation("j3", "failed", result)])
    conds, _ = compute(KnowledgeBaseObservation(**BASE, current=failed))
    ready = next(c for c in conds if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "VectorStoreUnavailable")
    assert "refused" in ready.message
    assert reasons(KnowledgeBaseObservation(**BASE, current=failed))["Stalled"][0] == "True"


def test_missing_source_store_and_unreachable_milvus() -> None:
    missing = KnowledgeBaseObservation(**BASE, missing_sources=["ConfigMap docs (source a)"])
    assert reasons(missing)["Ready"] == ("False", "SourceNotFound")
    assert reasons(missing)["Stalled"][0] == "False"  # waiting, not failed
    assert "ConfigMap docs" in compute(missing)[0][0].message
    starting = KnowledgeBaseObservation(**BASE, store_ready=False)
    assert reasons(starting)["Reconciling"] == ("True", "StoreStarting")
    unreachable = KnowledgeBaseObservation(**BASE, store_unreachable="cannot connect")
    assert reasons(unreachable)["Ready"] == ("False", "VectorStoreUnavailable")


def test_shards_are_summed_and_failed_names_listed() -> None:
    shards = [
        ShardObservation(
            f"j{i}",
            "succeeded",
            WorkloadResult(
                outcome="Succeeded",
                reason="Synced",
                figures=figures(2, 2, failed_names=[f"a/bad{i}.pdf"]),
            ),
            finished=f"2026-01-01T00:00:1{i}Z",
        )
        for i in range(2)
    ]
    sync = SyncObservation("s4", shards)
    conds, fields = compute(KnowledgeBaseObservation(**BASE, current=sync, last_success=sync))
    assert fields["documents"]["total"] == 4
    assert fields["documents"]["failedNames"] == ["a/bad0.pdf", "a/bad1.pdf"]
    assert fields["lastSyncTime"] == "2026-01-01T00:00:11Z"
    assert "2 documents could not be read" in conds[0].message


def test_sharded_sync_is_ready_only_after_the_alias_switch() -> None:
    result = WorkloadResult(outcome="Succeeded", reason="Synced", figures=figures(2, 2))
    shards = [ShardObservation(f"j{i}", "succeeded", result, finished="T") for i in range(2)]
    waiting = SyncObservation("s5", shards, needs_promotion=True)
    assert waiting.state == "active"
    assert (
        "switching the alias"
        in compute(KnowledgeBaseObservation(**BASE, current=waiting))[0][0].message
    )
    promoted = SyncObservation(
        "s5",
        shards,
        needs_promotion=True,
        promotion=ShardObservation("p", "succeeded", finished="T"),
    )
    assert promoted.state == "succeeded"
    failed = SyncObservation(
        "s5",
        shards,
        needs_promotion=True,
        promotion=ShardObservation(
            "p", "failed", WorkloadResult(outcome="Failed", reason="VectorStoreUnavailable")
        ),
    )
    assert reasons(KnowledgeBaseObservation(**BASE, current=failed))["Ready"] == (
        "False",
        "VectorStoreUnavailable",
    )


def synced_with(**extra: object) -> SyncObservation:
    """A finished sync whose figures carry `extra` (chunks, server version, gaps)."""
    result = WorkloadResult(
        outcome="Succeeded", reason="Synced", figures={**figures(4, 4), **extra}
    )
    return SyncObservation("s1", [ShardObservation("j", "succeeded", result, finished="t")])


def test_a_large_embedded_store_warns_and_names_the_limit_and_the_fix() -> None:
    big = synced_with(chunks=EMBEDDED_STORE_FAST_CHUNKS + 1)
    conds, _ = compute(KnowledgeBaseObservation(**BASE, current=big, last_success=big))
    by_type = {c.type: c for c in conds}
    warning = by_type["StoreSizeWarning"]
    assert (warning.status, warning.reason) == ("True", "EmbeddedStoreLarge")
    assert f"{EMBEDDED_STORE_FAST_CHUNKS:,}" in warning.message
    assert "vectorStore.milvus.uri" in warning.message
    assert by_type["Ready"].status == "True"  # a warning, not a failure


def test_size_warning_only_above_the_limit_and_never_for_a_milvus_server() -> None:
    at_limit = synced_with(chunks=EMBEDDED_STORE_FAST_CHUNKS)
    assert reasons(KnowledgeBaseObservation(**BASE, current=at_limit, last_success=at_limit))[
        "StoreSizeWarning"
    ] == ("False", "WithinLimit")
    big = synced_with(chunks=10 * EMBEDDED_STORE_FAST_CHUNKS)
    external = KnowledgeBaseObservation(**BASE, embedded=False, current=big, last_success=big)
    assert reasons(external)["StoreSizeWarning"] == ("False", "WithinLimit")


def test_missing_server_features_are_a_condition_naming_version_and_feature() -> None:
    old = synced_with(
        server_version="v2.3.5-lite", missing_features=["BM25 full-text search", "hybrid_search"]
    )
    obs = KnowledgeBaseObservation(**BASE, embedded=False, current=old, last_success=old)
    conds, _ = compute(obs)
    by_type = {c.type: c for c in conds}
    missing = by_type["StoreFeaturesMissing"]
    assert (missing.status, missing.reason) == ("True", "ServerLacksFeatures")
    assert "v2.3.5-lite" in missing.message
    assert "BM25 full-text search or hybrid_search" in missing.message
    assert "dense vector search" in missing.message
    assert by_type["Ready"].status == "True"


def test_features_condition_clears_when_a_sync_finds_them() -> None:
    new = synced_with(server_version="v2.5.4", missing_features=[])
    obs = KnowledgeBaseObservation(**BASE, embedded=False, current=new, last_success=new)
    assert reasons(obs)["StoreFeaturesMissing"] == ("False", "AllFeaturesAvailable")
