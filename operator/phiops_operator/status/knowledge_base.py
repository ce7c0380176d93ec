"""PURE: what was observed about a KnowledgeBase's store, sources and sync Jobs -> status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from phiops_workload.contracts import WorkloadResult
from phiops_workload.knowledge import REASON_EMBEDDING_FAILED, SyncFigures
from phiops_workload.store_features import missing_message
from pydantic import ValidationError

from phiops_operator import conditions
from phiops_operator.conditions import Observation
from phiops_operator.status.common import ACCEPTED, JobState

MAX_FAILED_NAMES = 20

# Advisory conditions (abnormal-true, like Stalled): always written, False when all is well,
# so that one raised earlier is cleared.
STORE_SIZE_WARNING = "StoreSizeWarning"
STORE_FEATURES_MISSING = "StoreFeaturesMissing"
# milvus-lite scans every row per search: search p99 grows linearly with the rows it holds.
# benchmarks/bench_vector_store.py on the 2-core dev machine: p99 71-79 ms at 10k and 93-131
# ms at 25k 384-d chunks (exact scan, as phiops indexes it), 2.0 s at 100k (issue 12); a
# Milvus server answered in 5-7 ms (p50) at 25k.
EMBEDDED_STORE_FAST_CHUNKS = 25_000


@dataclass(frozen=True)
class ShardObservation:
    """One embedding Job of a sync and what its pod reported."""

    job: str
    state: JobState
    result: WorkloadResult | None = None
    started: str | None = None
    finished: str | None = None


@dataclass(frozen=True)
class SyncObservation:
    sync_id: str
    shards: Sequence[ShardObservation]
    # A sharded sync switches the alias in a last Job once every shard succeeded.
    needs_promotion: bool = False
    promotion: ShardObservation | None = None

    @property
    def shards_done(self) -> bool:
        return all(s.state == "succeeded" for s in self.shards)

    @property
    def state(self) -> JobState:
        steps = [*self.shards, *([self.promotion] if self.promotion else [])]
        if any(s.state == "failed" for s in steps):
            return "failed"
        if not self.shards_done:
            return "active"
        if self.needs_promotion and (self.promotion is None or self.promotion.state != "succeeded"):
            return "active"
        return "succeeded"

    @property
    def finished(self) -> str | None:
        times = [s.finished for s in self.shards if s.finished]
        return max(times) if times and len(times) == len(self.shards) else None


@dataclass(frozen=True)
class KnowledgeBaseObservation:
    store_uri: str
    alias: str
    embedded: bool = True
    """The store is the operator's milvus-lite pod (no vectorStore.milvus.uri)."""
    store_ready: bool = True
    store_message: str = ""
    missing_sources: Sequence[str] = ()
    store_unreachable: str | None = None
    current: SyncObservation | None = None
    last_success: SyncObservation | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def shard_figures(sync: SyncObservation) -> list[SyncFigures]:
    figures = []
    for shard in sync.shards:
        if shard.result is None:
            continue
        try:
            figures.append(SyncFigures.model_validate(shard.result.figures))
        except ValidationError:
            continue
    return figures


def figures_status(sync: SyncObservation) -> dict[str, Any]:
    """Status fields of a finished sync: documents summed over shards, collection-wide chunks."""
    shards = shard_figures(sync)
    if not shards:
        return {}
    failed_names = sorted({n for f in shards for n in f.documents.failed_names})
    documents = {
        key: sum(getattr(f.documents, key) for f in shards)
        for key in ("total", "added", "updated", "deleted", "unchanged", "failed")
    }
    if failed_names:
        documents["failedNames"] = failed_names[:MAX_FAILED_NAMES]
    first = shards[0]
    return {
        "documents": documents,
        # Each shard counts the chunks of its own documents.
        "chunks": sum(f.chunks for f in shards),
        "collection": first.alias,
        "physicalCollection": first.collection,
        "model": first.model,
        "dimension": first.dimension,
        "lastSyncTime": sync.finished,
        "lastSyncDurationSeconds": round(max(f.duration_seconds for f in shards), 3),
        "syncId": sync.sync_id,
    }


def failure(sync: SyncObservation) -> tuple[str, str]:
    """The reason and message of a failed sync, from the first failed shard that said why."""
    for shard in [*sync.shards, *([sync.promotion] if sync.promotion else [])]:
        if shard.state == "failed":
            if shard.result is not None:
                return shard.result.reason, shard.result.message
            return REASON_EMBEDDING_FAILED, f"Job {shard.job} failed without a result; see its logs"
    return REASON_EMBEDDING_FAILED, "sync failed"


def store_advice(obs: KnowledgeBaseObservation, chunks: int) -> list[Observation]:
    """Warnings that do not stop anything: an embedded store holding more chunks than it
    searches fast, and features the spec asked for that the Milvus server lacks."""
    if obs.embedded and chunks > EMBEDDED_STORE_FAST_CHUNKS:
        size = Observation(
            STORE_SIZE_WARNING,
            "True",
            "EmbeddedStoreLarge",
            f"the embedded store holds {chunks:,} chunks; it searches by scanning every row "
            f"and is fast up to about {EMBEDDED_STORE_FAST_CHUNKS:,} (see docs/"
            "knowledge-bases.md): point vectorStore.milvus.uri at a Milvus server",
        )
    else:
        size = Observation(STORE_SIZE_WARNING, "False", "WithinLimit")
    missing: list[str] = []
    version = ""
    for shard in shard_figures(obs.last_success) if obs.last_success else []:
        missing = missing or shard.missing_features
        version = version or shard.server_version
    if missing:
        features = Observation(
            STORE_FEATURES_MISSING,
            "True",
            "ServerLacksFeatures",
            missing_message(version, missing),
        )
    else:
        features = Observation(STORE_FEATURES_MISSING, "False", "AllFeaturesAvailable")
    return [size, features]


def compute(obs: KnowledgeBaseObservation) -> tuple[list[Observation], dict[str, Any]]:
    """Conditions and status fields (with the store's advisory conditions)."""
    observed, fields = _compute(obs)
    return [*observed, *store_advice(obs, int(fields.get("chunks") or 0))], fields


def _compute(obs: KnowledgeBaseObservation) -> tuple[list[Observation], dict[str, Any]]:
    """Conditions and status fields. Figures always come from the last successful sync."""
    fields: dict[str, Any] = {"storeUri": obs.store_uri, "collection": obs.alias}
    if obs.last_success is not None:
        fields |= figures_status(obs.last_success)
    accepted = Observation(ACCEPTED, "True", "SpecValid", "spec is valid")

    if obs.missing_sources:
        missing = ", ".join(obs.missing_sources)
        message = (
            f"waiting for {missing}; nothing is created until they exist, then the sync "
            "starts by itself"
        )
        # Waiting, not failed: kstatus (Flux) must not give up on a ConfigMap applied with it.
        return [*conditions.reconciling("SourceNotFound", message), accepted], fields
    if obs.store_unreachable is not None:
        return [
            *conditions.stalled("VectorStoreUnavailable", obs.store_unreachable),
            accepted,
        ], fields
    if not obs.store_ready:
        message = obs.store_message or "waiting for the embedded store to become ready"
        return [*conditions.reconciling("StoreStarting", message), accepted], fields
    current = obs.current
    if current is None:
        return [
            *conditions.reconciling("SyncPending", "a sync is about to start"),
            accepted,
        ], fields
    if current.state == "active":
        done = sum(1 for s in current.shards if s.state == "succeeded")
        message = f"sync {current.sync_id}: {done}/{len(current.shards)} shards done"
        if current.shards_done:
            message += ", switching the alias to the new collection"
        return [*conditions.reconciling("Syncing", message), accepted], fields
    if current.state == "failed":
        reason, message = failure(current)
        return [*conditions.stalled(reason, f"sync {current.sync_id}: {message}"), accepted], fields
    documents = fields.get("documents", {})
    message = (
        f"{documents.get('total', 0)} documents, {fields.get('chunks', 0)} chunks in "
        f"{fields.get('physicalCollection')} (alias {obs.alias})"
    )
    if documents.get("failed"):
        message += f"; {documents['failed']} documents could not be read: see status.documents"
    return [*conditions.ready("Synced", message), accepted], fields
