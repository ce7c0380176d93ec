"""Children of a KnowledgeBase: the embedded store (PVC, Deployment, Service, NetworkPolicy)
and, per sync, a config ConfigMap and one embedding Job per shard. PURE: no API calls."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from phiops_workload.contracts import ResourceIdentity
from phiops_workload.knowledge import (
    ChunkingConfig,
    EmbeddingConfig,
    EmbedJobConfig,
    ShardConfig,
    SourceConfig,
    StoreConfig,
    default_alias,
    physical_collection,
    settings_fingerprint,
)

from phiops_operator.builders.common import (
    KNOWLEDGE_BASE_LABEL,
    child_metadata,
    child_name,
    claim,
    config_map,
    container_resources,
    labels,
    network_policy,
    placement,
    pod_labels,
    restricted,
    secret_volume,
    tcp_ports,
)
from phiops_operator.builders.phi_deployment import SERVER_COMPONENT
from phiops_operator.config import OperatorConfig
from phiops_operator.models.knowledge_base import DocumentSource, KnowledgeBaseSpec

STORE_COMPONENT = "store"
SYNC_COMPONENT = "sync"
STORE_PORT = 19530
STORE_DATA_DIR = "/var/lib/phiops-store"
SOURCES_DIR = "/phiops/sources"
SECRETS_DIR = "/phiops/secrets"
CONFIG_DIR = "/etc/phiops"
SYNC_ID_LABEL = "phiops.dev/sync-id"
SHARD_LABEL = "phiops.dev/shard"
PROMOTE_STEP = "promote"
# Pod retries inside one Job (eviction, node loss); failed syncs are retried by the operator.
JOB_BACKOFF_LIMIT = 2
# Requests where the spec sets none (spec.pod.resources applies to the embedding Jobs only):
# milvus-lite idles small; embedding holds a model and a batch; a drop is one RPC.
STORE_REQUESTS = {"cpu": "100m", "memory": "256Mi"}
SYNC_REQUESTS = {"cpu": "250m", "memory": "512Mi"}
DROP_REQUESTS = {"cpu": "50m", "memory": "128Mi"}


def store_name(parent_name: str) -> str:
    return child_name(parent_name, STORE_COMPONENT)


def store_uri(parent: Mapping[str, Any], spec: KnowledgeBaseSpec) -> str:
    """Where workloads reach the store: the embedded store's Service, or the user's Milvus."""
    milvus = spec.vector_store.milvus
    if milvus.uri is not None:
        return milvus.uri
    meta = parent["metadata"]
    return f"http://{store_name(meta['name'])}.{meta['namespace']}.svc:{STORE_PORT}"


def index_type(spec: KnowledgeBaseSpec) -> str:
    """The vector index the collection gets. `AUTOINDEX` is the server's own choice on a
    Milvus server; on the embedded store it is FLAT, an exact scan: milvus-lite's automatic
    index (faiss HNSW, M 16) lost a chunk for good among near-duplicate ones (1,373 rows, 292
    distinct vectors: not found even at ef 4,096); an exact scan of the sizes the
    embedded store is meant for costs tens of milliseconds (80 ms p50 at 25k chunks, about
    3x its HNSW once loaded: docs/knowledge-bases.md)."""
    milvus = spec.vector_store.milvus
    if milvus.uri is None and milvus.index.type == "AUTOINDEX":
        return "FLAT"
    return milvus.index.type


def _store_selector(parent_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/instance": parent_name,
        "app.kubernetes.io/component": STORE_COMPONENT,
    }


def store_children(
    parent: Mapping[str, Any], spec: KnowledgeBaseSpec, config: OperatorConfig
) -> list[dict[str, Any]]:
    """milvus-lite served from one pod with its volume (one process may open the data)."""
    if spec.vector_store.milvus.uri is not None:
        return []
    name = store_name(parent["metadata"]["name"])
    storage = spec.vector_store.milvus.embedded.storage
    store_claim = claim(
        parent, STORE_COMPONENT, storage.size, storage.storage_class_name, spec.reclaim_policy
    )
    selector = _store_selector(parent["metadata"]["name"])
    template_labels = pod_labels(parent["kind"], parent["metadata"]["name"], STORE_COMPONENT)
    container = {
        "name": "milvus-lite",
        "image": (spec.pod and spec.pod.image) or config.images.embed,
        "args": [
            "serve-store",
            "--data-dir",
            STORE_DATA_DIR,
            "--host",
            "0.0.0.0",
            "--port",
            str(STORE_PORT),
        ],
        # protocol is a list-map key: server-side apply (1.20) fails without it.
        "ports": [{"name": "milvus", "containerPort": STORE_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": STORE_PORT}, "periodSeconds": 2},
        "volumeMounts": [{"name": "data", "mountPath": STORE_DATA_DIR}],
        "resources": container_resources(None, STORE_REQUESTS),
    }
    pod_spec = {
        "containers": [container],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": name}}],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(parent, STORE_COMPONENT),
        "spec": {
            "replicas": 1,
            # Never two store pods at once: milvus-lite locks its data directory.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": template_labels}, "spec": restricted(pod_spec)},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(parent, STORE_COMPONENT),
        "spec": {
            "selector": selector,
            "ports": [
                {"name": "milvus", "port": STORE_PORT, "targetPort": STORE_PORT, "protocol": "TCP"}
            ],
        },
    }
    return [store_claim, deployment, service]


@dataclass(frozen=True)
class SyncPlan:
    """What one sync writes, derived from the spec: same spec and trigger, same plan."""

    sync_id: str
    alias: str
    collection: str
    configs: tuple[EmbedJobConfig, ...]


def sync_id(trigger: Mapping[str, Any]) -> str:
    """A short, stable id for one sync trigger (generation, request, tick, source versions)."""
    text = repr(sorted(trigger.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _source_config(source: DocumentSource) -> SourceConfig:
    root = f"{SOURCES_DIR}/{source.name}"
    if source.config_map is not None:
        return SourceConfig(
            name=source.name, kind="configMap", local_path=root, format=source.format
        )
    if source.persistent_volume_claim is not None:
        pvc = source.persistent_volume_claim
        path = root if pvc.path == "." else f"{root}/{pvc.path}"
        return SourceConfig(
            name=source.name,
            kind="persistentVolumeClaim",
            local_path=path,
            include=list(pvc.include),
            exclude=list(pvc.exclude or []),
            format=source.format,
        )
    if source.http is not None:
        return SourceConfig(
            name=source.name, kind="http", urls=list(source.http.urls), format=source.format
        )
    assert source.git is not None  # the model guarantees exactly one kind
    return SourceConfig(
        name=source.name,
        kind="git",
        git_url=source.git.url,
        git_ref=source.git.ref,
        git_subpath=source.git.subpath,
        format=source.format,
    )


def _embedding_config(spec: KnowledgeBaseSpec) -> EmbeddingConfig:
    embedding = spec.embedding
    if embedding.provider == "openai":
        openai = embedding.openai
        assert openai is not None  # the model guarantees it
        return EmbeddingConfig(
            provider="openai",
            model=openai.model,
            batch_size=openai.batch_size,
            base_url=openai.base_url,
            dimensions=openai.dimensions,
            api_key_file=f"{SECRETS_DIR}/openai/api-key" if openai.api_key_secret_ref else None,
        )
    st = embedding.sentence_transformers
    return EmbeddingConfig(
        provider="sentenceTransformers",
        model=st.model,
        device=st.device,
        batch_size=st.batch_size,
        precision=st.precision,
    )


def plan_sync(
    parent: Mapping[str, Any], spec: KnowledgeBaseSpec, trigger: Mapping[str, Any]
) -> SyncPlan:
    meta = parent["metadata"]
    milvus = spec.vector_store.milvus
    alias = milvus.collection or default_alias(meta["namespace"], meta["name"])
    chunking = ChunkingConfig(**spec.chunking.model_dump())
    embedding = _embedding_config(spec)
    partial_store = StoreConfig(
        uri=store_uri(parent, spec),
        token_file=f"{SECRETS_DIR}/milvus/token" if milvus.token_secret_ref else None,
        database=milvus.database,
        alias=alias,
        collection=alias,
        index_type=index_type(spec),
        metric=milvus.index.metric,
        hybrid=milvus.hybrid,
    )
    collection = physical_collection(
        alias, settings_fingerprint(chunking, embedding, partial_store)
    )
    store = partial_store.model_copy(update={"collection": collection})
    identity = ResourceIdentity.model_validate(
        {
            "apiVersion": parent["apiVersion"],
            "kind": parent["kind"],
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
            "generation": meta.get("generation", 0),
        }
    )
    sid = sync_id(trigger)
    shards = spec.sync.parallelism
    configs = tuple(
        EmbedJobConfig(
            resource=identity,
            sync_id=sid,
            sources=[_source_config(s) for s in spec.sources],
            chunking=chunking,
            embedding=embedding,
            store=store,
            shard=ShardConfig(index=i, count=shards),
        )
        for i in range(shards)
    )
    return SyncPlan(sync_id=sid, alias=alias, collection=collection, configs=configs)


def job_name(parent_name: str, plan_id: str, step: int | str) -> str:
    return child_name(parent_name, f"{SYNC_COMPONENT}-{plan_id}-{step}")


def _source_volumes(spec: KnowledgeBaseSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for source in spec.sources:
        volume_name = f"src-{source.name}"
        if source.config_map is not None:
            volume: dict[str, Any] = {
                "name": volume_name,
                "configMap": {"name": source.config_map.name},
            }
            if source.config_map.keys:
                volume["configMap"]["items"] = [
                    {"key": k, "path": k} for k in source.config_map.keys
                ]
        elif source.persistent_volume_claim is not None:
            volume = {
                "name": volume_name,
                "persistentVolumeClaim": {
                    "claimName": source.persistent_volume_claim.claim_name,
                    "readOnly": True,
                },
            }
        else:
            continue  # http and git sources are fetched by the embedder
        volumes.append(volume)
        mounts.append(
            {"name": volume_name, "mountPath": f"{SOURCES_DIR}/{source.name}", "readOnly": True}
        )
    return volumes, mounts


def _secret_volumes(spec: KnowledgeBaseSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes, mounts = [], []
    openai = spec.embedding.openai
    if spec.embedding.provider == "openai" and openai and openai.api_key_secret_ref:
        ref = openai.api_key_secret_ref
        volumes.append(secret_volume("openai-key", ref.name, ref.key, "api-key"))
        mounts.append(
            {"name": "openai-key", "mountPath": f"{SECRETS_DIR}/openai", "readOnly": True}
        )
    token = spec.vector_store.milvus.token_secret_ref
    if token is not None:
        volumes.append(secret_volume("milvus-token", token.name, token.key, "token"))
        mounts.append(
            {"name": "milvus-token", "mountPath": f"{SECRETS_DIR}/milvus", "readOnly": True}
        )
    return volumes, mounts


def _config_map_name(parent_name: str, plan_id: str) -> str:
    return child_name(parent_name, f"{SYNC_COMPONENT}-{plan_id}")


def _sync_job(
    parent: Mapping[str, Any],
    spec: KnowledgeBaseSpec,
    plan: SyncPlan,
    config: OperatorConfig,
    step: str,
    args: list[str],
) -> dict[str, Any]:
    """One Job of a sync (`step` is a shard index or `promote`), mounting its config,
    the sources and the secrets."""
    parent_name = parent["metadata"]["name"]
    sync_labels = {SYNC_ID_LABEL: plan.sync_id, SHARD_LABEL: step}
    meta = child_metadata(parent, f"{SYNC_COMPONENT}-{plan.sync_id}")
    meta["name"] = job_name(parent_name, plan.sync_id, step)
    meta["labels"] |= sync_labels
    source_volumes, source_mounts = _source_volumes(spec)
    secret_volumes, secret_mounts = _secret_volumes(spec)
    container: dict[str, Any] = {
        "name": "embed",
        "image": (spec.pod and spec.pod.image) or config.images.embed,
        "args": args,
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            *source_mounts,
            *secret_mounts,
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": container_resources(spec.pod, SYNC_REQUESTS),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": JOB_BACKOFF_LIMIT,
            "template": {
                "metadata": {
                    "labels": labels(parent["kind"], parent_name, SYNC_COMPONENT) | sync_labels
                },
                "spec": restricted(
                    {
                        "restartPolicy": "Never",
                        "containers": [container],
                        "volumes": [
                            {
                                "name": "config",
                                "configMap": {"name": _config_map_name(parent_name, plan.sync_id)},
                            },
                            *source_volumes,
                            *secret_volumes,
                        ],
                        **placement(spec.pod),
                    }
                ),
            },
        },
    }


def sync_children(
    parent: Mapping[str, Any], spec: KnowledgeBaseSpec, plan: SyncPlan, config: OperatorConfig
) -> list[dict[str, Any]]:
    """The config ConfigMap and one Job per shard for one sync, all named after its id."""
    configs = config_map(
        parent,
        f"{SYNC_COMPONENT}-{plan.sync_id}",
        {f"shard-{c.shard.index}.json": c.model_dump(mode="json") for c in plan.configs},
    )
    configs["metadata"]["labels"][SYNC_ID_LABEL] = plan.sync_id
    jobs = [
        _sync_job(
            parent,
            spec,
            plan,
            config,
            str(i),
            ["sync", "--config", f"{CONFIG_DIR}/shard-{i}.json"],
        )
        for i in range(len(plan.configs))
    ]
    return [configs, *jobs]


def promote_job(
    parent: Mapping[str, Any], spec: KnowledgeBaseSpec, plan: SyncPlan, config: OperatorConfig
) -> dict[str, Any]:
    """After every shard of a sharded sync succeeded: point the alias at the new collection.
    (A single-shard sync switches the alias itself.)"""
    args = ["promote", "--config", f"{CONFIG_DIR}/shard-0.json"]
    return _sync_job(parent, spec, plan, config, PROMOTE_STEP, args)


def cleanup_job(
    parent: Mapping[str, Any], spec: KnowledgeBaseSpec, alias: str, config: OperatorConfig
) -> dict[str, Any]:
    """For reclaimPolicy Delete on an external Milvus: drop the alias and its collections."""
    milvus = spec.vector_store.milvus
    args = ["drop", "--uri", store_uri(parent, spec), "--alias", alias]
    secret_volumes, secret_mounts = _secret_volumes(spec)
    if milvus.token_secret_ref is not None:
        args += ["--token-file", f"{SECRETS_DIR}/milvus/token"]
    meta = child_metadata(parent, "drop")
    # Owned by nothing: it must outlive the resource it cleans up after (it has a TTL).
    meta.pop("ownerReferences")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": labels(parent["kind"], parent["metadata"]["name"], "drop")},
                "spec": restricted(
                    {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "drop",
                                "image": (spec.pod and spec.pod.image) or config.images.embed,
                                "args": args,
                                "volumeMounts": secret_mounts,
                                "resources": container_resources(None, DROP_REQUESTS),
                            }
                        ],
                        "volumes": secret_volumes,
                        **placement(spec.pod),
                    }
                ),
            },
        },
    }


def network_policies(
    parent: Mapping[str, Any], spec: KnowledgeBaseSpec, config: OperatorConfig
) -> list[dict[str, Any]]:
    """milvus-lite has no authentication: its port admits this knowledge base's own sync
    Jobs and the servers of the PhiDeployments that retrieve from it (same namespace), no
    one else. An external Milvus is the user's to protect."""
    if spec.vector_store.milvus.uri is not None:
        return []
    name = parent["metadata"]["name"]
    kind = parent["kind"].lower()
    sync_pods = {
        "app.kubernetes.io/name": kind,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": SYNC_COMPONENT,
    }
    servers = {
        "app.kubernetes.io/name": "phideployment",
        "app.kubernetes.io/component": SERVER_COMPONENT,
        KNOWLEDGE_BASE_LABEL: name,
    }
    peers = [{"podSelector": {"matchLabels": sync_pods}}, {"podSelector": {"matchLabels": servers}}]
    ingress = [{"from": peers, "ports": tcp_ports(STORE_PORT)}]
    pods = {"app.kubernetes.io/name": kind, **_store_selector(name)}
    return [network_policy(parent, STORE_COMPONENT, pods, ingress)]
