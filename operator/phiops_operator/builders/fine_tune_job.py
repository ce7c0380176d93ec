"""Children of a FineTuneJob."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phiops_operator.builders.common import workload_config
from phiops_operator.config import OperatorConfig
from phiops_operator.models.fine_tune_job import FineTuneJobSpec

CONFIG_COMPONENT = "train-config"


def build(
    parent: Mapping[str, Any], spec: FineTuneJobSpec, config: OperatorConfig
) -> list[dict[str, Any]]:
    """The configuration the training workload mounts."""
    return [workload_config(parent, CONFIG_COMPONENT, spec.to_wire())]
