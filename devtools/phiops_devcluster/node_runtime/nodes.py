"""The two Node objects, their heartbeats (status + Lease), and the default StorageClass."""

from __future__ import annotations

import logging
import platform
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phiops_devcluster.node_runtime import (
    CPU_NODE,
    GPU_NODE,
    PROVISIONER,
    STORAGE_CLASS,
)
from phiops_devcluster.node_runtime.kube import ApiError, Kube, Obj, now_micro, now_rfc3339, q

log = logging.getLogger("node-runtime.nodes")

KUBELET_VERSION = "v1.20.2"
LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 5.0
STATUS_EVERY_SECONDS = 10.0
GPU_RESOURCE = "nvidia.com/gpu"
BASE_CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}


@dataclass(frozen=True)
class NodeSpec:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    extra_capacity: dict[str, str] = field(default_factory=dict)

    @property
    def all_labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            **self.labels,
        }

    @property
    def capacity(self) -> dict[str, str]:
        return {**BASE_CAPACITY, **self.extra_capacity}

    def gpu_count(self) -> int:
        return int(self.extra_capacity.get(GPU_RESOURCE, "0"))


NODES = (
    NodeSpec(CPU_NODE),
    NodeSpec(
        GPU_NODE,
        labels={"nvidia.com/gpu.present": "true", "phiops.dev/node-pool": "gpu"},
        taints=({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"},),
        extra_capacity={GPU_RESOURCE: "2"},
    ),
)


def register_nodes(kube: Kube) -> None:
    """Create the nodes, or bring existing ones' labels, taints and status back to ours."""
    for spec in NODES:
        path = f"/api/v1/nodes/{q(spec.name)}"
        existing = kube.get_or_none(path)
        if existing is None:
            kube.create(
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": spec.name, "labels": spec.all_labels},
                    "spec": {"taints": list(spec.taints)},
                },
            )
            log.info("registered node %s", spec.name)
        else:
            taints: list[Obj] = list(existing.get("spec", {}).get("taints") or [])
            for taint in spec.taints:
                if not any(
                    t.get("key") == taint["key"] and t.get("effect") == taint["effect"]
                    for t in taints
                ):
                    taints.append(dict(taint))
            kube.patch(
                path,
                {
                    "metadata": {"labels": spec.all_labels},
                    "spec": {"taints": taints, "unschedulable": None},
                },
            )
            log.info("re-registered existing node %s", spec.name)


def ensure_storage_class(kube: Kube) -> None:
    kube.create(
        "/apis/storage.k8s.io/v1/storageclasses",
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        },
    )


class Heartbeat:
    """Keeps both nodes Ready: node status every ~10 s and their Leases every ~5 s, through and
    after apiserver outages (a failed beat is retried at the next tick, not a period later)."""

    def __init__(self, kube: Kube, stop: threading.Event) -> None:
        self._kube = kube
        self._stop = stop
        self._boot_id = str(uuid.uuid4())
        self._next_status = dict.fromkeys((spec.name for spec in NODES), 0.0)

    def run(self) -> None:
        while not self._stop.is_set():
            for spec in NODES:
                due = time.monotonic() >= self._next_status[spec.name]
                if due and self._beat("status", self._post_status, spec):
                    self._next_status[spec.name] = time.monotonic() + STATUS_EVERY_SECONDS
                self._beat("lease", self._renew_lease, spec)
            self._stop.wait(LEASE_RENEW_SECONDS)

    def _beat(self, what: str, post: Callable[[NodeSpec], None], spec: NodeSpec) -> bool:
        try:
            post(spec)
        except Exception as err:
            log.warning("heartbeat (%s) for %s failed: %s", what, spec.name, err)
            return False
        return True

    def _ready_since(self, spec: NodeSpec, now: str) -> str:
        """When the node became Ready: kept while the apiserver says Ready, else now (the node
        lifecycle controller marks it Unknown when the heartbeats stop reaching it)."""
        node = self._kube.get_or_none(f"/api/v1/nodes/{q(spec.name)}") or {}
        for cond in node.get("status", {}).get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                return str(cond.get("lastTransitionTime") or now)
        return now

    def _post_status(self, spec: NodeSpec) -> None:
        now = now_rfc3339()
        ready_since = self._ready_since(spec, now)

        def condition(kind: str, status: str, reason: str, message: str) -> Obj:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": ready_since,
            }

        status: dict[str, Any] = {
            "capacity": spec.capacity,
            "allocatable": spec.capacity,
            "conditions": [
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "phiops node runtime has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "phiops node runtime has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "phiops node runtime has sufficient PID available",
                ),
                condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "phiops local node runtime is posting ready status",
                ),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": spec.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": spec.name,
                "systemUUID": spec.name,
                "bootID": self._boot_id,
                "kernelVersion": platform.release(),
                "osImage": "phiops local node runtime",
                "containerRuntimeVersion": "phiops-local://0.1",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self._kube.patch(f"/api/v1/nodes/{q(spec.name)}/status", {"status": status})

    def _renew_lease(self, spec: NodeSpec) -> None:
        base = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        lease_spec = {
            "holderIdentity": spec.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now_micro(),
        }
        try:
            self._kube.patch(f"{base}/{q(spec.name)}", {"spec": lease_spec})
            return
        except ApiError as err:
            if err.status != 404:
                raise
        node = self._kube.get(f"/api/v1/nodes/{q(spec.name)}")
        self._kube.create(
            base,
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": spec.name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": spec.name,
                            "uid": node["metadata"]["uid"],
                        }
                    ],
                },
                "spec": lease_spec,
            },
        )
