"""Kopf glue for PhiDeployment: resolve adapters and knowledge base -> config, Deployment,
Service -> status, on change and on a timer (a FineTuneJob succeeding, pods turning ready)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Any

import aiohttp
import kopf

from phiops_operator import GROUP, VERSION, conditions, metrics
from phiops_operator.builders import phi_deployment as builder
from phiops_operator.builders.phi_deployment import (
    Inputs,
    ResolvedAdapter,
    ResolvedKnowledgeBase,
)
from phiops_operator.models.base import SecretKeyRef
from phiops_operator.models.kinds import PHI_DEPLOYMENT
from phiops_operator.models.knowledge_base import KnowledgeBaseSpec
from phiops_operator.models.phi_deployment import Adapter, PhiDeploymentSpec
from phiops_operator.reconcile import Context, StatusUpdate, register
from phiops_operator.status import phi_deployment as status
from phiops_operator.status.phi_deployment import Dependency

TIMER_SECONDS = 5
SERVED_ANNOTATION = "phiops.dev/served-inputs"
READYZ_TIMEOUT_SECONDS = 2.0
# Container states a rollout does not recover from by waiting.
STUCK_WAITING_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
}


def _ftj_adapter(
    name: str, ftj: dict[str, Any] | None, ref: str, source: str
) -> ResolvedAdapter | Dependency:
    if ftj is None:
        return Dependency("adapter", f"adapter {name}: FineTuneJob {ref} not found")
    st = ftj.get("status") or {}
    phase = st.get("phase") or "Pending"
    ready = conditions.find(st.get("conditions"), conditions.READY) or {}
    adapter = st.get("adapter") or {}
    if phase == "Succeeded" and adapter.get("claimName"):
        return ResolvedAdapter(
            name=name,
            claim_name=adapter["claimName"],
            path=adapter.get("path") or ".",
            source=source,
            sha256=adapter.get("sha256"),
        )
    detail = f": {ready['message']}" if ready.get("message") else ""
    message = f"adapter {name}: FineTuneJob {ref} is {phase}{detail}"
    return Dependency("adapter", message, failed=phase == "Failed")


async def _resolve_adapter(context: Context, adapter: Adapter) -> ResolvedAdapter | Dependency:
    kube, ns = context.kube, context.namespace
    if adapter.fine_tune_job_ref is not None:
        ref = adapter.fine_tune_job_ref.name
        ftj = await kube.get(f"{GROUP}/{VERSION}", "FineTuneJob", ns, ref)
        return _ftj_adapter(adapter.name, ftj, ref, builder.adapter_source(adapter))
    assert adapter.pvc is not None  # the model guarantees exactly one source
    claim = adapter.pvc.claim_name
    if await kube.get("v1", "PersistentVolumeClaim", ns, claim) is None:
        return Dependency(
            "adapter", f"adapter {adapter.name}: PersistentVolumeClaim {claim} not found"
        )
    return ResolvedAdapter(
        name=adapter.name,
        claim_name=claim,
        path=adapter.pvc.path,
        source=builder.adapter_source(adapter),
    )


def _knowledge_base(name: str, kb: dict[str, Any] | None) -> ResolvedKnowledgeBase | Dependency:
    if kb is None:
        return Dependency("knowledgeBase", f"KnowledgeBase {name} not found")
    spec = KnowledgeBaseSpec.model_validate(kb.get("spec") or {})
    if spec.embedding.provider != "sentenceTransformers":
        message = (
            f"KnowledgeBase {name} embeds with provider {spec.embedding.provider}; the server "
            "embeds questions with sentenceTransformers models only"
        )
        return Dependency("knowledgeBase", message, failed=True)
    st = kb.get("status") or {}
    if not (st.get("lastSyncTime") and st.get("collection") and st.get("storeUri")):
        ready = conditions.find(st.get("conditions"), conditions.READY) or {}
        stalled = conditions.find(st.get("conditions"), conditions.STALLED) or {}
        detail = ready.get("message") or "no sync has finished yet"
        return Dependency(
            "knowledgeBase",
            f"KnowledgeBase {name} has no synced collection yet ({detail})",
            failed=stalled.get("status") == "True",
        )
    milvus = spec.vector_store.milvus
    return ResolvedKnowledgeBase(
        name=name,
        uri=st["storeUri"],
        collection=st["collection"],
        database=milvus.database,
        model=st.get("model") or spec.embedding.sentence_transformers.model,
        device="cpu",  # one question per request: not worth a GPU
        token=milvus.token_secret_ref,
    )


def _served(deployment: dict[str, Any] | None) -> Inputs:
    """What the running Deployment was built from (its annotation), to keep serving it while
    a newer input is not ready."""
    text = ((deployment or {}).get("metadata", {}).get("annotations") or {}).get(SERVED_ANNOTATION)
    if not text:
        return Inputs()
    raw = json.loads(text)
    kb = raw.get("knowledge_base")
    if kb and kb.get("token"):
        kb["token"] = SecretKeyRef.model_validate(kb["token"])
    return Inputs(
        adapters=tuple(ResolvedAdapter(**a) for a in raw.get("adapters", [])),
        knowledge_base=ResolvedKnowledgeBase(**kb) if kb else None,
    )


def _encode(inputs: Inputs) -> str:
    return json.dumps(asdict(inputs), sort_keys=True, default=lambda ref: ref.to_wire())


def _config_hash(deployment: dict[str, Any] | None) -> str | None:
    """The config hash a Deployment's pod template carries (what its pods should run)."""
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    return (template.get("metadata", {}).get("annotations") or {}).get(
        builder.CONFIG_HASH_ANNOTATION
    )


def _rollout(deployment: dict[str, Any], pods: list[dict[str, Any]]) -> status.Rollout:
    """The Deployment as its pods show it: a pod runs the current configuration when it
    carries the config hash just applied (the Deployment's own counters lag a scale or a
    roll by a moment, and a scale is no roll)."""
    spec, st = deployment.get("spec") or {}, deployment.get("status") or {}
    desired = int(spec.get("replicas") or 0)
    wanted = _config_hash(deployment)
    updated = sum(
        1
        for p in pods
        if (p["metadata"].get("annotations") or {}).get(builder.CONFIG_HASH_ANNOTATION) == wanted
    )
    stuck = None
    progressing = conditions.find(st.get("conditions"), "Progressing") or {}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        stuck = progressing.get("message") or "the rollout exceeded its progress deadline"
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITING_REASONS:
                stuck = (
                    f"pod {pod['metadata']['name']}: {waiting['reason']}"
                    f"{': ' + waiting['message'] if waiting.get('message') else ''}"
                )
    return status.Rollout(
        desired=desired,
        replicas=len(pods),
        ready=int(st.get("readyReplicas") or 0),
        updated=updated,
        current=updated == len(pods) and (updated > 0 or desired == 0),
        stuck=stuck,
    )


async def _pods(context: Context) -> list[dict[str, Any]]:
    """The serving pods that are not on their way out."""
    pods = await context.kube.list(
        "v1", "Pod", context.namespace, builder.selector_string(context.name)
    )
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


async def _load_errors(pods: list[dict[str, Any]]) -> dict[str, str]:
    """Per model, what a running but not-ready server pod says in /readyz (why an adapter
    did not load). Best effort: an unreachable pod tells nothing."""
    errors: dict[str, str] = {}
    timeout = aiohttp.ClientTimeout(total=READYZ_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for pod in pods:
            st = pod.get("status") or {}
            ready = conditions.find(st.get("conditions"), "Ready") or {}
            if st.get("phase") != "Running" or ready.get("status") == "True":
                continue
            if not st.get("podIP"):
                continue
            url = f"http://{st['podIP']}:{builder.HTTP_PORT}/readyz"
            try:
                async with session.get(url) as response:
                    body = await response.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, ValueError):
                continue
            models = body.get("models") if isinstance(body, dict) else None
            for model in models or []:
                if isinstance(model, dict) and model.get("error") and model.get("name"):
                    errors.setdefault(str(model["name"]), str(model["error"]))
    return errors


def _record_metrics(context: Context, spec: PhiDeploymentSpec, fields: dict[str, Any]) -> None:
    ns, name = context.namespace, context.name
    metrics.DEPLOYMENT_REPLICAS.labels(ns, name).set(spec.replicas)
    metrics.DEPLOYMENT_READY_REPLICAS.labels(ns, name).set(fields.get("readyReplicas", 0))
    adapters = fields.get("adapters") or []
    metrics.DEPLOYMENT_ADAPTERS.labels(ns, name).set(len(adapters))
    metrics.DEPLOYMENT_ADAPTERS_LOADED.labels(ns, name).set(sum(a["loaded"] for a in adapters))


async def step(context: Context, spec: PhiDeploymentSpec) -> StatusUpdate:
    kube, ns, name = context.kube, context.namespace, context.name
    existing = await kube.get("apps/v1", "Deployment", ns, builder.server_name(name))
    served = _served(existing)
    served_adapters = {a.name: a for a in served.adapters}
    blocked: list[Dependency] = []
    waiting: list[Dependency] = []
    adapters: list[ResolvedAdapter] = []
    views: list[status.AdapterView] = []
    for adapter in spec.adapters or []:
        found = await _resolve_adapter(context, adapter)
        previous = served_adapters.get(adapter.name)
        source = builder.adapter_source(adapter)
        if isinstance(found, ResolvedAdapter):
            adapters.append(found)
            views.append(status.AdapterView(adapter.name, source, found.sha256, served=True))
        elif previous is not None:
            adapters.append(previous)
            waiting.append(found)
            views.append(
                status.AdapterView(adapter.name, source, previous.sha256, True, waiting=found)
            )
        else:
            blocked.append(found)
            views.append(status.AdapterView(adapter.name, source, None, False, waiting=found))

    knowledge: ResolvedKnowledgeBase | None = None
    ref = spec.knowledge_base_ref
    if ref is not None:
        kb = await kube.get(f"{GROUP}/{VERSION}", "KnowledgeBase", ns, ref.name)
        found_kb = _knowledge_base(ref.name, kb)
        if isinstance(found_kb, ResolvedKnowledgeBase):
            knowledge = found_kb
        elif served.knowledge_base is not None and served.knowledge_base.name == ref.name:
            knowledge = served.knowledge_base
            waiting.append(found_kb)
        else:
            blocked.append(found_kb)
    model_claim = spec.model.pvc
    if model_claim is not None and (
        await kube.get("v1", "PersistentVolumeClaim", ns, model_claim.claim_name) is None
    ):
        blocked.append(
            Dependency("model", f"model PersistentVolumeClaim {model_claim.claim_name} not found")
        )

    rollout = None
    if existing is not None or not blocked:
        inputs = Inputs(adapters=tuple(adapters), knowledge_base=knowledge)
        children = builder.build(context.parent, spec, context.config, inputs)
        children[1]["metadata"]["annotations"] = {SERVED_ANNOTATION: _encode(inputs)}
        applied = [await kube.apply(child) for child in children]
        if _config_hash(applied[1]) != _config_hash(existing):
            context.logger.info(f"rolling out a new configuration: {len(adapters)} adapter(s)")
        pods = await _pods(context)
        rollout = _rollout(applied[1], pods)
        if not rollout.current or rollout.ready < rollout.desired:
            errors = await _load_errors(pods)
            views = [replace(v, load_error=errors.get(v.name)) for v in views]
    observation = status.DeploymentObservation(
        selector=builder.selector_string(name),
        endpoint=builder.endpoint(context.parent, spec),
        adapters=tuple(views),
        knowledge_base=ref.name if ref else None,
        collection=knowledge.collection if knowledge else None,
        blocked=tuple(blocked),
        waiting=tuple(waiting),
        rollout=rollout,
    )
    observed, fields = status.compute(observation)
    _record_metrics(context, spec, fields)
    return observed, fields


register(PHI_DEPLOYMENT, step, timer_seconds=TIMER_SECONDS)


@kopf.on.delete(GROUP, VERSION, PHI_DEPLOYMENT.plural, optional=True)
async def forget_phi_deployment(body: kopf.Body, **_: Any) -> None:
    """Children are owned and garbage-collected; only the metric series need dropping."""
    metrics.forget_phi_deployment(body.meta["namespace"], body.meta["name"])
