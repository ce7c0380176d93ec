"""A userspace kube-proxy (as kube-proxy's original "userspace" mode): Service ClusterIPs as
real TCP listeners on the host.

For every Service with a ClusterIP (inside this cluster's service CIDR) and TCP ports, the
ClusterIP is a /32 on this runtime's own service link (see `network.py`) and an asyncio server
listens on `ClusterIP:port`. Each accepted connection goes to the next ready endpoint
`address:targetPort` of that Service port (round-robin, read from the Endpoints at connect
time; an endpoint that refuses or does not answer within CONNECT_TIMEOUT is skipped for the
next one) and is relayed both ways, with half-closes passed on, until both sides are done: a
long-lived HTTP/2 (gRPC) connection is just a long relay. With no ready endpoint the client's
connection is reset at once.

The host's processes reach ClusterIPs directly (local addresses); pods reach them through their
default route via the host (10.244.0.1). The `kubernetes` Service is pinned: its ClusterIP
relays, on port 443 and on the apiserver's own port, to the loopback-only apiserver.

Everything runs on one event loop in one thread; the watches only signal it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from phiops_devcluster.node_runtime.network import (
    add_service_address,
    create_service_link,
    delete_service_link,
    remove_service_address,
)
from phiops_devcluster.node_runtime.services import KUBERNETES, ServiceCatalog

log = logging.getLogger("node-runtime.proxy")

CONNECT_TIMEOUT = 2.0
MAX_CONNECT_ATTEMPTS = 3
CHUNK = 256 * 1024
RETRY_SECONDS = 2.0
SYNC_WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class Route:
    """Where connections to one ClusterIP:port go."""

    namespace: str
    name: str
    port_name: str
    fixed: tuple[tuple[str, int], ...] = ()  # backends not from Endpoints (the apiserver)


@dataclass
class _State:
    addresses: set[str] = field(default_factory=set)
    servers: dict[tuple[str, int], asyncio.Server] = field(default_factory=dict)
    routes: dict[tuple[str, int], Route] = field(default_factory=dict)
    next_backend: dict[tuple[str, int], int] = field(default_factory=dict)
    connections: dict[asyncio.Task[None], tuple[str, int]] = field(default_factory=dict)


class ServiceProxy:
    def __init__(
        self,
        catalog: ServiceCatalog,
        owner: Path,
        service_cidr: str,
        kubernetes_ip: str,
        apiserver_port: int | None,
    ) -> None:
        self._catalog = catalog
        self._owner = owner
        self._cidr = ipaddress.ip_network(service_cidr)
        self.kubernetes_ip = kubernetes_ip
        self._apiserver_port = apiserver_port
        self._link = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="service-proxy", daemon=True)
        self._state = _State()
        self._dirty = asyncio.Event()
        self._warned: set[str] = set()
        self._waiters: list[Future[None]] = []  # resolved after the next sync (loop only)
        # Called before the hosts files are rewritten: a name resolves only once its
        # ClusterIP is listening.
        catalog.on_change.append(lambda: self.changed(wait=SYNC_WAIT_SECONDS))

    # -- lifecycle (called from other threads) --------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Create the service link, start the loop, and wait for the first sync (which
        programs the pinned `kubernetes` Service at least)."""
        self._link = create_service_link(self._owner)
        self._thread.start()
        if not self.changed(wait=timeout):
            log.warning("service proxy: first sync took more than %.0fs", timeout)

    def changed(self, wait: float = 0.0) -> bool:
        """Services or Endpoints changed: resync (thread-safe). With `wait`, wait up to that
        many seconds for the sync to finish; whether it did."""
        done: Future[None] = Future()

        def mark() -> None:
            self._waiters.append(done)
            self._dirty.set()

        try:
            self._loop.call_soon_threadsafe(mark)
        except RuntimeError:  # the loop is closed: shutting down
            return False
        if not wait or not self._thread.is_alive():
            return False
        try:
            done.result(wait)
        except TimeoutError:
            return False
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening, drop every relayed connection, remove the ClusterIPs."""
        if self._thread.is_alive():
            done = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            with contextlib.suppress(Exception):
                done.result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if self._link:
            delete_service_link(self._link)

    # -- the loop -------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(_quiet_exceptions)
        self._loop.create_task(self._sync_forever())
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _sync_forever(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            waiters, self._waiters = self._waiters, []
            try:
                failed = await self._sync()
            except Exception:
                log.exception("service proxy: sync failed")
                failed = True
            for waiter in waiters:
                waiter.set_result(None)
            if failed:  # e.g. a port another process holds; try again later
                self._loop.call_later(RETRY_SECONDS, self._dirty.set)

    def _desired(self) -> dict[tuple[str, int], Route]:
        routes: dict[tuple[str, int], Route] = {}
        for svc in self._catalog.services():
            if not svc.has_cluster_ip or svc.key == KUBERNETES:
                continue
            if ipaddress.ip_address(svc.cluster_ip) not in self._cidr:
                if svc.cluster_ip not in self._warned:
                    self._warned.add(svc.cluster_ip)
                    log.warning(
                        "service %s/%s: ClusterIP %s is outside this cluster's range %s; "
                        "not proxied (wipe the cluster after changing its service CIDR)",
                        svc.namespace,
                        svc.name,
                        svc.cluster_ip,
                        self._cidr,
                    )
                continue
            for port in svc.ports:
                if port.protocol == "TCP":
                    routes[svc.cluster_ip, port.port] = Route(svc.namespace, svc.name, port.name)
        if self._apiserver_port is not None:
            apiserver = (("127.0.0.1", self._apiserver_port),)
            for number in {443, self._apiserver_port}:
                routes[self.kubernetes_ip, number] = Route(*KUBERNETES, "https", apiserver)
        return routes

    async def _sync(self) -> bool:
        """Make addresses and listeners match the Services; whether anything failed."""
        state, failed = self._state, False
        desired = self._desired()
        state.routes = desired  # connections look their route up when they arrive
        wanted_addresses = {address for address, _ in desired}

        for key in [k for k in state.servers if k not in desired]:
            state.servers.pop(key).close()
            state.next_backend.pop(key, None)
            # Their address goes too: reset the clients rather than leave them hanging.
            for task in [t for t, k in state.connections.items() if k == key]:
                task.cancel()
            log.info("service proxy: stopped listening on %s:%d", *key)
        for address in state.addresses - wanted_addresses:
            await asyncio.to_thread(remove_service_address, self._link, address)
            state.addresses.discard(address)

        for key in desired:
            address, port = key
            if key in state.servers:
                continue
            try:
                if address not in state.addresses:
                    await asyncio.to_thread(add_service_address, self._link, address)
                    state.addresses.add(address)
                state.servers[key] = await asyncio.start_server(
                    partial(self._accepted, key),
                    host=address,
                    port=port,
                    reuse_address=True,
                    backlog=512,
                    limit=CHUNK,
                )
            except (OSError, RuntimeError) as err:
                log.warning("service proxy: cannot listen on %s:%d: %s", address, port, err)
                failed = True
                continue
            route = desired[key]
            log.info(
                "service proxy: %s:%d -> %s/%s%s",
                address,
                port,
                route.namespace,
                route.name,
                f" port {route.port_name}" if route.port_name else "",
            )
        return failed

    async def _shutdown(self) -> None:
        state = self._state
        for server in state.servers.values():
            server.close()
        state.servers.clear()
        for task in list(state.connections):
            task.cancel()
        if state.connections:
            await asyncio.wait(list(state.connections), timeout=2)

    # -- connections ----------------------------------------------------------------------

    def _backends(self, route: Route) -> list[tuple[str, int]]:
        if route.fixed:
            return list(route.fixed)
        return self._catalog.backends(route.namespace, route.name, route.port_name)

    async def _accepted(
        self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._state.connections[task] = key
        upstream: asyncio.StreamWriter | None = None
        try:
            connected = await self._connect(key)
            if connected is None:
                _reset(writer)
                return
            up_reader, upstream = connected
            await asyncio.gather(
                _relay(reader, upstream, writer), _relay(up_reader, writer, upstream)
            )
        except asyncio.CancelledError:
            _reset(writer)
            raise
        finally:
            for side in (writer, upstream):
                if side is not None:
                    side.close()
            self._state.connections.pop(task, None)

    async def _connect(
        self, key: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the next ready endpoint, skipping ones that fail."""
        tried: set[tuple[str, int]] = set()
        for _ in range(MAX_CONNECT_ATTEMPTS):
            route = self._state.routes.get(key)
            backends = [b for b in self._backends(route) if b not in tried] if route else []
            if not backends:
                return None
            index = self._state.next_backend.get(key, 0)
            self._state.next_backend[key] = index + 1
            backend = backends[index % len(backends)]
            tried.add(backend)
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(*backend, limit=CHUNK), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError) as err:
                log.info(
                    "service proxy: %s:%d: endpoint %s:%d failed: %s",
                    *key,
                    *backend,
                    err or type(err).__name__,
                )
        return None


async def _relay(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reader_side: asyncio.StreamWriter
) -> None:
    """Copy one direction until EOF, then half-close the other side; an error (a reset)
    aborts both connections, as the peer would see it."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.transport.abort()
        reader_side.transport.abort()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), so the client fails at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _quiet_exceptions(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """Resets of relayed connections are normal; log the rest."""
    error = context.get("exception")
    if isinstance(error, ConnectionError | TimeoutError):
        return
    loop.default_exception_handler(context)
