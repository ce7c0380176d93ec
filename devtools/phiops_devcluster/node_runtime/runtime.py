"""The runtime: start-up (clean leftovers, register nodes), the watches, and shutdown."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from phiops_devcluster.node_runtime import NODE_NAMES
from phiops_devcluster.node_runtime.kube import Kube, Obj, list_and_watch
from phiops_devcluster.node_runtime.network import (
    TcpForwarder,
    cleanup_stale,
    ensure_bridge,
    register_runtime,
    unregister_runtime_and_remove_bridge,
)
from phiops_devcluster.node_runtime.nodes import Heartbeat, ensure_storage_class, register_nodes
from phiops_devcluster.node_runtime.pods import PodWorker, RuntimeContext
from phiops_devcluster.node_runtime.volumes import LocalProvisioner

log = logging.getLogger("node-runtime")

SHUTDOWN_JOIN_SECONDS = 8.0


class NodeRuntime:
    def __init__(self, state_dir: Path, kubeconfig: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.kube = Kube(kubeconfig)
        self.stopping = threading.Event()
        self.ctx = RuntimeContext(
            kube=self.kube,
            state_dir=self.state_dir,
            stopping=self.stopping,
            service_env={},
            forget=self._forget,
        )
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}
        self._finished: set[str] = set()
        self._forwarder: TcpForwarder | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set, then stop every pod process and remove the networks."""
        self._wait_for_apiserver(stop)
        if stop.is_set():
            return
        register_runtime(self.state_dir)
        self._setup_network()
        cleanup_stale(self.state_dir)
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
        if self._forwarder is not None:
            threads.append(
                threading.Thread(
                    target=self._forwarder.serve_forever, name="apiserver-forwarder", daemon=True
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
        if self._forwarder is not None:
            self._forwarder.close()
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

    def _setup_network(self) -> None:
        """The bridge, and access for pods to the apiserver at the `kubernetes` Service's
        ClusterIP (an address on the bridge, forwarded to the loopback apiserver)."""
        server = urlparse(self.kube.server)
        service = None
        if server.hostname in ("127.0.0.1", "localhost") and server.port is not None:
            for _ in range(20):
                service = self.kube.get_or_none("/api/v1/namespaces/default/services/kubernetes")
                if service is not None or self.stopping.wait(0.5):
                    break
        service_ip = (service or {}).get("spec", {}).get("clusterIP")
        ensure_bridge([service_ip] if service_ip else [])
        if not service_ip or server.port is None:
            log.warning("pods will not reach the apiserver (no local `kubernetes` Service)")
            return
        try:
            self._forwarder = TcpForwarder(service_ip, server.port, server.port)
        except OSError as err:
            log.warning("cannot forward %s:%s to the apiserver: %s", service_ip, server.port, err)
            return
        port = str(server.port)
        self.ctx.service_env.update(
            {
                "KUBERNETES_SERVICE_HOST": service_ip,
                "KUBERNETES_SERVICE_PORT": port,
                "KUBERNETES_SERVICE_PORT_HTTPS": port,
                "KUBERNETES_PORT": f"tcp://{service_ip}:{port}",
                f"KUBERNETES_PORT_{port}_TCP": f"tcp://{service_ip}:{port}",
                f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
                f"KUBERNETES_PORT_{port}_TCP_PORT": port,
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
                (path / "etc-hosts").unlink(missing_ok=True)

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
