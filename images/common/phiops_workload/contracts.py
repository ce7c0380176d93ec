"""The operator <-> workload contract: a config file in, a termination message out.

The operator renders `WorkloadConfig` into a ConfigMap mounted in the pod; the workload writes
a `WorkloadResult` (small JSON) to the container's termination message, which the operator
reads back from the pod status. Both sides import these models; a test round-trips them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


class ResourceIdentity(BaseModel):
    """Which custom resource (and which generation of it) a workload works for."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: str = Field(alias="apiVersion")
    kind: str
    namespace: str
    name: str
    uid: str
    generation: int = 0


class WorkloadConfig(BaseModel):
    """The config file: the resource and its resolved spec (defaults applied)."""

    model_config = ConfigDict(extra="forbid")

    resource: ResourceIdentity
    spec: dict[str, Any]


class WorkloadResult(BaseModel):
    """The termination message: outcome, a reason the operator turns into a condition, and
    the figures it copies into status."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["Succeeded", "Failed"]
    reason: str
    message: str = ""
    figures: dict[str, Any] = Field(default_factory=dict)

    def to_message(self) -> str:
        """Serialise, shortening the message so the whole JSON fits the kubelet's limit."""
        text = self.model_dump_json()
        overflow = len(text.encode()) - TERMINATION_MESSAGE_LIMIT
        if overflow > 0:
            cut = self.message.encode()[: max(0, len(self.message.encode()) - overflow - 3)]
            shorter = self.model_copy(update={"message": cut.decode(errors="ignore") + "..."})
            text = shorter.model_dump_json()
        return text
