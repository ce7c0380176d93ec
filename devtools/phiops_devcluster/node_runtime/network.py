"""Pod networking: a host bridge, one network namespace and veth pair per pod, and host-wide IPAM.

Several runtimes (a developer's cluster and a test cluster) may run on one host at once: they
share the bridge `phiops0` (10.244.0.1/16) and allocate pod addresses from one pool under
`/run/phiops-node-runtime`, guarded by a lock file:

    ipam/<address>      a reservation: the pod's namespace, host veth and owner (a state dir)
    runtimes/<pid>      a live runtime and its state dir
    last-ip             the address handed out last (addresses are reused as late as possible)

A runtime cleans up only its own leftovers and those of owners with no live runtime, and
removes the bridge only when no other runtime is alive and no reservation is left.

Service ClusterIPs (see `proxy.py`) are /32 addresses on a second, port-less bridge that each
runtime owns alone, `phsvc<hash of its state dir>`: removing that link removes all of them at
once, and a runtime that restarts after a crash finds (and replaces) its own by name. The two
clusters' service ranges differ, so their addresses never collide on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("node-runtime.network")

BRIDGE = "phiops0"
POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")
GATEWAY = "10.244.0.1"
NETNS_PREFIX = "phiops-"
SERVICE_LINK_PREFIX = "phsvc"
RUN_DIR = Path("/run/phiops-node-runtime")
IPAM_DIR = RUN_DIR / "ipam"
RUNTIMES_DIR = RUN_DIR / "runtimes"
NETNS_DIR = Path("/run/netns")


def ip(*args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@contextlib.contextmanager
def _ipam_lock() -> Iterator[None]:
    IPAM_DIR.mkdir(parents=True, exist_ok=True)
    RUNTIMES_DIR.mkdir(parents=True, exist_ok=True)
    with (RUN_DIR / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class PodNetwork:
    netns: str | None  # None: hostNetwork pod
    ip: str
    host_veth: str | None = None

    @property
    def netns_path(self) -> str | None:
        return str(NETNS_DIR / self.netns) if self.netns else None


HOST_NETWORK = PodNetwork(netns=None, ip="127.0.0.1")


GATEWAY_ADDRESS = f"{GATEWAY}/{POD_NETWORK.prefixlen}"


def ensure_bridge() -> None:
    """The shared bridge with the gateway address."""
    with _ipam_lock():
        _ensure_bridge_locked()


def _ensure_bridge_locked() -> None:
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        ip("link", "add", BRIDGE, "type", "bridge")
        log.info("created bridge %s", BRIDGE)
    if f"inet {GATEWAY_ADDRESS} " not in ip("-o", "-4", "addr", "show", "dev", BRIDGE):
        ip("addr", "add", GATEWAY_ADDRESS, "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")


# -- service addresses ------------------------------------------------------------------------


def service_link(owner: Path) -> str:
    """The name of the link that holds a runtime's ClusterIPs (stable for its state dir)."""
    return SERVICE_LINK_PREFIX + hashlib.sha256(str(owner).encode()).hexdigest()[:8]


def create_service_link(owner: Path) -> str:
    """A fresh, empty link for this runtime's ClusterIPs (replacing a crashed run's one)."""
    name = service_link(owner)
    with _ipam_lock():
        if Path(f"/sys/class/net/{name}").exists():
            ip("link", "del", name, check=False)
        # A bridge without ports: `dummy` links need a kernel module these machines lack.
        ip("link", "add", name, "type", "bridge")
        with contextlib.suppress(OSError):  # no IPv6 link-local address on it
            Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1\n")
        ip("link", "set", name, "up")
    log.info("created service link %s", name)
    return name


def delete_service_link(name: str) -> None:
    with _ipam_lock():
        if Path(f"/sys/class/net/{name}").exists():
            ip("link", "del", name, check=False)
            log.info("removed service link %s and its ClusterIPs", name)


def add_service_address(link: str, address: str) -> None:
    """Make `address` (a ClusterIP) local to the host, as a /32 on `link`. Idempotent."""
    result = subprocess.run(
        ["ip", "addr", "replace", f"{address}/32", "dev", link],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ip addr replace {address}/32 dev {link}: {result.stderr.strip()}")


def remove_service_address(link: str, address: str) -> None:
    ip("addr", "del", f"{address}/32", "dev", link, check=False)


def register_runtime(owner: Path) -> None:
    with _ipam_lock():
        (RUNTIMES_DIR / str(os.getpid())).write_text(str(owner))


def _live_owners() -> set[str]:
    """State dirs of the runtimes alive now (forgetting dead ones). Call with the lock held."""
    owners: set[str] = set()
    for entry in RUNTIMES_DIR.iterdir():
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            owner = entry.read_text()
        except (FileNotFoundError, ProcessLookupError):
            entry.unlink(missing_ok=True)
            continue
        if b"phiops_devcluster.node_runtime" in cmdline:
            owners.add(owner)
        else:
            entry.unlink(missing_ok=True)
    return owners


def create_pod_network(uid: str, owner: Path) -> PodNetwork:
    short = uid.replace("-", "")[:10]
    net = PodNetwork(netns=f"{NETNS_PREFIX}{short}", ip="", host_veth=f"phv{short}")
    with _ipam_lock():
        _ensure_bridge_locked()  # another runtime may have removed it meanwhile
        address = _allocate(net, owner)
    net = PodNetwork(netns=net.netns, ip=address, host_veth=net.host_veth)
    assert net.netns and net.host_veth
    try:
        ip("netns", "add", net.netns)
        ip("link", "add", net.host_veth, "type", "veth", "peer", "name", "eth0", "netns", net.netns)
        ip("link", "set", net.host_veth, "master", BRIDGE, "up")
        ip(
            "-n",
            net.netns,
            "-batch",
            "-",
            stdin="\n".join(
                [
                    f"addr add {address}/{POD_NETWORK.prefixlen} dev eth0",
                    "link set eth0 up",
                    "link set lo up",
                    f"route add default via {GATEWAY}",
                ]
            )
            + "\n",
        )
    except Exception:
        delete_pod_network(net)
        raise
    return net


def delete_pod_network(net: PodNetwork) -> None:
    """Kill whatever still runs in the namespace, remove it, release the address."""
    _teardown(net)
    if net.ip and net.netns:
        with _ipam_lock():
            (IPAM_DIR / net.ip).unlink(missing_ok=True)


def _teardown(net: PodNetwork) -> None:
    if net.netns is None:
        return
    if (NETNS_DIR / net.netns).exists():
        for pid in ip("netns", "pids", net.netns, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        ip("netns", "del", net.netns, check=False)
    if net.host_veth and Path(f"/sys/class/net/{net.host_veth}").exists():
        ip("link", "del", net.host_veth, check=False)  # normally gone with the namespace
    if net.ip:
        ip("neigh", "del", net.ip, "dev", BRIDGE, check=False)


def _allocate(net: PodNetwork, owner: Path) -> str:
    """The next free address after the last one handed out (so addresses are reused late)."""
    first = int(POD_NETWORK.network_address) + 2  # .0.0 is the network, .0.1 the gateway
    count = POD_NETWORK.num_addresses - 3  # and the last one is the broadcast address
    last_file = RUN_DIR / "last-ip"
    try:
        start = int(ipaddress.ip_address(last_file.read_text().strip())) + 1 - first
    except (FileNotFoundError, ValueError):
        start = 0
    for offset in range(count):
        candidate = str(ipaddress.ip_address(first + (start + offset) % count))
        reservation = IPAM_DIR / candidate
        if reservation.exists():
            continue
        reservation.write_text(
            json.dumps({"netns": net.netns, "host_veth": net.host_veth, "owner": str(owner)})
        )
        last_file.write_text(candidate)
        return candidate
    raise RuntimeError(f"pod network {POD_NETWORK} is full")


def cleanup_stale(owner: Path) -> None:
    """Remove the pod networks and service links of a previous run of this runtime and of
    owners that have no live runtime (crashed, or wiped), and namespaces that lost their
    reservation."""
    with _ipam_lock():
        live = _live_owners() - {str(owner)}
        keep_links = {service_link(Path(o)) for o in live}
        for link in Path("/sys/class/net").glob(f"{SERVICE_LINK_PREFIX}*"):
            if link.name not in keep_links:
                log.info("removing stale service link %s", link.name)
                ip("link", "del", link.name, check=False)
        if Path(f"/sys/class/net/{BRIDGE}").exists():  # /32s earlier versions put there
            for line in ip("-o", "-4", "addr", "show", "dev", BRIDGE).splitlines():
                fields = line.split()
                address = fields[fields.index("inet") + 1] if "inet" in fields else ""
                if address.endswith("/32"):
                    ip("addr", "del", address, "dev", BRIDGE, check=False)
        reserved: set[str] = set()
        for reservation in IPAM_DIR.iterdir():
            try:
                info = json.loads(reservation.read_text())
            except (OSError, ValueError):
                continue
            if info.get("owner") in live:
                reserved.add(str(info.get("netns")))
                continue
            log.info("removing stale pod network %s (%s)", info.get("netns"), reservation.name)
            _teardown(PodNetwork(info.get("netns"), reservation.name, info.get("host_veth")))
            reservation.unlink(missing_ok=True)
        for path in NETNS_DIR.glob(f"{NETNS_PREFIX}*") if NETNS_DIR.exists() else []:
            if path.name not in reserved:
                log.info("removing orphaned network namespace %s", path.name)
                _teardown(PodNetwork(path.name, ""))


def unregister_runtime_and_remove_bridge() -> None:
    """At shutdown: forget this runtime; remove the bridge unless another one still uses it."""
    with _ipam_lock():
        (RUNTIMES_DIR / str(os.getpid())).unlink(missing_ok=True)
        if _live_owners() or any(IPAM_DIR.iterdir()):
            log.info("bridge %s still used by another node runtime; leaving it", BRIDGE)
            return
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            ip("link", "del", BRIDGE, check=False)
            log.info("removed bridge %s", BRIDGE)
