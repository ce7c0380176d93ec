"""The cluster's Services and Endpoints as the node sees them: a watched cache that feeds the
userspace proxy (`proxy.py`), the pods' /etc/hosts files (cluster "DNS") and the service
environment variables of containers.

Names in /etc/hosts, for every Service with a ClusterIP (headless ones: each ready endpoint
address; ExternalName ones are not resolvable):

    <clusterIP>  <svc>.<ns>.svc.cluster.local <svc>.<ns>.svc <svc>.<ns> [<svc>]

the bare `<svc>` only in the pods of the Service's own namespace. glibc reads /etc/hosts on
every lookup, so running pods see Services as they come and go: the files are rewritten in
place (the same inode is bind-mounted at /etc/hosts in the pod's containers).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from phiops_devcluster.node_runtime.kube import Kube, Obj, list_and_watch

log = logging.getLogger("node-runtime.services")

CLUSTER_DOMAIN = "cluster.local"
KUBERNETES = ("default", "kubernetes")


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    protocol: str


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    cluster_ip: str  # "" when none (ExternalName), "None" when headless
    ports: tuple[ServicePort, ...]

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def has_cluster_ip(self) -> bool:
        return self.cluster_ip not in ("", "None")

    def names(self, namespace: str) -> list[str]:
        """Its host names as seen from a pod in `namespace`."""
        svc, ns = self.name, self.namespace
        names = [f"{svc}.{ns}.svc.{CLUSTER_DOMAIN}", f"{svc}.{ns}.svc", f"{svc}.{ns}"]
        return [*names, svc] if ns == namespace else names


@dataclass(frozen=True)
class Subset:
    addresses: tuple[str, ...]  # ready ones only
    ports: tuple[ServicePort, ...]


def parse_service(obj: Obj) -> Service:
    spec = obj.get("spec") or {}
    ports = tuple(
        ServicePort(p.get("name") or "", int(p["port"]), p.get("protocol") or "TCP")
        for p in spec.get("ports") or []
    )
    meta = obj["metadata"]
    return Service(meta["namespace"], meta["name"], spec.get("clusterIP") or "", ports)


def parse_endpoints(obj: Obj) -> tuple[Subset, ...]:
    return tuple(
        Subset(
            tuple(a["ip"] for a in subset.get("addresses") or [] if a.get("ip")),
            tuple(
                ServicePort(p.get("name") or "", int(p["port"]), p.get("protocol") or "TCP")
                for p in subset.get("ports") or []
            ),
        )
        for subset in obj.get("subsets") or []
    )


def env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def service_env(services: list[Service]) -> dict[str, str]:
    """The kubelet's variables for these Services (`<NAME>_SERVICE_HOST`, `_SERVICE_PORT`,
    `_SERVICE_PORT_<PORTNAME>` and the Docker-link style `<NAME>_PORT*`)."""
    env: dict[str, str] = {}
    for svc in services:
        if not svc.has_cluster_ip or not svc.ports:
            continue
        name, host, first = env_name(svc.name), svc.cluster_ip, svc.ports[0]
        env[f"{name}_SERVICE_HOST"] = host
        env[f"{name}_SERVICE_PORT"] = str(first.port)
        for port in svc.ports:
            if port.name:
                env[f"{name}_SERVICE_PORT_{env_name(port.name)}"] = str(port.port)
        env[f"{name}_PORT"] = f"{first.protocol.lower()}://{host}:{first.port}"
        for port in svc.ports:
            prefix = f"{name}_PORT_{port.port}_{port.protocol.upper()}"
            env[prefix] = f"{port.protocol.lower()}://{host}:{port.port}"
            env[f"{prefix}_PROTO"] = port.protocol.lower()
            env[f"{prefix}_PORT"] = str(port.port)
            env[f"{prefix}_ADDR"] = host
    return env


class ServiceCatalog:
    """Services and Endpoints of the whole cluster, kept current by two watches.

    Thread-safe. `on_change` callbacks run (in a watch thread) after every change to the
    Services, `on_dns_change` ones only when the host names or their addresses changed.
    """

    def __init__(self, kube: Kube, stop: threading.Event) -> None:
        self._kube = kube
        self._stop = stop
        self._lock = threading.Lock()
        self._services: dict[tuple[str, str], Service] = {}
        self._endpoints: dict[tuple[str, str], tuple[Subset, ...]] = {}
        self._dns: tuple[tuple[str, Service], ...] = ()
        self.on_change: list[Callable[[], object]] = []
        self.on_dns_change: list[Callable[[], object]] = []
        self._listed = {"services": threading.Event(), "endpoints": threading.Event()}

    def threads(self) -> list[threading.Thread]:
        return [
            threading.Thread(
                name=f"watch-{kind}",
                daemon=True,
                target=list_and_watch,
                args=(self._kube, f"/api/v1/{kind}"),
                kwargs={
                    "on_event": on_event,
                    "on_list": on_list,
                    "stop": self._stop,
                    "name": f"{kind} watch",
                },
            )
            for kind, on_event, on_list in (
                ("services", self._on_service, self._on_service_list),
                ("endpoints", self._on_endpoints, self._on_endpoints_list),
            )
        ]

    def wait_listed(self, timeout: float) -> bool:
        """Whether both have been listed once (within `timeout` seconds)."""
        return all(event.wait(timeout) for event in self._listed.values())

    # -- reading --------------------------------------------------------------------------

    def services(self) -> list[Service]:
        with self._lock:
            return list(self._services.values())

    def get(self, namespace: str, name: str) -> Service | None:
        with self._lock:
            return self._services.get((namespace, name))

    def backends(self, namespace: str, name: str, port_name: str) -> list[tuple[str, int]]:
        """The ready endpoint addresses of one TCP port of a Service, as (ip, targetPort)."""
        with self._lock:
            subsets = self._endpoints.get((namespace, name), ())
        return [
            (address, port.port)
            for subset in subsets
            for port in subset.ports
            if port.name == port_name and port.protocol == "TCP"
            for address in subset.addresses
        ]

    def hosts_lines(self, namespace: str) -> list[str]:
        """/etc/hosts lines for a pod in `namespace`."""
        with self._lock:
            dns = self._dns
        return [f"{address}\t{' '.join(svc.names(namespace))}" for address, svc in dns]

    def env(self, namespace: str, service_links: bool = True) -> dict[str, str]:
        """Service variables for a container starting now in `namespace` (the `kubernetes`
        Service's are the runtime's own, see runtime.py)."""
        if not service_links:
            return {}
        with self._lock:
            own = [
                s
                for s in self._services.values()
                if s.namespace == namespace and s.key != KUBERNETES
            ]
        return service_env(sorted(own, key=lambda s: s.name))

    # -- watch callbacks ------------------------------------------------------------------

    def _on_service_list(self, items: list[Obj]) -> None:
        services = [parse_service(obj) for obj in items]
        with self._lock:
            self._services = {svc.key: svc for svc in services}
        self._changed()
        self._listed["services"].set()

    def _on_service(self, kind: str, obj: Obj) -> None:
        svc = parse_service(obj)
        with self._lock:
            if kind == "DELETED":
                self._services.pop(svc.key, None)
            else:
                self._services[svc.key] = svc
        self._changed()

    def _on_endpoints_list(self, items: list[Obj]) -> None:
        with self._lock:
            self._endpoints = {
                (o["metadata"]["namespace"], o["metadata"]["name"]): parse_endpoints(o)
                for o in items
            }
        self._changed()
        self._listed["endpoints"].set()

    def _on_endpoints(self, kind: str, obj: Obj) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self._lock:
            if kind == "DELETED":
                self._endpoints.pop(key, None)
            else:
                self._endpoints[key] = parse_endpoints(obj)
        self._changed()

    def _changed(self) -> None:
        with self._lock:
            dns: list[tuple[str, Service]] = []
            for key in sorted(self._services):
                svc = self._services[key]
                if svc.has_cluster_ip:
                    dns.append((svc.cluster_ip, svc))
                elif svc.cluster_ip == "None":  # headless: the ready pods' addresses
                    ready = {a for s in self._endpoints.get(key, ()) for a in s.addresses}
                    dns.extend((address, svc) for address in sorted(ready))
            dns_changed = tuple(dns) != self._dns
            self._dns = tuple(dns)
        for callback in self.on_change + (self.on_dns_change if dns_changed else []):
            try:
                callback()
            except Exception:
                log.exception("service change handler failed")


class HostsFiles:
    """The /etc/hosts files of the running pods, rewritten in place when Services change."""

    def __init__(self, catalog: ServiceCatalog) -> None:
        self._catalog = catalog
        self._lock = threading.Lock()
        self._files: dict[str, tuple[Path, str, str]] = {}  # uid -> (path, namespace, head)
        catalog.on_dns_change.append(self.refresh)

    def add(self, uid: str, path: Path, namespace: str, head: str) -> None:
        """Write a pod's file (its own lines `head`, then the Services) and keep it current."""
        with self._lock:
            self._files[uid] = (path, namespace, head)
            self._write(path, namespace, head)

    def remove(self, uid: str) -> None:
        with self._lock:
            self._files.pop(uid, None)

    def refresh(self) -> None:
        with self._lock:
            for path, namespace, head in self._files.values():
                try:
                    self._write(path, namespace, head)
                except OSError as err:
                    log.warning("cannot update %s: %s", path, err)

    def _write(self, path: Path, namespace: str, head: str) -> None:
        lines = self._catalog.hosts_lines(namespace)
        text = head + "# Services (kept current by the node runtime)\n" + "\n".join(lines) + "\n"
        data = text.encode()
        # In place: the pod's containers have this inode bind-mounted at /etc/hosts, so a
        # rename would leave them with the old file. One write then a truncate: a reader sees
        # the new text (possibly with a stale tail for a moment), never an empty file.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
