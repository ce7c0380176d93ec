"""Every child the builders make, over the option combinations the samples, the demo and the
tests use: for checks that must hold for all of them (Pod Security, tokens, requests, schema
validation, NetworkPolicies). Pure: no cluster. No fixtures here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phiops_operator.builders import fine_tune_job as ftj
from phiops_operator.builders import knowledge_base as kb
from phiops_operator.builders import phi_deployment as phid
from phiops_operator.builders.phi_deployment import Inputs, ResolvedAdapter, ResolvedKnowledgeBase
from phiops_operator.config import OperatorConfig
from phiops_operator.models.fine_tune_job import FineTuneJobSpec
from phiops_operator.models.knowledge_base import KnowledgeBaseSpec
from phiops_operator.models.phi_deployment import PhiDeploymentSpec

from tests.helpers import REPO, load_all, samples

NAMESPACE = "team-a"
SECRET = {"name": "creds", "key": "token"}
POD_SETTINGS = {
    "image": "registry.example.com/phiops-embed:custom",
    "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
    "nodeSelector": {"pool": "cpu"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "priorityClassName": "batch",
}
ALL_SOURCES = [
    {"name": "policies", "configMap": {"name": "policy-docs", "keys": ["returns.md"]}},
    {"name": "manuals", "persistentVolumeClaim": {"claimName": "manuals", "path": "pdf"}},
    {"name": "site", "http": {"urls": ["https://example.com/faq.html"]}},
    {"name": "repo", "git": {"url": "https://git.example.com/docs.git", "subpath": "docs"}},
]
EXTERNAL = {"milvus": {"uri": "http://milvus.db:19530", "tokenSecretRef": SECRET}}

KNOWLEDGE_BASES: dict[str, dict[str, Any]] = {
    "embedded": {"sources": ALL_SOURCES[:1]},
    "embedded-delete-pod-settings": {
        "sources": ALL_SOURCES,
        "reclaimPolicy": "Delete",
        "pod": POD_SETTINGS,
        "vectorStore": {"milvus": {"hybrid": True, "embedded": {"storage": {"size": "2Gi"}}}},
    },
    "external-sharded-openai-delete": {
        "sources": ALL_SOURCES,
        "vectorStore": EXTERNAL,
        "sync": {"parallelism": 3, "interval": "1h"},
        "embedding": {
            "provider": "openai",
            "openai": {"baseURL": "https://api.example.com/v1", "apiKeySecretRef": SECRET},
        },
        "reclaimPolicy": "Delete",
    },
    "external-requests-only": {
        "sources": ALL_SOURCES[2:],
        "vectorStore": {"milvus": {"uri": "http://milvus.db:19530"}},
        "pod": {"resources": {"requests": {"cpu": "1"}}},
    },
}
FINE_TUNE_JOBS: dict[str, dict[str, Any]] = {
    "lora-cpu-claims-token": {
        "baseModel": {
            "name": "tiny-phi3",
            "pvc": {"claimName": "models"},
            "tokenSecretRef": SECRET,
        },
        "dataset": {"pvc": {"claimName": "data", "path": "train.jsonl"}},
        "method": "lora",
        "output": {"pvc": {"claimName": "adapters", "path": "tone"}},
        "resources": {"gpus": 0},
    },
    "qlora-two-gpus-url": {
        "dataset": {"url": "https://example.com/train.jsonl"},
        "method": "qlora",
        "activeDeadlineSeconds": 3600,
        "resources": {
            "gpus": 2,
            "resources": {"requests": {"memory": "16Gi"}},
            "nodeSelector": {"pool": "gpu"},
        },
        "output": {"reclaimPolicy": "Delete"},
    },
}
PHI_DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "base-only-cpu": {"model": {"name": "microsoft/Phi-3-mini-4k-instruct"}},
    "scaled-to-zero": {"replicas": 0},
    "everything-two-gpus": {
        "model": {"name": "tiny-phi3", "pvc": {"claimName": "models"}, "tokenSecretRef": SECRET},
        "adapters": [
            {"name": "tone", "fineTuneJobRef": {"name": "tone-job"}},
            {"name": "legal", "pvc": {"claimName": "models", "path": "adapters/legal"}},
        ],
        "knowledgeBaseRef": {"name": "handbook", "hybrid": True},
        "server": {"quantize": "nf4"},
        "resources": {"gpus": 2, "resources": {"limits": {"memory": "24Gi"}}},
        "service": {"type": "LoadBalancer", "port": 80},
    },
}


def _parent(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }


def knowledge_base_children(parent: dict[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    spec = KnowledgeBaseSpec.model_validate(parent["spec"])
    plan = kb.plan_sync(parent, spec, {"generation": 1})
    children = [
        *kb.store_children(parent, spec, config),
        *kb.sync_children(parent, spec, plan, config),
        *kb.network_policies(parent, spec, config),
    ]
    if len(plan.configs) > 1:
        children.append(kb.promote_job(parent, spec, plan, config))
    if spec.reclaim_policy == "Delete" and spec.vector_store.milvus.uri is not None:
        children.append(kb.cleanup_job(parent, spec, plan.alias, config))
    return children


def fine_tune_job_children(parent: dict[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    spec = FineTuneJobSpec.model_validate(parent["spec"])
    return [
        *ftj.setup_children(parent, spec, config),
        ftj.preflight_job(parent, spec, config),
        ftj.train_job(parent, spec, config, 1),
        ftj.train_job(parent, spec, config, 2),
    ]


def phi_deployment_inputs(spec: PhiDeploymentSpec) -> Inputs:
    """Every reference resolved, as the handler resolves them once they are ready."""
    adapters = []
    for adapter in spec.adapters or []:
        if adapter.pvc is not None:
            claim, path = adapter.pvc.claim_name, adapter.pvc.path
        else:
            assert adapter.fine_tune_job_ref is not None
            claim, path = f"{adapter.fine_tune_job_ref.name}-output", "."
        adapters.append(ResolvedAdapter(adapter.name, claim, path, phid.adapter_source(adapter)))
    knowledge = None
    if spec.knowledge_base_ref is not None:
        name = spec.knowledge_base_ref.name
        knowledge = ResolvedKnowledgeBase(
            name=name,
            uri=f"http://{name}-store.{NAMESPACE}.svc:19530",
            collection=f"kb_{name}",
            database="default",
            model="sentence-transformers/all-MiniLM-L6-v2",
            device="cpu",
        )
    return Inputs(adapters=tuple(adapters), knowledge_base=knowledge, claims=("early-output",))


def phi_deployment_children(parent: dict[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    spec = PhiDeploymentSpec.model_validate(parent["spec"])
    return [
        *phid.build(parent, spec, config, phi_deployment_inputs(spec)),
        *phid.network_policies(parent, spec, config),
    ]


RENDER = {
    "KnowledgeBase": knowledge_base_children,
    "FineTuneJob": fine_tune_job_children,
    "PhiDeployment": phi_deployment_children,
}


def parents() -> dict[str, dict[str, Any]]:
    """case id -> custom resource: the cases above, the samples and the demo's resources."""
    out: dict[str, dict[str, Any]] = {}
    for kind, cases in (
        ("KnowledgeBase", KNOWLEDGE_BASES),
        ("FineTuneJob", FINE_TUNE_JOBS),
        ("PhiDeployment", PHI_DEPLOYMENTS),
    ):
        for case, spec in cases.items():
            out[f"{kind}/{case}"] = _parent(kind, case, spec)
    demo = [
        doc
        for path in sorted((REPO / "examples" / "demo").glob("*.yaml"))
        for doc in load_all(Path(path))
    ]
    for doc in [*samples(), *demo]:
        if doc["kind"] in RENDER:
            name = doc["metadata"]["name"]
            out[f"{doc['kind']}/{name}"] = _parent(doc["kind"], name, doc["spec"])
    return out


def render(parent: dict[str, Any], config: OperatorConfig | None = None) -> list[dict[str, Any]]:
    return RENDER[parent["kind"]](parent, config or OperatorConfig())


def all_children(config: OperatorConfig | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(case id, child) for every child of every case."""
    return [(case, child) for case, parent in parents().items() for child in render(parent, config)]
