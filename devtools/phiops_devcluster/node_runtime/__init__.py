"""The local node runtime: dev/test tooling that plays the kubelet for the local control plane.

Nothing here runs in production; there the real kubelet does this work. Started by
`phiops_devcluster.plane` as `python -m phiops_devcluster.node_runtime --state-dir STATE
--kubeconfig KUBECONFIG --service-cidr CIDR`, it runs until SIGTERM and then stops every pod
process it started and removes the network namespaces, its ClusterIP addresses (and the bridge,
once no other runtime uses it) it created.

What it does:
- registers and heart-beats two nodes, `phiops-cpu-0` and `phiops-gpu-0` (the latter with
  `nvidia.com/gpu: 2`, the GPU pool's label and `nvidia.com/gpu=present:NoSchedule` taint), and
  the default StorageClass `phiops-local`; heartbeats go on through apiserver outages;
- keeps each pod's status what the apiserver holds, as the kubelet's status manager does: when
  another writer changed it (after an outage the node lifecycle controller marks every pod of a
  node that went Unknown NotReady), the runtime's status is sent again, with no restart;
- provisions claims of `phiops-local` as hostPath PVs under `STATE/volumes/<pv-name>`;
- runs the pods bound to its nodes. Containers of phiops's own images (`phiops-embed`,
  `phiops-finetune`, `phiops-serve`, `phiops-operator`, any registry/tag) run for real as local
  processes of this checkout's Python, each pod in its own network namespace (an address from
  10.244.0.0/16 on the host bridge `phiops0`, reachable from the host) and each container in a
  private mount namespace with its volumes bind-mounted at their `mountPath`s. Containers of any
  other image are simulated: Running and Ready, no process.
- Services work as in a cluster, for TCP (`services.py`, `proxy.py`): a userspace kube-proxy
  makes every ClusterIP of the cluster's service range (`--service-cidr`, the apiserver's
  `--service-cluster-ip-range`) a host address and relays `ClusterIP:port` round-robin to the
  ready endpoints, for the host's processes and for pods; each pod's /etc/hosts carries
  `<svc>.<ns>.svc.cluster.local`, `<svc>.<ns>.svc`, `<svc>.<ns>` (and `<svc>` in its own
  namespace) for every Service and is kept current while the pod runs; containers get the
  kubelet's `<NAME>_SERVICE_HOST`/`_PORT` variables of the Services that exist when they start.
- pods reach the apiserver as in a cluster: `KUBERNETES_SERVICE_HOST`/`_PORT` point at the
  `kubernetes` Service's ClusterIP (the first address of the service range, in the apiserver
  certificate) on the apiserver's port, and `https://kubernetes.default.svc` (port 443) works
  too; both are relayed to the loopback apiserver.

Files, stable for tests (see `pod_log_path`):

    STATE/pods/<namespace>_<name>_<uid>/
        <container>.log          stdout+stderr of every run of that container, appended
        volumes/<volume>/        materialised configMap/secret/emptyDir/downwardAPI volumes
        termination/<container>  the file bound at the container's terminationMessagePath
        layers/<container>/      (empty on the host) where the container's private tmpfs of
                                 copy-on-write layers is mounted, in its mount namespace only
        etc-hosts                bound at /etc/hosts (rewritten in place as Services change)
        resolv.conf              bound at /etc/resolv.conf: no DNS server, so that names
                                 not in /etc/hosts fail at once instead of after 10 s
    STATE/volumes/<pv-name>/     data of the PVs this runtime provisioned
    STATE/logs/node-runtime.log  this runtime's own log (written by plane.py's process manager)

When a pod is deleted its volumes and termination files are removed; its `*.log` files are kept
(for post-mortems) until `python -m phiops_devcluster down --wipe`.

Limits (it is not a container runtime): containers see the host's filesystem with their volumes
mounted over it, so a mountPath must not hide what the process needs (the checkout and its
`.venv` under /work, /usr). Nothing is created on the host outside STATE for a mountPath that
is missing: it is made inside the runtime's own volume that holds it, else in a copy-on-write
layer (an overlay on a private tmpfs) over its nearest existing directory (`/` for `/phiops/..`,
`/dev` for /dev/termination-log), so what the container writes into that directory stays in the
container, as in an image's writable layer. Images other than phiops's are not run. Requests
and limits are not enforced; startupProbes, lifecycle hooks, ephemeral containers, projected
serviceAccountToken sources and ConfigMap/Secret updates after start are not supported.
Services: TCP only (UDP/SCTP ports are ignored); no NodePort/LoadBalancer/externalIPs
listeners (their ClusterIP works), no sessionAffinity, no ExternalName (not resolvable), no
DNS server (SRV records, search domains, names of pods); headless Services resolve to their
ready pod addresses through /etc/hosts. Backends see the host (10.244.0.1) as the client, not
the pod that connected, as with kube-proxy's userspace mode.
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
