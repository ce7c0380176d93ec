"""Services in the local node runtime, against a REAL control plane and real pods: ClusterIPs
answer through the userspace proxy (from the host and from pods), Service names resolve in pods
through their /etc/hosts (also names of Services created after the pod started), the kubelet's
service variables, endpoint changes, and a Service without endpoints refusing at once.
"""

from __future__ import annotations

import ipaddress
import queue
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from phiops_devcluster.node_runtime.kube import Kube

from tests.conftest import Cluster
from tests.integration.test_node_runtime import (
    Obj,
    condition,
    container_status,
    create_namespace,
    create_pod,
    eventually,
    log_text,
    pod_path,
    pytestmark,
    python_container,
    wait_phase,
)

__all__ = ["pytestmark"]  # the same marks: the cluster, root and iproute2

NS = "services-tests"
OTHER_NS = "services-tests-other"
# No proxy from the environment: ClusterIPs are reached directly.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

GRPC_ECHO = """
import grpc
from concurrent import futures

def unary(request, context):
    return request

def chat(requests, context):
    for message in requests:
        yield message.upper()

handler = grpc.method_handlers_generic_handler("echo.Echo", {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
})
server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("0.0.0.0:50051")
server.start()
server.wait_for_termination()
"""


@dataclass(frozen=True)
class Services:
    kube: Kube
    web_ip: str
    grpc_ip: str
    empty_ip: str


def svc_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/services" + (f"/{name}" if name else "")


def create_service(kube: Kube, name: str, selector: dict[str, str], ports: list[Obj]) -> str:
    created = kube.create(
        svc_path(NS), {"metadata": {"name": name}, "spec": {"selector": selector, "ports": ports}}
    )
    assert created is not None, f"service {name} already exists"
    return str(created["spec"]["clusterIP"])


def ready_ips(kube: Kube, name: str) -> set[str]:
    endpoints = kube.get_or_none(f"/api/v1/namespaces/{NS}/endpoints/{name}") or {}
    subsets = endpoints.get("subsets") or []
    return {a["ip"] for s in subsets for a in s.get("addresses") or []}


def get(url: str, timeout: float = 5) -> int:
    with OPENER.open(url, timeout=timeout) as response:
        return int(response.status)


def _answers(url: str) -> bool:
    try:
        return get(url) == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def services(cluster: Cluster) -> Iterator[Services]:
    kube = Kube(cluster.kubeconfig)
    for namespace in (NS, OTHER_NS):
        create_namespace(kube, namespace)
    kube.create(
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "web",
                                "image": "phiops-serve:test",
                                "command": ["python", "-m", "http.server", "8000"],
                                "workingDir": "/tmp",
                                "ports": [{"name": "http", "containerPort": 8000}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/", "port": "http"},
                                    "periodSeconds": 1,
                                },
                            }
                        ],
                    },
                },
            },
        },
    )
    create_pod(
        kube,
        "grpc-echo",
        {
            "containers": [
                python_container(
                    GRPC_ECHO,
                    image="phiops-serve:test",
                    readinessProbe={"tcpSocket": {"port": 50051}, "periodSeconds": 1},
                )
            ]
        },
        labels={"app": "grpc-echo"},
        namespace=NS,
    )
    web_ip = create_service(
        kube,
        "web",
        {"app": "web"},
        [
            {"name": "http", "port": 80, "targetPort": 8000},
            {"name": "alt", "port": 8080, "targetPort": "http"},
        ],
    )
    # As the operator's store Service in front of milvus-lite (gRPC on 19530).
    grpc_ip = create_service(
        kube, "grpc-echo", {"app": "grpc-echo"}, [{"port": 19530, "targetPort": 50051}]
    )
    empty_ip = create_service(kube, "empty", {"app": "nothing-matches"}, [{"port": 80}])
    for name in ("web", "grpc-echo"):
        eventually(lambda name=name: ready_ips(kube, name), what=f"a ready endpoint of {name}")
    yield Services(kube, web_ip, grpc_ip, empty_ip)


def pod_script(lines: list[str]) -> str:
    """A client pod's script: its last line writes the termination message."""
    return "\n".join(["import os, pathlib, socket, sys, time, urllib.request", *lines])


# -- tests ------------------------------------------------------------------------------------


def test_the_host_reaches_a_cluster_ip_on_every_service_port(
    services: Services, cluster: Cluster
) -> None:
    # Its own range, apart from a developer's cluster (10.0.0.0/24) on the same host.
    service_cidr = _service_cidr(cluster)
    assert not service_cidr.overlaps(ipaddress.ip_network("10.0.0.0/24"))
    assert ipaddress.ip_address(services.web_ip) in service_cidr
    assert get(f"http://{services.web_ip}:80/") == 200
    assert get(f"http://{services.web_ip}:8080/") == 200  # a named targetPort


def test_pods_resolve_services_by_name_in_their_namespace_and_across(
    services: Services, cluster: Cluster
) -> None:
    same = pod_script(
        [
            "results = []",
            f"for url in ('http://web/', 'http://web.{NS}.svc:80/', 'http://web.{NS}:8080/'):",
            "    with urllib.request.urlopen(url, timeout=5) as response:",
            "        results.append(f'{url}={response.status}')",
            "env = os.environ",
            "results.append(f\"env={env.get('WEB_SERVICE_HOST')}:{env.get('WEB_SERVICE_PORT')}"
            ":{env.get('WEB_SERVICE_PORT_ALT')}\")",
            "pathlib.Path('/dev/termination-log').write_text(' '.join(results))",
        ]
    )
    other = pod_script(
        [
            f"url = 'http://web.{NS}.svc.cluster.local/'",
            "with urllib.request.urlopen(url, timeout=5) as response:",
            "    status = response.status",
            "started = time.monotonic()",
            "try:",
            "    socket.getaddrinfo('web', 80)",
            "    bare = 'resolved'",
            "except socket.gaierror:",
            "    bare = 'unresolved'",
            "took = time.monotonic() - started",
            "env = os.environ.get('WEB_SERVICE_HOST')",
            "pathlib.Path('/dev/termination-log')"
            ".write_text(f'{url}={status} bare-web={bare} took={took:.1f} env={env}')",
        ]
    )
    create_pod(
        services.kube,
        "client",
        {"restartPolicy": "Never", "containers": [python_container(same)]},
        namespace=NS,
    )
    create_pod(
        services.kube,
        "client",
        {"restartPolicy": "Never", "containers": [python_container(other)]},
        namespace=OTHER_NS,
    )

    pod = wait_phase(services.kube, "client", "Succeeded", "Failed", namespace=NS)
    assert pod["status"]["phase"] == "Succeeded", log_text(cluster, pod)
    assert container_status(pod)["state"]["terminated"]["message"] == (
        f"http://web/=200 http://web.{NS}.svc:80/=200 http://web.{NS}:8080/=200 "
        f"env={services.web_ip}:80:8080"
    )

    pod = wait_phase(services.kube, "client", "Succeeded", "Failed", namespace=OTHER_NS)
    assert pod["status"]["phase"] == "Succeeded", log_text(cluster, pod)
    message = container_status(pod)["state"]["terminated"]["message"]
    assert message.startswith(f"http://web.{NS}.svc.cluster.local/=200 bare-web=unresolved ")
    assert message.endswith(" env=None")  # only its own namespace's Services are variables
    took = float(message.split("took=")[1].split()[0])
    assert took < 1.5, f"an unknown name should fail at once, took {took}s"


def test_a_service_created_after_a_pod_started_becomes_resolvable_there(
    services: Services, cluster: Cluster
) -> None:
    script = pod_script(
        [
            "misses, deadline = 0, time.monotonic() + 40",
            "while True:",
            "    try:",
            "        socket.getaddrinfo('late', 80)",
            "        break",
            "    except socket.gaierror:",
            "        if misses == 0:",
            "            print('late does not resolve yet', flush=True)",
            "        misses += 1",
            "        if time.monotonic() > deadline:",
            "            sys.exit(2)",
            "        time.sleep(0.1)",
            f"with urllib.request.urlopen('http://late.{NS}.svc/', timeout=5) as response:",
            "    status = response.status",
            "pathlib.Path('/dev/termination-log').write_text("
            "f\"misses={misses > 0} status={status} env={'LATE_SERVICE_HOST' in os.environ}\")",
        ]
    )
    created = create_pod(
        services.kube,
        "waits-for-late",
        {"restartPolicy": "Never", "containers": [python_container(script)]},
        namespace=NS,
    )
    eventually(
        lambda: "late does not resolve yet" in _log_or_empty(cluster, created),
        what="the pod to run without the name",
    )
    create_service(services.kube, "late", {"app": "web"}, [{"port": 80, "targetPort": 8000}])

    pod = wait_phase(services.kube, "waits-for-late", "Succeeded", "Failed", namespace=NS)
    assert pod["status"]["phase"] == "Succeeded", log_text(cluster, pod)
    # Variables are those of the Services that existed when the container started.
    assert container_status(pod)["state"]["terminated"]["message"] == (
        "misses=True status=200 env=False"
    )


def test_grpc_streams_through_a_cluster_ip_in_both_directions(services: Services) -> None:
    import grpc

    target = f"{services.grpc_ip}:19530"
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        unary = channel.unary_unary("/echo.Echo/Unary")
        assert unary(b"ping", timeout=10) == b"ping"

        # Full duplex: each answer arrives while the request stream is still open.
        outgoing: queue.Queue[bytes | None] = queue.Queue()

        def requests() -> Iterator[bytes]:
            while (message := outgoing.get()) is not None:
                yield message

        chat = channel.stream_stream("/echo.Echo/Chat")
        answers = chat(requests(), timeout=10)
        for word in (b"embed", b"the", b"handbook"):
            outgoing.put(word)
            assert next(answers) == word.upper()
        outgoing.put(None)
        assert list(answers) == []

        time.sleep(1.0)  # the same long-lived connection keeps working
        assert unary(b"again", timeout=10) == b"again"


def test_the_cluster_ip_follows_the_endpoints_when_the_backend_pod_is_replaced(
    services: Services,
) -> None:
    kube = services.kube
    (old,) = kube.get(pod_path(namespace=NS), labelSelector="app=web")["items"]
    old_ip = old["status"]["podIP"]
    assert ready_ips(kube, "web") == {old_ip}
    kube.delete(pod_path(old["metadata"]["name"], NS))

    def replaced() -> set[str] | None:
        ips = ready_ips(kube, "web")
        return ips if ips and old_ip not in ips else None

    (new_ip,) = eventually(replaced, what="the new web pod in the Endpoints")
    # The proxy's own watch of the Endpoints may be a moment behind the test's read.
    eventually(lambda: _answers(f"http://{services.web_ip}/"), timeout=3, what="an answer")
    (new,) = [
        p
        for p in kube.get(pod_path(namespace=NS), labelSelector="app=web")["items"]
        if p["status"].get("podIP") == new_ip
    ]
    assert condition(new, "Ready")["status"] == "True"


def test_a_service_without_ready_endpoints_refuses_at_once(services: Services) -> None:
    assert ready_ips(services.kube, "empty") == set()
    started = time.monotonic()
    with pytest.raises((ConnectionError, OSError)):
        get(f"http://{services.empty_ip}/", timeout=10)
    assert time.monotonic() - started < 1.0

    # A reset (it may beat connect() itself on the host), not a plain close or a hang.
    started = time.monotonic()
    with (
        pytest.raises(ConnectionResetError),
        socket.create_connection((services.empty_ip, 80), timeout=5) as sock,
    ):
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.recv(1)
    assert time.monotonic() - started < 1.0


def test_running_pods_see_names_come_and_go_and_deleted_services_leave_the_host(
    services: Services, cluster: Cluster
) -> None:
    kube = services.kube
    ip = create_service(kube, "short-lived", {"app": "web"}, [{"port": 80, "targetPort": 8000}])
    hosts = [
        p
        for p in (cluster.state_dir / "pods").glob(f"{NS}_*/etc-hosts")
        if "grpc-echo" in p.parent.name
    ]
    assert hosts, "no hosts file of the running grpc-echo pod"
    eventually(lambda: _is_local_address(ip), what=f"{ip} to be a host address")
    # The address comes with the Service, its backends with the Endpoints a moment later
    # (until then it refuses, as a Service without ready endpoints does).
    eventually(lambda: _answers(f"http://{ip}/"), what=f"{ip} to reach its pod")
    eventually(
        lambda: f"{ip}\tshort-lived.{NS}.svc.cluster.local" in hosts[0].read_text(),
        what="the name in a running pod's /etc/hosts",
    )
    inode = hosts[0].stat().st_ino

    # A headless Service's names are its ready pods' addresses.
    kube.create(
        svc_path(NS),
        {
            "metadata": {"name": "web-pods"},
            "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 8000}]},
        },
    )
    (pod_ip,) = eventually(lambda: ready_ips(kube, "web-pods"), what="web-pods endpoints")
    eventually(
        lambda: f"{pod_ip}\tweb-pods.{NS}.svc.cluster.local" in hosts[0].read_text(),
        what="the headless Service's name",
    )

    kube.delete(svc_path(NS, "short-lived"))
    eventually(lambda: "short-lived" not in hosts[0].read_text(), what="the name to go")
    assert hosts[0].stat().st_ino == inode  # rewritten in place: the pod still sees it
    eventually(lambda: not _is_local_address(ip), what=f"{ip} to leave the host")


# -- helpers ----------------------------------------------------------------------------------


def _service_cidr(cluster: Cluster) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The test cluster's service range, as its apiserver was started with it."""
    pid = int((cluster.state_dir / "pids" / "kube-apiserver.pid").read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    (flag,) = [a for a in argv if a.startswith("--service-cluster-ip-range=")]
    return ipaddress.ip_network(flag.split("=", 1)[1])


def _log_or_empty(cluster: Cluster, pod: Obj) -> str:
    try:
        return log_text(cluster, pod)
    except FileNotFoundError:
        return ""


def _answers(url: str) -> bool:
    try:
        return get(url, timeout=2) == 200
    except OSError:
        return False


def _is_local_address(ip: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ip, 0))
        except OSError:
            return False
        return True
