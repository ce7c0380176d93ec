"""The three kinds: their names, spec/status models and how kubectl prints them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from phiops_operator.models.fine_tune_job import FineTuneJobSpec, FineTuneJobStatus
from phiops_operator.models.knowledge_base import KnowledgeBaseSpec, KnowledgeBaseStatus
from phiops_operator.models.phi_deployment import PhiDeploymentSpec, PhiDeploymentStatus

CATEGORY = "phiops"

_READY = {
    "name": "Ready",
    "type": "string",
    "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
}
_REASON = {
    "name": "Reason",
    "type": "string",
    "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
}
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    printer_columns: tuple[dict[str, Any], ...]
    summary: str
    scale: dict[str, str] | None = field(default=None)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def module(self) -> str:
        """The file name this kind has in every layer (models, builders, handlers, status)."""
        return self.spec.__module__.rsplit(".", 1)[1]


KNOWLEDGE_BASE = Kind(
    kind="KnowledgeBase",
    plural="knowledgebases",
    short_names=("kb",),
    spec=KnowledgeBaseSpec,
    status=KnowledgeBaseStatus,
    summary="Documents chunked and embedded into a Milvus collection, kept in sync.",
    printer_columns=(
        _READY,
        {"name": "Documents", "type": "integer", "jsonPath": ".status.documents.total"},
        {"name": "Chunks", "type": "integer", "jsonPath": ".status.chunks"},
        {"name": "Collection", "type": "string", "jsonPath": ".status.collection", "priority": 1},
        {"name": "Last Sync", "type": "date", "jsonPath": ".status.lastSyncTime"},
        _REASON | {"priority": 1},
        _AGE,
    ),
)

FINE_TUNE_JOB = Kind(
    kind="FineTuneJob",
    plural="finetunejobs",
    short_names=("ftj",),
    spec=FineTuneJobSpec,
    status=FineTuneJobStatus,
    summary="A LoRA or QLoRA adapter trained on a Phi-3 base model by a GPU-scheduled pod.",
    printer_columns=(
        _READY,
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Method", "type": "string", "jsonPath": ".spec.method"},
        {
            "name": "Progress",
            "type": "integer",
            "jsonPath": ".status.progress.percent",
            "description": "Percent of training steps done",
        },
        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
        _REASON | {"priority": 1},
        _AGE,
    ),
)

PHI_DEPLOYMENT = Kind(
    kind="PhiDeployment",
    plural="phideployments",
    short_names=("phid", "phi"),
    spec=PhiDeploymentSpec,
    status=PhiDeploymentStatus,
    summary="Phi-3 served with adapters and retrieval behind an OpenAI-compatible API.",
    printer_columns=(
        _READY,
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Available", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Adapters", "type": "string", "jsonPath": ".status.adaptersReady"},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
        _REASON | {"priority": 1},
        _AGE,
    ),
    scale={
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    },
)

ALL_KINDS = (KNOWLEDGE_BASE, FINE_TUNE_JOB, PHI_DEPLOYMENT)
