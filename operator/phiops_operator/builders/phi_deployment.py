"""Children of a PhiDeployment: the server's config, its Deployment and its Service.

The handler resolves what the spec refers to (FineTuneJob adapters, the KnowledgeBase's
store) into `Inputs`; everything here is a pure function of the spec and those inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phiops_workload.serving import (
    CONFIG_FILE,
    AdapterConfig,
    RetrievalConfig,
    ServeConfig,
)

from phiops_operator.builders.common import (
    child_metadata,
    child_name,
    config_map,
    container_resources,
    labels,
    placement,
    secret_volume,
    with_gpus,
)
from phiops_operator.config import OperatorConfig
from phiops_operator.models.base import SecretKeyRef
from phiops_operator.models.phi_deployment import Adapter, PhiDeploymentSpec

SERVER_COMPONENT = "server"
CONFIG_COMPONENT = "server-config"
CONFIG_HASH_ANNOTATION = "phiops.dev/config-hash"
CONFIG_DIR = "/etc/phiops"
VOLUMES_DIR = "/phiops/volumes"
SECRETS_DIR = "/phiops/secrets"
CACHE_DIR = "/phiops/cache"
HTTP_PORT = 8000

RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


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
    knowledge_base: ResolvedKnowledgeBase | None = None


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
            citations=ref.citations,
            model=kb.model,
            device=kb.device,
        )
    prompt = spec.prompt
    server = spec.server
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
        max_concurrent_requests=server.max_concurrent_requests,
        retrieval=retrieval,
        system_prompt=prompt.system_prompt if prompt else None,
        context_template=prompt.context_template if prompt else None,
        port=HTTP_PORT,
    )


def config_hash(config: ServeConfig) -> str:
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    claims: list[str] = []
    if spec.model.pvc is not None:
        claims.append(spec.model.pvc.claim_name)
    claims += [a.claim_name for a in inputs.adapters]
    for index, claim_name in enumerate(dict.fromkeys(claims)):
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
    """The serving pods; the pod template carries the config's hash, so a new adapter or
    collection rolls the pods."""
    parent_name = parent["metadata"]["name"]
    res = spec.resources
    volumes, mounts = _volumes(parent_name, spec, inputs)
    resources = container_resources(res)
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
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        # /healthz answers while the model loads; /readyz only once base, every adapter and
        # the knowledge base are in: a pod takes traffic when it can answer every model id.
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
        "securityContext": RESTRICTED_CONTAINER,
    }
    if resources:
        container["resources"] = resources
    pod_labels = labels(parent["kind"], parent_name, SERVER_COMPONENT)
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
                    "labels": pod_labels,
                    "annotations": {CONFIG_HASH_ANNOTATION: digest},
                },
                "spec": {
                    "containers": [container],
                    "volumes": volumes,
                    "securityContext": RESTRICTED_POD,
                    **pod_spec,
                },
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
