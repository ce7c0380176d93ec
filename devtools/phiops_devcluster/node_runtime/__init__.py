"""The local node runtime: dev/test tooling that plays the kubelet for the local control plane.

Nothing here runs in production; there the real kubelet does this work. Started by
`phiops_devcluster.plane` as `python -m phiops_devcluster.node_runtime --state-dir STATE
--kubeconfig KUBECONFIG`, it runs until SIGTERM and then stops every pod process it started and
removes the network namespaces (and the bridge, once no other runtime uses it) it created.

What it does:
- registers and heart-beats two nodes, `phiops-cpu-0` and `phiops-gpu-0` (the latter with
  `nvidia.com/gpu: 2`, the GPU pool's label and `nvidia.com/gpu=present:NoSchedule` taint), and
  the default StorageClass `phiops-local`;
- provisions claims of `phiops-local` as hostPath PVs under `STATE/volumes/<pv-name>`;
- runs the pods bound to its nodes. Containers of phiops's own images (`phiops-embed`,
  `phiops-finetune`, `phiops-serve`, `phiops-operator`, any registry/tag) run for real as local
  processes of this checkout's Python, each pod in its own network namespace (an address from
  10.244.0.0/16 on the host bridge `phiops0`, reachable from the host) and each container in a
  private mount namespace with its volumes bind-mounted at their `mountPath`s. Containers of any
  other image are simulated: Running and Ready, no process.
- pods reach the apiserver as in a cluster: `KUBERNETES_SERVICE_HOST`/`_PORT` point at the
  `kubernetes` Service's ClusterIP (10.0.0.1, in the apiserver certificate), which this runtime
  forwards to the loopback apiserver. Other Services' ClusterIPs and cluster DNS do not resolve:
  there is no kube-proxy and no DNS; use pod IPs (Endpoints) instead.

Files, stable for tests (see `pod_log_path`):

    STATE/pods/<namespace>_<name>_<uid>/
        <container>.log          stdout+stderr of every run of that container, appended
        volumes/<volume>/        materialised configMap/secret/emptyDir/downwardAPI volumes
        termination/<container>  the file bound at the container's terminationMessagePath
        etc-hosts                bound at /etc/hosts
    STATE/volumes/<pv-name>/     data of the PVs this runtime provisioned
    STATE/logs/node-runtime.log  this runtime's own log (written by plane.py's process manager)

When a pod is deleted its volumes and termination files are removed; its `*.log` files are kept
(for post-mortems) until `python -m phiops_devcluster down --wipe`.

Limits (it is not a container runtime): containers see the host's filesystem with their volumes
mounted over it, so a mountPath must not hide what the process needs (the checkout and its
`.venv` under /work, /usr); missing mountPaths are created on the host as empty directories or
files (e.g. /dev/termination-log). Images other than phiops's are not run. Requests and limits
are not enforced; startupProbes, lifecycle hooks, ephemeral containers, projected
serviceAccountToken sources and ConfigMap/Secret updates after start are not supported.
"""

from __future__ import annotations

from pathlib import Path

CPU_NODE = "phiops-cpu-0"
GPU_NODE = "phiops-gpu-0"
NODE_NAMES = (CPU_NODE, GPU_NODE)
STORAGE_CLASS = "phiops-local"
PROVISIONER = "phiops.dev/local"


def pod_dir(state_dir: Path, namespace: str, name: str, uid: str) -> Path:
    """The directory that holds one pod's logs, volumes and termination-message files."""
    return Path(state_dir) / "pods" / f"{namespace}_{name}_{uid}"


def pod_log_path(state_dir: Path, namespace: str, name: str, uid: str, container: str) -> Path:
    """Where the stdout+stderr of `container` in the pod are appended (all its restarts)."""
    return pod_dir(state_dir, namespace, name, uid) / f"{container}.log"


def volume_dir(state_dir: Path, pv_name: str) -> Path:
    """The host directory behind a PV this runtime provisioned."""
    return Path(state_dir) / "volumes" / pv_name


__all__ = [
    "CPU_NODE",
    "GPU_NODE",
    "NODE_NAMES",
    "PROVISIONER",
    "STORAGE_CLASS",
    "pod_dir",
    "pod_log_path",
    "volume_dir",
]
