"""Status of a KnowledgeBase computed from tables of observed states."""

from phiops_operator.status.knowledge_base import (
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
