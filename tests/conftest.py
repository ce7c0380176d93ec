"""Session fixtures: a real local control plane (with its node runtime) and phiops's CRDs.

The test cluster runs beside any developer cluster: its own state directory and free ports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.helpers import CRD_DIR

if TYPE_CHECKING:
    from phiops_devcluster.milvus_server import MilvusServer
    from phiops_devcluster.plane import ControlPlane


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Disruptive tests last: after an apiserver outage the controller-manager's and the
    scheduler's watches come back only after their back-off (up to 30 s), so Endpoints and
    bindings lag for a while in the session's one cluster."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


PSS_MODES = ("enforce", "audit", "warn")


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    state_dir: Path
    plane: ControlPlane | None = None  # for tests that stop and start its parts

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc.stdout + proc.stderr

    def apply(self, manifest: dict[str, Any], namespace: str) -> None:
        manifest.setdefault("metadata", {}).setdefault("namespace", namespace)
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def create_namespace(self, name: str) -> None:
        """A namespace labelled for Pod Security "restricted", which every pod phiops makes
        passes (the local control plane, 1.20, does not enforce the label: it states intent)."""
        labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in PSS_MODES}
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        namespace["metadata"]["labels"] = labels
        # apply: a module whose fixtures run twice (disruptive tests come last) finds it.
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace))

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        """The object as JSON, or None when it does not exist."""
        out = self.kubectl("get", "-n", namespace, kind, name, "-o", "json", check=False)
        return json.loads(out) if out.lstrip().startswith("{") else None


def free_port(pairs: int = 1) -> int:
    """A free port p with p..p+pairs-1 free too (etcd wants client and peer side by side)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + pairs > 65535:
            continue
        try:
            for extra in range(1, pairs):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + extra))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from phiops_devcluster.plane import ControlPlane, PlaneConfig

    root = tmp_path_factory.mktemp("phiops-cluster")
    api_port = free_port()
    config = PlaneConfig(
        state_dir=root / "state",
        kubeconfig=root / "kubeconfig",
        api_port=api_port,
        etcd_port=free_port(pairs=2),
        # ClusterIPs are host addresses: a range of its own, apart from a developer's cluster
        # (10.0.0.0/24) and from other sessions (their API ports differ).
        service_cidr=f"10.{100 + api_port % 100}.{api_port // 100 % 256}.0/24",
    )
    plane = ControlPlane(config)
    try:
        plane.up()
        previous = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(config.kubeconfig)
        yield Cluster(kubeconfig=config.kubeconfig, state_dir=config.state_dir, plane=plane)
    finally:
        if "previous" in locals():
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous
        plane.down(wipe=True)


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "-f", str(CRD_DIR))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd",
        "-l",
        "app.kubernetes.io/part-of=phiops",
    )
    # Established comes a moment before discovery lists the new kinds and their category.
    deadline = time.monotonic() + 30
    while "the server doesn't have a resource type" in cluster.kubectl(
        "get", "phiops", "-A", check=False
    ):
        assert time.monotonic() < deadline, "category phiops never appeared in discovery"
        time.sleep(0.5)
    return cluster


@pytest.fixture(scope="module")
def operator(crds: Cluster) -> Iterator[int]:
    """The operator running in this process (Kopf's runner thread), watching every namespace;
    yields the port of its /metrics endpoint. Per module, so a module can test an operator
    installed another way (the Helm chart) without this one racing it."""
    from kopf.testing import KopfRunner

    metrics_port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PHIOPS_METRICS_PORT", str(metrics_port))
        args = ["run", "--all-namespaces", "--standalone", "-m", "phiops_operator.handlers"]
        with KopfRunner(args, timeout=60) as runner:
            yield metrics_port
    assert runner.exception is None, runner.exception


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """One real Milvus standalone server (2.3.5) per session, started on first use; a test
    that needs it fails with the reason when it cannot start (one per machine: its etcd
    takes 127.0.0.1:2379). Killed with its process group at the end."""
    from phiops_devcluster.milvus_server import MilvusServer

    with MilvusServer(tmp_path_factory.mktemp("milvus-server")) as server:
        yield server
