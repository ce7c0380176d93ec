"""Children of a PhiDeployment: the server's config, its Deployment, Service and
NetworkPolicy.

The handler resolves what the spec refers to (FineTuneJob adapters, the KnowledgeBase's
store) into `Inputs`; everything here is a pure function of the spec and those inputs.

The pods roll only for what needs an engine restart (`config_hash`) or a new volume; the
adapters are loaded and unloaded in the running pods through the server's admin port
(`phiops_operator.adapter_sync`), so a new or retrained adapter restarts nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phiops_workload.serving import (
    CONFIG_FILE,
    DEFAULT_ADMIN_PORT,
    AdapterConfig,
    EngineConfig,
    RerankConfig,
    RetrievalConfig,
    ServeConfig,
)

from phiops_operator.builders.common import (
    KNOWLEDGE_BASE_LABEL,
    NAMESPACE_NAME_LABEL,
    child_metadata,
    child_name,
    config_map,
    container_resources,
    network_policy,
    placement,
    pod_labels,
    restricted,
    secret_volume,
    tcp_ports,
    with_gpus,
)
from phiops_operator.config import OperatorConfig
from phiops_operator.models.base import SecretKeyRef
from phiops_operator.models.phi_deployment import Adapter, KnowledgeBaseRef, PhiDeploymentSpec

SERVER_COMPONENT = "server"
CONFIG_COMPONENT = "server-config"
CONFIG_HASH_ANNOTATION = "phiops.dev/config-hash"
CONFIG_DIR = "/etc/phiops"
VOLUMES_DIR = "/phiops/volumes"
SECRETS_DIR = "/phiops/secrets"
CACHE_DIR = "/phiops/cache"
HTTP_PORT = 8000
# Adapter loading and unloading, for the operator only: no Service port leads there.
ADMIN_PORT = DEFAULT_ADMIN_PORT

# Requests where the spec sets none: the base model and the engine's cache live in memory.
SERVER_REQUESTS = {"cpu": "500m", "memory": "2Gi"}


@dataclass(frozen=True)
class ResolvedAdapter:
    """An adapter folder on a claim, and where it came from."""

    name: str
    claim_name: str
    path: str
    source: str
    sha256: str | None = None


@dataclass(frozen=True)
class ResolvedKnowledgeBase:
    """How the server reaches a knowledge base: its store, alias and embedding model."""

    name: str
    uri: str
    collection: str
    database: str
    model: str
    device: str
    token: SecretKeyRef | None = None


@dataclass(frozen=True)
class Inputs:
    adapters: tuple[ResolvedAdapter, ...] = ()
    """The adapters to serve now (in the config, loaded at start and hot)."""
    knowledge_base: ResolvedKnowledgeBase | None = None
    claims: tuple[str, ...] = ()
    """More claims to mount: a FineTuneJob's output claim before its adapter is there (to
    hot-load it when the job succeeds), a claim no adapter needs any more (until the pods
    roll anyway)."""


def adapter_source(adapter: Adapter) -> str:
    """Where an adapter comes from, as status and the server's logs name it."""
    if adapter.fine_tune_job_ref is not None:
        return f"fineTuneJob/{adapter.fine_tune_job_ref.name}"
    assert adapter.pvc is not None  # the model guarantees exactly one source
    return f"pvc/{adapter.pvc.claim_name}/{adapter.pvc.path}"


def server_name(parent_name: str) -> str:
    """The Deployment's and the Service's name."""
    return child_name(parent_name, SERVER_COMPONENT)


def selector(parent_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/instance": parent_name,
        "app.kubernetes.io/component": SERVER_COMPONENT,
    }


def selector_string(parent_name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(parent_name).items())


def endpoint(parent: Mapping[str, Any], spec: PhiDeploymentSpec) -> str:
    """In-cluster base URL of the OpenAI-compatible API (what `base_url` of a client takes)."""
    meta = parent["metadata"]
    return f"http://{server_name(meta['name'])}.{meta['namespace']}.svc:{spec.service.port}/v1"


def _in_claim(claim_name: str, path: str) -> str:
    root = f"{VOLUMES_DIR}/{claim_name}"
    return root if path == "." else f"{root}/{path}"


def _rerank(ref: KnowledgeBaseRef, device: str) -> RerankConfig | None:
    """The re-ranker runs where the query embedder does (the KnowledgeBase's device)."""
    if ref.rerank is None:
        return None
    return RerankConfig(model=ref.rerank.model, candidates=ref.rerank.candidates, device=device)


def serve_config(spec: PhiDeploymentSpec, inputs: Inputs) -> ServeConfig:
    """What the server loads: the contract in phiops_workload.serving."""
    model = spec.model
    base_path = _in_claim(model.pvc.claim_name, model.pvc.path) if model.pvc else model.name
    retrieval = None
    kb, ref = inputs.knowledge_base, spec.knowledge_base_ref
    if kb is not None and ref is not None:
        retrieval = RetrievalConfig(
            uri=kb.uri,
            collection=kb.collection,
            database=kb.database,
            token_file=f"{SECRETS_DIR}/milvus/token" if kb.token else None,
            top_k=ref.top_k,
            score_threshold=ref.score_threshold,
            hybrid=ref.hybrid,
            neighbors=ref.neighbors,
            rerank=_rerank(ref, kb.device),
            ef=ref.ef,
            citations=ref.citations,
            model=kb.model,
            device=kb.device,
        )
    prompt = spec.prompt
    server = spec.server
    engine = spec.engine
    return ServeConfig(
        base_model_path=base_path,
        base_model_name=model.name,
        revision=model.revision if model.pvc is None else None,
        hub_token_file=f"{SECRETS_DIR}/hub/token" if model.token_secret_ref else None,
        adapters=[
            AdapterConfig(
                name=a.name, path=_in_claim(a.claim_name, a.path), source=a.source, sha256=a.sha256
            )
            for a in inputs.adapters
        ],
        max_new_tokens=server.max_new_tokens,
        dtype=server.dtype,
        quantize=server.quantize,
        engine=EngineConfig(
            max_model_len=engine.max_model_len,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            kv_cache_space_gib=engine.kv_cache_space_gib,
            max_num_seqs=engine.max_num_seqs,
            tensor_parallel_size=max(1, spec.resources.gpus),
            enforce_eager=engine.enforce_eager,
            enable_prefix_caching=engine.enable_prefix_caching,
            max_loras=engine.max_loras,
            max_lora_rank=engine.max_lora_rank,
        ),
        max_concurrent_requests=server.max_concurrent_requests,
        retrieval=retrieval,
        system_prompt=prompt.system_prompt if prompt else None,
        context_template=prompt.context_template if prompt else None,
        port=HTTP_PORT,
        admin_port=ADMIN_PORT,
        # On the pod's emptyDir: compile caches outlive a container restart.
        work_dir=f"{CACHE_DIR}/engine",
    )


def config_hash(config: ServeConfig) -> str:
    """What a change of restarts the engine: everything but the adapters, which the server
    loads and unloads while it runs."""
    text = json.dumps(config.model_dump(mode="json", exclude={"adapters"}), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def claims(spec: PhiDeploymentSpec, inputs: Inputs) -> list[str]:
    """The claims the pods mount, in name order: the same claims make the same pod template,
    whichever model or adapter needs them."""
    names = {a.claim_name for a in inputs.adapters} | set(inputs.claims)
    if spec.model.pvc is not None:
        names.add(spec.model.pvc.claim_name)
    return sorted(names)


def _volumes(
    parent_name: str, spec: PhiDeploymentSpec, inputs: Inputs
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": child_name(parent_name, CONFIG_COMPONENT)}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    # One volume per claim, however many models live on it (a pod may not mount one claim
    # under two volume names on every storage driver).
    for index, claim_name in enumerate(claims(spec, inputs)):
        volume = f"claim-{index}"
        volumes.append(
            {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim_name, "readOnly": True},
            }
        )
        mounts.append(
            {"name": volume, "mountPath": f"{VOLUMES_DIR}/{claim_name}", "readOnly": True}
        )
    secrets: list[tuple[str, SecretKeyRef | None]] = [("hub", spec.model.token_secret_ref)]
    if inputs.knowledge_base is not None:
        secrets.append(("milvus", inputs.knowledge_base.token))
    for what, ref in secrets:
        if ref is not None:
            volumes.append(secret_volume(f"{what}-token", ref.name, ref.key, "token"))
            mounts.append(
                {"name": f"{what}-token", "mountPath": f"{SECRETS_DIR}/{what}", "readOnly": True}
            )
    return volumes, mounts


def deployment(
    parent: Mapping[str, Any],
    spec: PhiDeploymentSpec,
    config: OperatorConfig,
    inputs: Inputs,
) -> dict[str, Any]:
    """The serving pods; the pod template carries the config's hash, so what needs an engine
    restart (the base model, engine settings, retrieval, prompt, limits) rolls the pods, and
    adapters do not."""
    parent_name = parent["metadata"]["name"]
    res = spec.resources
    volumes, mounts = _volumes(parent_name, spec, inputs)
    resources = container_resources(res, SERVER_REQUESTS)
    pod_spec: dict[str, Any] = placement(res)
    with_gpus(resources, pod_spec, res.gpus, res.gpu_resource_name)
    env = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HF_HOME", "value": CACHE_DIR},
    ]
    if spec.model.pvc is not None:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    container: dict[str, Any] = {
        "name": SERVER_COMPONENT,
        "image": res.image or config.images.serve,
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": env,
        # protocol is a list-map key: server-side apply (1.20) fails without it.
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        # /healthz answers while the model loads; /readyz only once the base is loaded, every
        # adapter of the config has been tried (one that fails is reported, not fatal) and
        # the knowledge base is in.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "volumeMounts": mounts,
        "resources": resources,
    }
    template_labels = pod_labels(parent["kind"], parent_name, SERVER_COMPONENT)
    if spec.knowledge_base_ref is not None:
        template_labels[KNOWLEDGE_BASE_LABEL] = spec.knowledge_base_ref.name
    digest = config_hash(serve_config(spec, inputs))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(parent, SERVER_COMPONENT),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(parent_name)},
            # A new pod must load before an old one goes: no gap in serving during a roll.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": template_labels,
                    "annotations": {CONFIG_HASH_ANNOTATION: digest},
                },
                "spec": restricted({"containers": [container], "volumes": volumes, **pod_spec}),
            },
        },
    }


def service(parent: Mapping[str, Any], spec: PhiDeploymentSpec) -> dict[str, Any]:
    parent_name = parent["metadata"]["name"]
    port = {"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(parent, SERVER_COMPONENT),
        "spec": {"type": spec.service.type, "selector": selector(parent_name), "ports": [port]},
    }


def build(
    parent: Mapping[str, Any], spec: PhiDeploymentSpec, config: OperatorConfig, inputs: Inputs
) -> list[dict[str, Any]]:
    """Config first, so a pod never starts on a config that is not there yet."""
    serve = serve_config(spec, inputs)
    files = {CONFIG_FILE: serve.model_dump(mode="json", exclude_none=True)}
    return [
        config_map(parent, CONFIG_COMPONENT, files),
        deployment(parent, spec, config, inputs),
        service(parent, spec),
    ]


def network_policies(
    parent: Mapping[str, Any], spec: PhiDeploymentSpec, config: OperatorConfig
) -> list[dict[str, Any]]:
    """The API port admits everyone (clients, ingress controllers, Prometheus; the Service
    may be a LoadBalancer); the admin port, which loads and unloads adapters, admits the
    operator's pods only."""
    settings = config.network_policies
    operator = {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.operator_namespace}},
        "podSelector": {"matchLabels": dict(settings.operator_pod_labels)},
    }
    ingress = [
        {"ports": tcp_ports(HTTP_PORT)},
        {"from": [operator], "ports": tcp_ports(ADMIN_PORT)},
    ]
    name = parent["metadata"]["name"]
    pods = {"app.kubernetes.io/name": parent["kind"].lower(), **selector(name)}
    return [network_policy(parent, SERVER_COMPONENT, pods, ingress)]
