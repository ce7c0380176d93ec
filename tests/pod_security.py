"""A small checker for Pod Security Standard "restricted" (the rules as of Kubernetes 1.28,
baseline's included), for pod specs rendered offline. No fixtures here.

`violations(pod_spec)` lists what the admission controller would refuse, one line each; an
empty list means the pod passes. `pod_specs(manifest)` finds the pod specs inside an object.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Volume types "restricted" allows (everything else, hostPath first, is refused).
ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
ADDABLE_CAPABILITIES = {"NET_BIND_SERVICE"}
ALLOWED_SECCOMP = {"RuntimeDefault", "Localhost"}
# Kinds that carry a pod template at spec.template (Jobs, Deployments, ...) or are pods.
TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def pod_specs(manifest: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod metadata, pod spec) of every pod `manifest` makes."""
    kind = manifest.get("kind")
    if kind == "Pod":
        yield manifest.get("metadata") or {}, manifest["spec"]
    elif kind in TEMPLATE_KINDS:
        template = manifest["spec"]["template"]
        yield template.get("metadata") or {}, template["spec"]
    elif kind == "CronJob":
        template = manifest["spec"]["jobTemplate"]["spec"]["template"]
        yield template.get("metadata") or {}, template["spec"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *pod.get("initContainers", []),
        *pod.get("containers", []),
        *pod.get("ephemeralContainers", []),
    ]


def violations(pod: dict[str, Any]) -> list[str]:
    out: list[str] = []
    pod_ctx = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"{field} is true")
    if pod_ctx.get("sysctls"):
        out.append("sysctls are set")
    if pod_ctx.get("runAsUser") == 0:
        out.append("pod runAsUser is 0")
    if (pod_ctx.get("seLinuxOptions") or {}).keys() & {"user", "role"}:
        out.append("pod seLinuxOptions set user/role")
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess"):
        out.append("pod is a Windows hostProcess")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ALLOWED_SECCOMP:
        out.append(f"pod seccompProfile {pod_seccomp}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {volume['name']} is of type {sorted(kinds - ALLOWED_VOLUMES)}")
    for container in _containers(pod):
        name = container["name"]
        ctx = container.get("securityContext") or {}
        if ctx.get("privileged"):
            out.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - ADDABLE_CAPABILITIES:
            out.append(f"{name}: adds capabilities {caps['add']}")
        if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot is not true (pod or container)")
        if ctx.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser is 0")
        seccomp = (ctx.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ALLOWED_SECCOMP:
            out.append(f"{name}: seccompProfile is {seccomp} (pod or container)")
        if ctx.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount {ctx['procMount']}")
        if (ctx.get("seLinuxOptions") or {}).keys() & {"user", "role"}:
            out.append(f"{name}: seLinuxOptions set user/role")
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{name}: Windows hostProcess")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                out.append(f"{name}: hostPort {port['hostPort']}")
    return out


def missing_requests(pod: dict[str, Any]) -> list[str]:
    """Containers without both a cpu and a memory request."""
    out = []
    for container in _containers(pod):
        requests = (container.get("resources") or {}).get("requests") or {}
        for resource in ("cpu", "memory"):
            if resource not in requests:
                out.append(f"{container['name']}: no {resource} request")
    return out
