"""The runtime: start-up (clean leftovers, register nodes), the watches, and shutdown."""

from __future__ import annotations

import ipaddress
import logging
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from phiops_devcluster.node_runtime import NODE_NAMES
from phiops_devcluster.node_runtime.kube import Kube, Obj, list_and_watch
from phiops_devcluster.node_runtime.network import (
    cleanup_stale,
    ensure_bridge,
    register_runtime,
    unregister_runtime_and_remove_bridge,
)
from phiops_devcluster.node_runtime.nodes import Heartbeat, ensure_storage_class, register_nodes
from phiops_devcluster.node_runtime.pods import PodWorker, RuntimeContext
from phiops_devcluster.node_runtime.proxy import ServiceProxy
from phiops_devcluster.node_runtime.services import KUBERNETES, HostsFiles, ServiceCatalog
from phiops_devcluster.node_runtime.volumes import LocalProvisioner

log = logging.getLogger("node-runtime")

SHUTDOWN_JOIN_SECONDS = 8.0
DEFAULT_SERVICE_CIDR = "10.0.0.0/24"
SERVICES_LIST_SECONDS = 15.0


class NodeRuntime:
    def __init__(
        self, state_dir: Path, kubeconfig: Path, service_cidr: str = DEFAULT_SERVICE_CIDR
    ) -> None:
        self.state_dir = state_dir.resolve()
        self.kube = Kube(kubeconfig)
        self.service_cidr = str(ipaddress.ip_network(service_cidr))
        self.stopping = threading.Event()
        self.services = ServiceCatalog(self.kube, self.stopping)
        self.ctx = RuntimeContext(
            kube=self.kube,
            state_dir=self.state_dir,
            stopping=self.stopping,
            service_env={},
            forget=self._forget,
            services=self.services,
            hosts=HostsFiles(self.services),
        )
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()
        self._proxy: ServiceProxy | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set, then stop every pod process and remove the networks."""
        self._wait_for_apiserver(stop)
        if stop.is_set():
            return
        register_runtime(self.state_dir)
        ensure_bridge()
        cleanup_stale(self.state_dir)
        self._setup_services()
        register_nodes(self.kube)
        ensure_storage_class(self.kube)
        self._clean_pod_dirs()

        threads = [
            threading.Thread(
                target=Heartbeat(self.kube, self.stopping).run, name="heartbeat", daemon=True
            )
        ]
        threads += LocalProvisioner(self.kube, self.state_dir, self.stopping).threads()
        for node in NODE_NAMES:
            threads.append(
                threading.Thread(
                    name=f"watch-pods-{node}",
                    daemon=True,
                    target=list_and_watch,
                    args=(self.kube, "/api/v1/pods"),
                    kwargs={
                        "query": {"fieldSelector": f"spec.nodeName={node}"},
                        "on_event": self._on_pod_event,
                        "on_list": lambda items, node=node: self._on_pod_list(node, items),
                        "stop": self.stopping,
                        "name": f"pod watch {node}",
                    },
                )
            )
        for thread in threads:
            thread.start()
        log.info("node runtime ready: nodes %s, state %s", ", ".join(NODE_NAMES), self.state_dir)
        while not stop.wait(1.0):
            pass
        self.shutdown()

    def shutdown(self) -> None:
        log.info("shutting down: stopping pods")
        with self._lock:
            self.stopping.set()
            workers = list(self._workers.values())
        for worker in workers:
            worker.wake.set()
        deadline = time.monotonic() + SHUTDOWN_JOIN_SECONDS
        for worker in workers:
            worker.thread.join(max(0.0, deadline - time.monotonic()))
        if self._proxy is not None:
            self._proxy.close()
        cleanup_stale(self.state_dir)  # whatever a worker did not get to
        unregister_runtime_and_remove_bridge()
        log.info("node runtime stopped")

    def _wait_for_apiserver(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.kube.get("/api/v1/namespaces/default")
                return
            except Exception as err:
                log.info("waiting for the apiserver: %s", err)
                stop.wait(1.0)

    def _setup_services(self) -> None:
        """Watch Services and Endpoints (listed before any pod starts, so that pods get their
        names and variables from the start) and run the userspace proxy for their ClusterIPs.

        Pods reach the apiserver as in a cluster: at the `kubernetes` Service's ClusterIP
        (the first of the service range, in the apiserver certificate), on 443 and on the
        apiserver's own port (what KUBERNETES_SERVICE_PORT says), relayed to loopback."""
        for thread in self.services.threads():
            thread.start()
        if not self.services.wait_listed(SERVICES_LIST_SECONDS):
            log.warning("Services/Endpoints not listed yet; pods may miss Service names")
        cidr = ipaddress.ip_network(self.service_cidr)
        service_ip = str(cidr[1])
        kubernetes = self.services.get(*KUBERNETES)
        if kubernetes is not None and kubernetes.has_cluster_ip:
            if ipaddress.ip_address(kubernetes.cluster_ip) in cidr:
                service_ip = kubernetes.cluster_ip
            else:
                log.warning(
                    "the kubernetes Service's ClusterIP %s is outside the service range %s "
                    "(wipe the cluster after changing it); pods use %s",
                    kubernetes.cluster_ip,
                    cidr,
                    service_ip,
                )
        server = urlparse(self.kube.server)
        port = server.port if server.hostname in ("127.0.0.1", "localhost") else None
        if port is None:
            log.warning("pods will not reach the apiserver (it is not on loopback)")
        self._proxy = ServiceProxy(
            self.services, self.state_dir, self.service_cidr, service_ip, port
        )
        self._proxy.start()
        if port is None:
            return
        self.ctx.service_env.update(
            {
                "KUBERNETES_SERVICE_HOST": service_ip,
                "KUBERNETES_SERVICE_PORT": str(port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
                "KUBERNETES_PORT": f"tcp://{service_ip}:{port}",
                f"KUBERNETES_PORT_{port}_TCP": f"tcp://{service_ip}:{port}",
                f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
                f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
                f"KUBERNETES_PORT_{port}_TCP_ADDR": service_ip,
            }
        )

    def _clean_pod_dirs(self) -> None:
        """Drop the volumes of pods that no longer exist (their logs stay)."""
        root = self.state_dir / "pods"
        if not root.exists():
            return
        alive: set[str] = set()
        for node in NODE_NAMES:
            listing = self.kube.get("/api/v1/pods", fieldSelector=f"spec.nodeName={node}")
            alive.update(p["metadata"]["uid"] for p in listing.get("items") or [])
        for path in root.iterdir():
            if path.name.rsplit("_", 1)[-1] not in alive:
                for sub in ("volumes", "termination", "specs"):
                    shutil.rmtree(path / sub, ignore_errors=True)
                for name in ("etc-hosts", "resolv.conf"):
                    (path / name).unlink(missing_ok=True)

    # -- pods -----------------------------------------------------------------------------

    def _on_pod_list(self, node: str, items: list[Obj]) -> None:
        for pod in items:
            self._on_pod_event("ADDED", pod)
        listed = {p["metadata"]["uid"] for p in items}
        with self._lock:
            gone = [w for uid, w in self._workers.items() if w.node == node and uid not in listed]
        for worker in gone:
            worker.mark_deleted()

    def _on_pod_event(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            if uid in self._finished:
                return
            worker = self._workers.get(uid)
            if kind == "DELETED":
                if worker is not None:
                    worker.mark_deleted()
                return
            if worker is not None:
                worker.update(pod)
                return
            if self.stopping.is_set():
                return
            worker = PodWorker(self.ctx, pod)
            self._workers[uid] = worker
        worker.start()

    def _forget(self, uid: str) -> None:
        with self._lock:
            self._workers.pop(uid, None)
            self._finished.add(uid)
