"""Kopf glue for PhiDeployment: resolve adapters and knowledge base -> config, Deployment,
Service -> adapters loaded into the running pods -> status. Runs when the resource, its
children (pods turning ready), a FineTuneJob or KnowledgeBase it uses, or a claim it mounts
change; and every few seconds while a pod has not loaded an adapter yet."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, replace
from typing import Any

import aiohttp
import kopf
from phiops_workload.serving import ServeConfig
from pydantic import ValidationError

from phiops_operator import GROUP, VERSION, adapter_sync, conditions, metrics, serving_client
from phiops_operator.adapter_sync import PodReport, Request
from phiops_operator.builders import fine_tune_job as fine_tune_job_builder
from phiops_operator.builders import phi_deployment as builder
from phiops_operator.builders.phi_deployment import (
    Inputs,
    ResolvedAdapter,
    ResolvedKnowledgeBase,
)
from phiops_operator.models.base import SecretKeyRef
from phiops_operator.models.fine_tune_job import FineTuneJobSpec
from phiops_operator.models.kinds import PHI_DEPLOYMENT
from phiops_operator.models.knowledge_base import KnowledgeBaseSpec
from phiops_operator.models.phi_deployment import Adapter, PhiDeploymentSpec
from phiops_operator.network_policies import sync as sync_network_policies
from phiops_operator.reconcile import Context, InputRef, StatusUpdate, register
from phiops_operator.status import phi_deployment as status
from phiops_operator.status.phi_deployment import Dependency

# While a serving pod has not loaded an adapter it should serve, it is asked again this often.
ADAPTER_POLL_SECONDS = 5.0
SERVED_ANNOTATION = "phiops.dev/served-inputs"
# A load or unload asked of a pod is not asked of it again sooner (whatever came of it).
REQUEST_SPACING_SECONDS = 60.0
REQUESTS_MEMO = "adapter_requests"
PARALLEL_PODS = 16
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


def _output_claim(ftj: dict[str, Any]) -> str | None:
    """The claim a FineTuneJob writes its adapter to (None if its spec is invalid)."""
    try:
        spec = FineTuneJobSpec.model_validate(ftj.get("spec") or {})
    except ValidationError:
        return None
    claim, _ = fine_tune_job_builder.output_location(ftj["metadata"]["name"], spec)
    return claim


async def _mountable(context: Context, claim_name: str) -> bool:
    """The claim exists, is not being deleted, and may be mounted beside its writer (not
    ReadWriteOncePod)."""
    claim = await context.kube.get("v1", "PersistentVolumeClaim", context.namespace, claim_name)
    if claim is None or claim["metadata"].get("deletionTimestamp"):
        return False
    modes = (claim.get("spec") or {}).get("accessModes") or []
    return modes != ["ReadWriteOncePod"]


async def _resolve_adapter(
    context: Context, adapter: Adapter
) -> tuple[ResolvedAdapter | Dependency, str | None]:
    """The adapter, or why it is not there; and, for a FineTuneJob that has not succeeded,
    its output claim to mount now (so its adapter is loaded hot when it is written)."""
    kube, ns = context.kube, context.namespace
    if adapter.fine_tune_job_ref is not None:
        ref = adapter.fine_tune_job_ref.name
        ftj = await kube.get(f"{GROUP}/{VERSION}", "FineTuneJob", ns, ref)
        found = _ftj_adapter(adapter.name, ftj, ref, builder.adapter_source(adapter))
        claim = _output_claim(ftj) if ftj is not None and isinstance(found, Dependency) else None
        if claim is not None and not await _mountable(context, claim):
            claim = None
        return found, claim
    assert adapter.pvc is not None  # the model guarantees exactly one source
    claim_name = adapter.pvc.claim_name
    if await kube.get("v1", "PersistentVolumeClaim", ns, claim_name) is None:
        message = f"adapter {adapter.name}: PersistentVolumeClaim {claim_name} not found"
        return Dependency("adapter", message), None
    resolved = ResolvedAdapter(
        name=adapter.name,
        claim_name=claim_name,
        path=adapter.pvc.path,
        source=builder.adapter_source(adapter),
    )
    return resolved, None


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


def _template(deployment: dict[str, Any] | None) -> dict[str, Any]:
    template: dict[str, Any] = ((deployment or {}).get("spec") or {}).get("template") or {}
    return template


def _config_hash(deployment: dict[str, Any] | None) -> str | None:
    """The config hash a Deployment's pod template carries (what its pods' engine runs)."""
    annotations = _template(deployment).get("metadata", {}).get("annotations") or {}
    return annotations.get(builder.CONFIG_HASH_ANNOTATION)


def _claims_in(pod_spec: dict[str, Any] | None) -> list[str]:
    """The claims a pod (spec) mounts, in name order."""
    volumes = (pod_spec or {}).get("volumes") or []
    return sorted(
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    )


def _mounted_claims(deployment: dict[str, Any] | None) -> list[str]:
    return _claims_in(_template(deployment).get("spec"))


def _current(pod: dict[str, Any], deployment: dict[str, Any]) -> bool:
    """The pod runs the Deployment's current template, as far as serving goes: the same
    engine configuration and the same claims (an adapter is loaded only where its claim is)."""
    annotations = pod["metadata"].get("annotations") or {}
    return annotations.get(builder.CONFIG_HASH_ANNOTATION) == _config_hash(
        deployment
    ) and _claims_in(pod.get("spec")) == _mounted_claims(deployment)


def _rollout(deployment: dict[str, Any], pods: list[dict[str, Any]]) -> status.Rollout:
    """The Deployment as its pods show it: a pod is updated when it runs the template just
    applied (the Deployment's own counters lag a scale or a roll by a moment, and a scale
    is no roll)."""
    spec, st = deployment.get("spec") or {}, deployment.get("status") or {}
    desired = int(spec.get("replicas") or 0)
    updated = sum(_current(p, deployment) for p in pods)
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


def _pod_ready(pod: dict[str, Any]) -> bool:
    ready = conditions.find((pod.get("status") or {}).get("conditions"), "Ready") or {}
    return ready.get("status") == "True"


async def _sync_pod(
    context: Context,
    session: aiohttp.ClientSession,
    serve: ServeConfig,
    pod: dict[str, Any],
    current: bool,
    requests: dict[tuple[str, Request], float],
) -> PodReport:
    """Read one pod's /readyz and, when it runs the current template, load and unload
    adapters until it serves what `serve` lists. Best effort: a pod that does not answer is
    reported as such."""
    name, st = pod["metadata"]["name"], pod.get("status") or {}
    report = PodReport(name, ready=_pod_ready(pod), current=current)
    ip = st.get("podIP")
    if st.get("phase") != "Running" or not ip:
        return report
    found = await serving_client.read_models(session, ip, builder.HTTP_PORT)
    if found is None or not current:
        return replace(report, models=found)
    recent = {request for (pod_name, request) in requests if pod_name == name}
    todo = adapter_sync.plan(serve.adapters, found, serve.base_model_name, recent)
    models = dict(found)
    now = time.monotonic()
    for want in todo.load:
        requests[(name, adapter_sync.load_request(want))] = now
        model = await serving_client.load(session, ip, builder.ADMIN_PORT, want)
        models[want.name] = model
        if model.error:
            context.logger.warning(f"pod {name}: adapter {want.name} not loaded: {model.error}")
        elif model.loaded:
            context.logger.info(f"pod {name}: loaded adapter {want.name} ({want.source})")
    for model_name in todo.unload:
        requests[(name, adapter_sync.unload_request(model_name))] = now
        error = await serving_client.unload(session, ip, builder.ADMIN_PORT, model_name)
        if error:
            context.logger.warning(f"pod {name}: adapter {model_name} not unloaded: {error}")
        else:
            models.pop(model_name, None)
            context.logger.info(f"pod {name}: unloaded adapter {model_name}")
    return replace(report, models=models)


async def _sync_adapters(
    context: Context, serve: ServeConfig, deployment: dict[str, Any], pods: list[dict[str, Any]]
) -> list[PodReport]:
    """Every serving pod's report, after bringing the adapters of those on the current
    template to `serve.adapters` (one HTTP session, pods in parallel)."""
    requests: dict[tuple[str, Request], float] = context.memo.setdefault(REQUESTS_MEMO, {})
    now = time.monotonic()
    for key in [k for k, when in requests.items() if now - when >= REQUEST_SPACING_SECONDS]:
        del requests[key]
    limit = asyncio.Semaphore(PARALLEL_PODS)
    async with aiohttp.ClientSession() as session:

        async def one(pod: dict[str, Any]) -> PodReport:
            async with limit:
                current = _current(pod, deployment)
                return await _sync_pod(context, session, serve, pod, current, requests)

        return list(await asyncio.gather(*(one(pod) for pod in pods)))


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
    early_claims: list[str] = []
    views: list[status.AdapterView] = []
    for adapter in spec.adapters or []:
        found, claim = await _resolve_adapter(context, adapter)
        if claim is not None:
            early_claims.append(claim)
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
            # Not served until it is there: the base and the other adapters go ahead.
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
    if existing is not None or all(d.what == "adapter" for d in blocked):
        inputs = Inputs(
            adapters=tuple(adapters), knowledge_base=knowledge, claims=tuple(early_claims)
        )
        serve = builder.serve_config(spec, inputs)
        if existing is not None and builder.config_hash(serve) == _config_hash(existing):
            # The pods do not roll for this change: they keep the claims they mount (a claim
            # no adapter needs any more would roll them only to unmount it) while it lasts.
            needed = set(builder.claims(spec, inputs))
            keep = [
                claim
                for claim in _mounted_claims(existing)
                if claim not in needed and await _mountable(context, claim)
            ]
            inputs = replace(inputs, claims=(*inputs.claims, *keep))
        children = builder.build(context.parent, spec, context.config, inputs)
        children[1]["metadata"]["annotations"] = {SERVED_ANNOTATION: _encode(inputs)}
        applied = await kube.apply_all(children)
        policies = builder.network_policies(context.parent, spec, context.config)
        await sync_network_policies(context, policies)
        # Nothing sent for an unchanged Deployment: the one read above is current.
        deployment = applied[1] or existing
        assert deployment is not None
        if existing is None:
            pass  # a first rollout is no news (and every Event posted is a request)
        elif _config_hash(deployment) != _config_hash(existing):
            context.logger.info("rolling out a new engine configuration")
        elif (claims := _mounted_claims(deployment)) != _mounted_claims(existing):
            context.logger.info(f"rolling out to mount the claims {', '.join(claims)}")
        pods = await _pods(context)
        rollout = _rollout(deployment, pods)
        reports = await _sync_adapters(context, serve, deployment, pods)
        wanted = {a.name: a for a in serve.adapters}
        views = [
            replace(v, state=adapter_sync.observe(wanted[v.name], reports))
            if v.name in wanted
            else v
            for v in views
        ]
        _poll_while_loading(context, [v.state for v in views if v.state is not None])
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


def _poll_while_loading(context: Context, states: list[adapter_sync.AdapterState]) -> None:
    """Ready pods that have not loaded an adapter are asked again: soon while loads may be
    under way, after the request spacing once every one of them failed."""
    pending = [s for s in states if s.loaded_replicas < s.ready_replicas]
    if pending:
        failed = all(s.error for s in pending)
        context.hints.again_in(REQUEST_SPACING_SECONDS if failed else ADAPTER_POLL_SECONDS)


def inputs(spec: PhiDeploymentSpec) -> set[InputRef]:
    """What a PhiDeployment reads besides its children: FineTuneJobs and claims of its
    adapters, its KnowledgeBase, its model's claim."""
    refs: set[InputRef] = set()
    for adapter in spec.adapters or []:
        if adapter.fine_tune_job_ref is not None:
            refs.add(("FineTuneJob", adapter.fine_tune_job_ref.name))
        elif adapter.pvc is not None:
            refs.add(("PersistentVolumeClaim", adapter.pvc.claim_name))
    if spec.knowledge_base_ref is not None:
        refs.add(("KnowledgeBase", spec.knowledge_base_ref.name))
    if spec.model.pvc is not None:
        refs.add(("PersistentVolumeClaim", spec.model.pvc.claim_name))
    return refs


register(PHI_DEPLOYMENT, step, inputs)


@kopf.on.delete(GROUP, VERSION, PHI_DEPLOYMENT.plural, optional=True)
async def forget_phi_deployment(body: kopf.Body, **_: Any) -> None:
    """Children are owned and garbage-collected; only the metric series need dropping."""
    metrics.forget_phi_deployment(body.meta["namespace"], body.meta["name"])
