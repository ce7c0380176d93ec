"""Kopf glue for KnowledgeBase: store -> sources -> sync Jobs -> status. Runs when the
resource, its children (Jobs finishing, the store coming up) or its source ConfigMaps and
claims change, when its sync interval comes round, and while an external Milvus is not
answering."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlparse

import kopf
from phiops_workload.knowledge import REASON_EMBEDDING_FAILED

from phiops_operator import GROUP, VERSION, metrics
from phiops_operator.builders import knowledge_base as builder
from phiops_operator.models.kinds import KNOWLEDGE_BASE
from phiops_operator.models.knowledge_base import KnowledgeBaseSpec
from phiops_operator.network_policies import sync as sync_network_policies
from phiops_operator.observe import job_outcome, job_state, job_times
from phiops_operator.reconcile import (
    Context,
    InputRef,
    StatusUpdate,
    plain_parent,
    register,
)
from phiops_operator.status import knowledge_base as status
from phiops_operator.units import parse_duration, parse_time
from phiops_operator.validation import InvalidSpec, validate

SYNC_REQUEST_ANNOTATION = f"{GROUP}/sync-requested"
# An external Milvus that does not answer is tried again after 5 s, then twice as long each
# time it still does not, up to 5 minutes (a change of the resource tries at once).
EXTERNAL_RETRY_SECONDS = 5
EXTERNAL_RETRY_MAX_SECONDS = 300
UNREACHABLE_MEMO = "unreachable_attempts"
CONNECT_TIMEOUT_SECONDS = 3


async def _missing_sources(
    context: Context, spec: KnowledgeBaseSpec
) -> tuple[list[str], dict[str, str]]:
    """Sources that do not exist, and the resourceVersions of the ConfigMaps that do (an
    edited document is a new version, hence a new sync)."""
    missing, versions = [], {}
    for index, source in enumerate(spec.sources):
        if source.config_map is not None:
            found = await context.kube.get(
                "v1", "ConfigMap", context.namespace, source.config_map.name
            )
            if found is None:
                missing.append(
                    f"ConfigMap {source.config_map.name} (spec.sources[{index}].configMap.name)"
                )
            else:
                versions[source.name] = found["metadata"]["resourceVersion"]
        elif source.persistent_volume_claim is not None:
            claim = source.persistent_volume_claim.claim_name
            if (
                await context.kube.get("v1", "PersistentVolumeClaim", context.namespace, claim)
                is None
            ):
                missing.append(
                    f"PersistentVolumeClaim {claim} "
                    f"(spec.sources[{index}].persistentVolumeClaim.claimName)"
                )
    return missing, versions


async def _external_store_unreachable(uri: str) -> str | None:
    parsed = urlparse(uri)
    host, port = parsed.hostname, parsed.port or 19530
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), timeout=CONNECT_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError) as err:
        reason = str(err) or "timed out"
        retry = (
            f"retrying with back-off ({EXTERNAL_RETRY_SECONDS}s to {EXTERNAL_RETRY_MAX_SECONDS}s)"
        )
        return f"cannot connect to Milvus at {uri}: {reason}; {retry}"
    writer.close()
    return None


async def _store_state(context: Context, spec: KnowledgeBaseSpec) -> tuple[bool, str]:
    if spec.vector_store.milvus.uri is not None:
        return True, ""
    name = builder.store_name(context.name)
    deployment = await context.kube.get("apps/v1", "Deployment", context.namespace, name)
    ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    return ready >= 1, f"waiting for the store pod of Deployment {name} to become ready"


def _trigger(context: Context, spec: KnowledgeBaseSpec, versions: dict[str, str]) -> dict[str, Any]:
    """Everything that asks for a new sync: spec, an explicit request, an elapsed interval,
    and edited ConfigMap documents. Derived from observed state, never remembered."""
    meta = context.parent["metadata"]
    trigger: dict[str, Any] = {
        "generation": meta.get("generation", 0),
        "request": (meta.get("annotations") or {}).get(SYNC_REQUEST_ANNOTATION, ""),
        "sources": sorted(versions.items()),
    }
    if spec.sync.interval:
        age = time.time() - parse_time(meta["creationTimestamp"])
        period = parse_duration(spec.sync.interval)
        trigger["tick"] = int(age // period)
        context.hints.again_in(period - age % period + 0.5)  # just past the next tick
    return trigger


async def _observe_job(context: Context, job: dict[str, Any]) -> status.ShardObservation:
    state = job_state(job)
    name = job["metadata"]["name"]
    result = None
    if state != "active":
        outcome = await job_outcome(context.kube, context.namespace, name, REASON_EMBEDDING_FAILED)
        result = outcome.result
    started, finished = job_times(job)
    return status.ShardObservation(
        job=name, state=state, result=result, started=started, finished=finished
    )


async def _observe_syncs(context: Context) -> dict[str, status.SyncObservation]:
    jobs = await context.kube.list(
        "batch/v1",
        "Job",
        context.namespace,
        f"app.kubernetes.io/instance={context.name},{builder.SYNC_ID_LABEL}",
    )
    shards: dict[str, list[status.ShardObservation]] = {}
    promotions: dict[str, status.ShardObservation] = {}
    for job in jobs:
        job_labels = job["metadata"]["labels"]
        sync, step = job_labels[builder.SYNC_ID_LABEL], job_labels.get(builder.SHARD_LABEL)
        observed = await _observe_job(context, job)
        if step == builder.PROMOTE_STEP:
            promotions[sync] = observed
        else:
            shards.setdefault(sync, []).append(observed)
    return {
        sid: status.SyncObservation(
            sid, found, needs_promotion=len(found) > 1, promotion=promotions.get(sid)
        )
        for sid, found in shards.items()
    }


async def _prune(
    context: Context, syncs: dict[str, status.SyncObservation], keep: set[str]
) -> None:
    for sid, sync in syncs.items():
        if sid in keep:
            continue
        for step in [*sync.shards, *([sync.promotion] if sync.promotion else [])]:
            await context.kube.delete("batch/v1", "Job", context.namespace, step.job)
        await context.kube.delete(
            "v1", "ConfigMap", context.namespace, f"{context.name}-{builder.SYNC_COMPONENT}-{sid}"
        )


def _record_metrics(
    context: Context, fields: dict[str, Any], failed: status.SyncObservation | None
) -> None:
    ns, name = context.namespace, context.name
    if "documents" in fields:
        metrics.KB_DOCUMENTS.labels(ns, name).set(fields["documents"]["total"])
        metrics.KB_CHUNKS.labels(ns, name).set(fields["chunks"])
        metrics.KB_SYNC_DURATION.labels(ns, name).set(fields["lastSyncDurationSeconds"])
        if fields.get("lastSyncTime"):
            metrics.KB_LAST_SYNC.labels(ns, name).set(parse_time(fields["lastSyncTime"]))
    if interval := context.parent["spec"].get("sync", {}).get("interval"):
        metrics.KB_SYNC_INTERVAL.labels(ns, name).set(parse_duration(interval))
    counted: set[str] = context.memo.setdefault("counted_failures", set())
    if failed is not None and failed.sync_id not in counted:
        counted.add(failed.sync_id)
        metrics.KB_SYNC_FAILURES.labels(ns, name, status.failure(failed)[0]).inc()


async def step(context: Context, spec: KnowledgeBaseSpec) -> StatusUpdate:
    missing, versions = await _missing_sources(context, spec)
    if not missing:
        # Sources first: the store's claim outlives the resource (reclaimPolicy Retain), so
        # a KnowledgeBase waiting for its sources must not have made one yet.
        await context.kube.apply_all(builder.store_children(context.parent, spec, context.config))
        policies = builder.network_policies(context.parent, spec, context.config)
        await sync_network_policies(context, policies)
    store_ready, store_message = await _store_state(context, spec)
    uri = builder.store_uri(context.parent, spec)
    unreachable = None
    if spec.vector_store.milvus.uri is not None:
        unreachable = await _external_store_unreachable(uri)
        attempts = context.memo.get(UNREACHABLE_MEMO, 0) if unreachable else -1
        context.memo[UNREACHABLE_MEMO] = attempts + 1
        if unreachable is not None:
            delay = EXTERNAL_RETRY_SECONDS * 2**attempts
            context.hints.again_in(min(EXTERNAL_RETRY_MAX_SECONDS, delay))

    plan = builder.plan_sync(context.parent, spec, _trigger(context, spec, versions))
    syncs = await _observe_syncs(context)
    current = syncs.get(plan.sync_id)
    if current is None and store_ready and not missing and unreachable is None:
        await context.kube.apply_all(
            builder.sync_children(context.parent, spec, plan, context.config)
        )
        context.logger.info(f"sync {plan.sync_id} started ({len(plan.configs)} shard(s))")
        current = status.SyncObservation(
            plan.sync_id,
            [
                status.ShardObservation(
                    job=builder.job_name(context.name, plan.sync_id, i), state="active"
                )
                for i in range(len(plan.configs))
            ],
        )
    succeeded = [s for s in syncs.values() if s.state == "succeeded" and s.finished]
    last_success = max(succeeded, key=lambda s: s.finished or "", default=None)
    await _prune(
        context, syncs, {plan.sync_id} | ({last_success.sync_id} if last_success else set())
    )

    observed, fields = status.compute(
        status.KnowledgeBaseObservation(
            store_uri=uri,
            alias=plan.alias,
            embedded=spec.vector_store.milvus.uri is None,
            store_ready=store_ready,
            store_message=store_message,
            missing_sources=missing,
            store_unreachable=unreachable,
            current=current,
            last_success=last_success,
        )
    )
    _record_metrics(context, fields, current if current and current.state == "failed" else None)
    return observed, fields


def inputs(spec: KnowledgeBaseSpec) -> set[InputRef]:
    """The source ConfigMaps and claims a KnowledgeBase reads."""
    refs: set[InputRef] = set()
    for source in spec.sources:
        if source.config_map is not None:
            refs.add(("ConfigMap", source.config_map.name))
        elif source.persistent_volume_claim is not None:
            refs.add(("PersistentVolumeClaim", source.persistent_volume_claim.claim_name))
    return refs


register(KNOWLEDGE_BASE, step, inputs)


@kopf.on.delete(GROUP, VERSION, KNOWLEDGE_BASE.plural)
async def delete_knowledge_base(
    body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int, **_: Any
) -> None:
    """reclaimPolicy Delete: the embedded store's claim is owned (the garbage collector takes
    it); an external Milvus gets a Job that drops the alias and the collections we made."""
    namespace, name = body.meta["namespace"], body.meta["name"]
    metrics.forget_knowledge_base(namespace, name)
    try:
        spec = validate(KNOWLEDGE_BASE, name, body.spec)
    except InvalidSpec:
        return  # never valid (spec or name), so nothing was made
    assert isinstance(spec, KnowledgeBaseSpec)
    if spec.reclaim_policy != "Delete" or spec.vector_store.milvus.uri is None:
        return
    context = Context(memo["kube"], memo["config"], plain_parent(body), memo, logger)
    alias = builder.plan_sync(context.parent, spec, {}).alias
    job = builder.cleanup_job(context.parent, spec, alias, context.config)
    found = await context.kube.get("batch/v1", "Job", namespace, job["metadata"]["name"])
    if found is None:
        await context.kube.apply(job)
        raise kopf.TemporaryError(f"dropping collections of alias {alias}", delay=5)
    state = job_state(found)
    if state == "active":
        raise kopf.TemporaryError(f"dropping collections of alias {alias}", delay=5)
    if state == "failed":
        logger.warning(
            f"could not drop alias {alias} at {spec.vector_store.milvus.uri}; drop it by hand"
        )
    # Nobody owns the drop Job (its owner is going) and 1.20 drops ttlSecondsAfterFinished:
    # the operator removes it, and its pod with it, itself.
    await context.kube.delete("batch/v1", "Job", namespace, job["metadata"]["name"])
