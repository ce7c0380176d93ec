"""Children of a PhiDeployment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phiops_operator.builders.common import workload_config
from phiops_operator.config import OperatorConfig
from phiops_operator.models.phi_deployment import PhiDeploymentSpec

CONFIG_COMPONENT = "serve-config"


def build(
    parent: Mapping[str, Any], spec: PhiDeploymentSpec, config: OperatorConfig
) -> list[dict[str, Any]]:
    """The configuration the inference workload mounts."""
    return [workload_config(parent, CONFIG_COMPONENT, spec.to_wire())]
