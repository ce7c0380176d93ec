"""Children of a KnowledgeBase."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phiops_operator.builders.common import workload_config
from phiops_operator.config import OperatorConfig
from phiops_operator.models.knowledge_base import KnowledgeBaseSpec

CONFIG_COMPONENT = "embed-config"


def build(
    parent: Mapping[str, Any], spec: KnowledgeBaseSpec, config: OperatorConfig
) -> list[dict[str, Any]]:
    """The configuration the embedding workload mounts."""
    return [workload_config(parent, CONFIG_COMPONENT, spec.to_wire())]
