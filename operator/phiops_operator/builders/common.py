"""Names, labels and owner references every child shares."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from phiops_operator import __version__
from phiops_operator.models.base import PodSettings

MANAGED_BY = "phiops-operator"
# On the server pods of a PhiDeployment that retrieves from a knowledge base (its name): the
# NetworkPolicy of that knowledge base's embedded store admits them by it.
KNOWLEDGE_BASE_LABEL = "phiops.dev/knowledge-base"


def child_name(parent: str, component: str) -> str:
    """Fixed child names (`<cr>-<component>`): a handler that runs twice finds, not duplicates."""
    return f"{parent}-{component}"


def labels(kind: str, parent: str, component: str) -> dict[str, str]:
    """The recommended app.kubernetes.io labels. Deliberately NOT the parent's own labels:
    Argo CD would take a child carrying its tracking label for its own and prune it."""
    return {
        "app.kubernetes.io/name": kind.lower(),
        "app.kubernetes.io/instance": parent,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "phiops",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/version": __version__,
    }


def pod_labels(kind: str, parent: str, component: str) -> dict[str, str]:
    """Labels for a Deployment's pod template: without the operator's version, which would
    roll every pod on each operator upgrade although nothing they run changed (the version
    stays on the Deployment itself)."""
    pod = labels(kind, parent, component)
    del pod["app.kubernetes.io/version"]
    return pod


def owner_reference(parent: Mapping[str, Any]) -> dict[str, Any]:
    meta = parent["metadata"]
    return {
        "apiVersion": parent["apiVersion"],
        "kind": parent["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(parent: Mapping[str, Any], component: str) -> dict[str, Any]:
    meta = parent["metadata"]
    return {
        "name": child_name(meta["name"], component),
        "namespace": meta["namespace"],
        "labels": labels(parent["kind"], meta["name"], component),
        "ownerReferences": [owner_reference(parent)],
    }


def config_map(parent: Mapping[str, Any], component: str, files: dict[str, Any]) -> dict[str, Any]:
    """A ConfigMap holding JSON documents, one per key, rendered deterministically."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(parent, component),
        "data": {
            key: json.dumps(value, indent=2, sort_keys=True) + "\n" for key, value in files.items()
        },
    }


def workload_config(
    parent: Mapping[str, Any], component: str, spec_wire: dict[str, Any]
) -> dict[str, Any]:
    """The ConfigMap a workload pod mounts: which resource it serves and its resolved spec."""
    meta = parent["metadata"]
    resource = {
        "apiVersion": parent["apiVersion"],
        "kind": parent["kind"],
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta["uid"],
        "generation": meta.get("generation", 0),
    }
    return config_map(parent, component, {"config.json": {"resource": resource, "spec": spec_wire}})


def placement(settings: PodSettings | None) -> dict[str, Any]:
    """The pod-spec fields a resource's pod settings control (scheduling only)."""
    if settings is None:
        return {}
    out: dict[str, Any] = {}
    if settings.node_selector:
        out["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        out["tolerations"] = [t.to_wire() for t in settings.tolerations]
    if settings.affinity:
        out["affinity"] = settings.affinity
    if settings.priority_class_name:
        out["priorityClassName"] = settings.priority_class_name
    return out


def container_resources(
    settings: PodSettings | None, default_requests: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The spec's resources, with a cpu and memory request always there: from the limit when
    only a limit is given (as Kubernetes would), else from `default_requests`, so that the
    scheduler and quota see every workload."""
    wire = settings.resources.to_wire() if settings is not None and settings.resources else {}
    if default_requests:
        requests = dict(wire.get("requests") or {})
        limits = wire.get("limits") or {}
        for name, default in default_requests.items():
            requests.setdefault(name, limits.get(name, default))
        wire["requests"] = requests
    return wire


# The images' own user (images/*/Dockerfile: `useradd --uid 10001`, `USER 10001`).
WORKLOAD_UID = 10001


def restricted(pod_spec: dict[str, Any], api_access: bool = False) -> dict[str, Any]:
    """Make `pod_spec` pass Pod Security Standard "restricted": non-root with the images' uid
    (fsGroup makes claims writable for it), RuntimeDefault seccomp, and every container
    without privilege escalation or capabilities. The ServiceAccount token is mounted only
    for a pod that calls the Kubernetes API (`api_access`). Returns the same dict."""
    pod_spec["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": WORKLOAD_UID,
        "runAsGroup": WORKLOAD_UID,
        "fsGroup": WORKLOAD_UID,
        # Chown a claim only when its root is not the group's yet: models and stores are big.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod_spec["automountServiceAccountToken"] = api_access
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
    return pod_spec


def secret_volume(name: str, secret: str, key: str, file_name: str) -> dict[str, Any]:
    """Mount one Secret key as a file: secrets reach workloads as files, never env or logs."""
    return {
        "name": name,
        "secret": {"secretName": secret, "items": [{"key": key, "path": file_name}]},
    }


def claim(
    parent: Mapping[str, Any],
    component: str,
    size: str,
    storage_class: str | None,
    reclaim_policy: str,
) -> dict[str, Any]:
    """A volume claim the operator creates for a resource. Owned (so garbage-collected with
    it) only under reclaimPolicy Delete: by default the data outlives the resource."""
    meta = child_metadata(parent, component)
    if reclaim_policy != "Delete":
        meta.pop("ownerReferences")
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta,
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }
    if storage_class:
        manifest["spec"]["storageClassName"] = storage_class
    return manifest


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def with_gpus(
    resources: dict[str, Any], pod_spec: dict[str, Any], gpus: int, resource_name: str
) -> None:
    """Request `gpus` of `resource_name` (requests = limits, as extended resources need) and
    tolerate the usual GPU-node taint. Nothing changes for 0 GPUs."""
    if gpus <= 0:
        return
    count = str(gpus)
    resources.setdefault("limits", {})[resource_name] = count
    resources.setdefault("requests", {})[resource_name] = count
    tolerations = pod_spec.get("tolerations", [])
    if GPU_TOLERATION not in tolerations:
        pod_spec["tolerations"] = [*tolerations, GPU_TOLERATION]


NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace since 1.21


def network_policy(
    parent: Mapping[str, Any],
    component: str,
    pod_selector: Mapping[str, str],
    ingress: list[dict[str, Any]],
) -> dict[str, Any]:
    """An ingress-only NetworkPolicy for the pods `pod_selector` picks: what `ingress` lists
    is admitted, nothing else (egress is left alone). Policies add up, so a cluster admin
    may admit more with a policy of their own."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(parent, component),
        "spec": {
            "podSelector": {"matchLabels": dict(pod_selector)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def tcp_ports(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]
