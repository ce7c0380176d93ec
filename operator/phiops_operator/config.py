"""Operator configuration, read once from the environment (the Helm chart sets it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from phiops_operator import __version__


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass(frozen=True)
class Images:
    """Workload images; a resource's `image` field overrides them one by one."""

    embed: str = field(
        default_factory=lambda: _env("PHIOPS_EMBED_IMAGE", f"phiops-embed:{__version__}")
    )
    finetune: str = field(
        default_factory=lambda: _env("PHIOPS_FINETUNE_IMAGE", f"phiops-finetune:{__version__}")
    )
    serve: str = field(
        default_factory=lambda: _env("PHIOPS_SERVE_IMAGE", f"phiops-serve:{__version__}")
    )


def _flag(name: str, default: bool) -> bool:
    return _env(name, str(default)).strip().lower() in ("1", "true", "yes", "on")


def _labels(name: str, default: str) -> dict[str, str]:
    """`k=v,k=v` from the environment."""
    pairs = (item.split("=", 1) for item in _env(name, default).split(",") if "=" in item)
    return {key.strip(): value.strip() for key, value in pairs}


@dataclass(frozen=True)
class NetworkPolicies:
    """The NetworkPolicies the operator puts around the embedded stores and the inference
    servers. The admin port of a server admits the operator's pods only: their namespace and
    labels (the chart sets both; out of a cluster there is no such pod)."""

    enabled: bool = field(default_factory=lambda: _flag("PHIOPS_NETWORK_POLICIES", True))
    operator_namespace: str = field(
        default_factory=lambda: _env("PHIOPS_OPERATOR_NAMESPACE", "phiops")
    )
    operator_pod_labels: dict[str, str] = field(
        default_factory=lambda: _labels(
            "PHIOPS_OPERATOR_POD_LABELS",
            "app.kubernetes.io/name=phiops,app.kubernetes.io/component=operator",
        )
    )


@dataclass(frozen=True)
class OperatorConfig:
    images: Images = field(default_factory=Images)
    network_policies: NetworkPolicies = field(default_factory=NetworkPolicies)
    metrics_port: int = field(default_factory=lambda: int(_env("PHIOPS_METRICS_PORT", "8080")))
    # Concurrent reconciles; bounded so a burst of resources cannot starve the API server.
    worker_limit: int = field(default_factory=lambda: int(_env("PHIOPS_WORKER_LIMIT", "20")))
    # A resource nothing happened to is reconciled again after this long anyway: a safety
    # net for an event lost on the way (0: never). Costs ~0.01 requests/s per resource.
    resync_seconds: float = field(
        default_factory=lambda: float(_env("PHIOPS_RESYNC_SECONDS", "600"))
    )
    # The client's own limit on requests to the API server (client-go's QPS and burst).
    api_qps: float = field(default_factory=lambda: float(_env("PHIOPS_API_QPS", "100")))
    api_burst: int = field(default_factory=lambda: int(_env("PHIOPS_API_BURST", "200")))
