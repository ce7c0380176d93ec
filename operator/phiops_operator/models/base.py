"""Shared building blocks: camelCase models and the small types every kind reuses."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from phiops_operator.errors import FieldError

# Kubernetes object names (RFC 1123 subdomain) and labels (RFC 1123 label).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
DURATION = r"^([0-9]+(\.[0-9]+)?(s|m|h))+$"
# A path inside a volume: relative, no parent references.
RELATIVE_PATH = r"^(\.|[^/.][^/]*(/[^/]+)*)$"
# Hub model ids and revisions (`org/name`, a branch, tag or commit): no spaces, quotes, `$`,
# nor a leading `-` that a command line could take for an option.
HUB_ID = r"^[A-Za-z0-9_][-A-Za-z0-9_./]*$"
NO_SPACE = r"^[^\s]+$"

ResourceName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
Quantity = Annotated[str, Field(pattern=QUANTITY)]
Duration = Annotated[str, Field(pattern=DURATION)]
# Kubernetes resource quantities as users write them: `2`, `500m`, `4Gi`.
IntOrString = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]


class KubeModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(KubeModel):
    """A key of a Secret in the resource's namespace. Secret values are never copied into
    resources, logs or events; only this reference is."""

    name: ResourceName
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
    """Key inside the Secret."""


class LocalObjectRef(KubeModel):
    """A reference to another object in the same namespace."""

    name: ResourceName
    """Name of the referenced object."""


class VolumePath(KubeModel):
    """A path on a PersistentVolumeClaim in the resource's namespace."""

    claim_name: ResourceName
    """Name of the PersistentVolumeClaim."""
    path: Annotated[str, Field(pattern=RELATIVE_PATH, max_length=1024)] = "."
    """Path inside the volume, relative to its root."""


class Toleration(KubeModel):
    """A toleration, as in a pod spec."""

    key: Annotated[str, Field(max_length=316)] | None = None
    """Taint key the toleration applies to; empty matches all keys (with operator Exists)."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """How key and value are compared."""
    value: Annotated[str, Field(max_length=63)] | None = None
    """Taint value the toleration matches (operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: Annotated[int, Field(ge=0)] | None = None
    """How long a NoExecute taint is tolerated before eviction."""


class ResourceRequirements(KubeModel):
    """CPU, memory and extended resources (such as GPUs) for the workload's container."""

    requests: dict[str, IntOrString] | None = None
    """Minimum resources the scheduler reserves, e.g. `{cpu: "2", memory: 8Gi}`."""
    limits: dict[str, IntOrString] | None = None
    """Maximum resources the container may use."""


class PodSettings(KubeModel):
    """Where and how the operator's workload pods run."""

    image: Annotated[str, Field(min_length=1, max_length=512, pattern=NO_SPACE)] | None = None
    """Container image override; defaults to the operator's configured image for this workload."""
    resources: ResourceRequirements | None = None
    """Container resources."""
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = None
    """Node labels the pods must match."""
    tolerations: list[Toleration] | None = None
    """Taints the pods tolerate."""
    affinity: (
        Annotated[
            dict[str, Any],
            Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}),
        ]
        | None
    ) = None
    """Pod affinity rules, as in a pod spec (passed through unchanged)."""
    priority_class_name: ResourceName | None = None
    """PriorityClass of the pods."""


class ModelSource(KubeModel):
    """A Phi-3 model: by name from a model hub, or from a path on a volume (air-gapped)."""

    name: Annotated[str, Field(min_length=1, max_length=256, pattern=HUB_ID)] = (
        "microsoft/Phi-3-mini-4k-instruct"
    )
    """Model name on the model hub, e.g. `microsoft/Phi-3-mini-4k-instruct`. Ignored when `pvc`
    is set, except as the model's display name."""
    revision: Annotated[str, Field(min_length=1, max_length=128, pattern=HUB_ID)] | None = None
    """Hub revision (branch, tag or commit) to pin."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret holding a model-hub access token; mounted as a file, never put in env or logs."""
    pvc: VolumePath | None = None
    """Load the model from this path on a PersistentVolumeClaim instead of the hub."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(KubeModel):
    """A condition as the Kubernetes API conventions define it."""

    model_config = ConfigDict(frozen=False)

    type: Annotated[str, Field(max_length=316)]
    """Condition type: Ready (the summary), Reconciling, Stalled, or a kind-specific one."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(max_length=1024)]
    """One-word CamelCase reason for the last transition."""
    message: Annotated[str, Field(max_length=32768)] | None = None
    """Human-readable details."""
    last_transition_time: str
    """When the status last changed (RFC 3339)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation this condition was computed for."""


class CommonStatus(KubeModel):
    """Status fields every kind has."""

    model_config = ConfigDict(frozen=False)

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation the operator last reconciled."""
    conditions: list[Condition] | None = None
    """Ready, Reconciling, Stalled and kind-specific conditions."""


def exactly_one(model: BaseModel, *fields: str) -> None:
    """Raise when not exactly one of `fields` (python names) is set; names them by alias."""
    set_fields = [f for f in fields if getattr(model, f) is not None]
    if len(set_fields) != 1:
        names = ", ".join(type(model).model_fields[f].alias or f for f in fields)
        found = ", ".join(type(model).model_fields[f].alias or f for f in set_fields) or "none"
        raise ValueError(f"set exactly one of {names} (found: {found})")


def unique_names(field: str, names: list[str], taken: dict[str, str] | None = None) -> None:
    """Raise a FieldError at the first `spec.<field>[i].name` that repeats an earlier one
    or one of `taken` (name -> the field that already holds it). For spec-level lists."""
    seen = dict(taken or {})
    for index, name in enumerate(names):
        if name in seen:
            raise FieldError(
                (field, index, "name"),
                f"{name!r} is already taken by {seen[name]}; names must be unique",
            )
        seen[name] = f"spec.{field}[{index}].name"
