"""The operator under trouble on a REAL control plane: idle costs nothing, and status is fresh
within seconds after the API server was stopped or frozen."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests import helpers
from tests.conftest import Cluster, free_port

pytestmark = pytest.mark.cluster
NS = "reliability-tests"
# An external Milvus nobody listens on: the KnowledgeBase waits for it with back-off.
NOWHERE = "http://127.0.0.1:9"


@pytest.fixture(scope="module", autouse=True)
def namespace(crds: Cluster) -> str:
    crds.create_namespace(NS)
    return NS


class Operator(NamedTuple):
    metrics_port: int
    log: Path

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"the operator's log ({self.log}), last {lines} lines:\n" + "\n".join(text)


@pytest.fixture(scope="module")
def operator(
    namespace: str, crds: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """The operator as its pod runs it (`python -m phiops_operator`, its own process),
    watching this module's namespace only: its request count is this module's resources'
    alone. The process must live through every test."""
    metrics_port = free_port()
    argv = ["-m", "phiops_operator", "-n", NS, "--metrics-port", str(metrics_port)]
    env = {**os.environ, "KUBECONFIG": str(crds.kubeconfig)}
    # Outside the plane's state folder, which teardown wipes: pytest keeps its last runs.
    log_path = tmp_path_factory.mktemp("reliability") / "operator.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, *argv, "--liveness-port", "0"], env=env, stdout=log, stderr=log
        )
    try:
        helpers.eventually(lambda: _metrics_up(metrics_port), 60, "the operator's /metrics")
        yield Operator(metrics_port, log_path)
        assert process.poll() is None, f"the operator exited ({process.returncode}); {log_path}"
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _metrics_up(port: int) -> bool:
    try:
        operator_metric(port, "phiops_api_requests_total")
    except OSError:
        return False
    return True


def knowledge_base(name: str, source: str) -> dict[str, Any]:
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "KnowledgeBase",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "sources": [{"name": "docs", "configMap": {"name": source}}],
            "vectorStore": {"milvus": {"uri": NOWHERE}},
        },
    }


def documents(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS},
        "data": {"a.md": "# A\nText.\n"},
    }


def ready_reason(cluster: Cluster, name: str) -> str:
    obj = json.loads(cluster.kubectl("get", "-n", NS, "kb", name, "-o", "json"))
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready":
            return str(c.get("reason") or "")
    return ""


def operator_metric(port: int, name: str) -> float:
    """The sum of a metric's series on the operator's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(rf"{re.escape(name)}(\{{.*\}})? ")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if pattern.match(line))


def operator_requests(port: int) -> float:
    return operator_metric(port, "phiops_api_requests_total")


def wait_for_source_then_milvus(cluster: Cluster, name: str) -> None:
    helpers.eventually(
        lambda: ready_reason(cluster, name) == "SourceNotFound" or None,
        30,
        f"{name} waiting for its source",
    )


def test_an_idle_resource_sends_the_api_server_nothing(operator: Operator, crds: Cluster) -> None:
    """A PhiDeployment scaled to zero has its children and its status: from then on nothing
    changes, and nothing is sent (the operator used to re-apply everything every 5 s)."""
    crds.apply(
        {
            "apiVersion": "phiops.dev/v1alpha1",
            "kind": "PhiDeployment",
            "metadata": {"name": "idle", "namespace": NS},
            "spec": {"model": {"name": "microsoft/Phi-3-mini-4k-instruct"}, "replicas": 0},
        },
        NS,
    )
    helpers.eventually(
        lambda: (
            crds.kubectl("get", "-n", NS, "deployment", "idle-server", check=False)
            if "idle-server" in crds.kubectl("get", "-n", NS, "deployment", check=False)
            else None
        ),
        30,
        "the server Deployment",
    )
    time.sleep(5)  # the children's own events have come and gone
    annotations = (
        json.loads(crds.kubectl("get", "-n", NS, "phid", "idle", "-o", "json"))["metadata"].get(
            "annotations"
        )
        or {}
    )
    # Kopf's record of the last handled spec would have been one more write per new resource.
    assert not [key for key in annotations if key.startswith("phiops.dev/")], annotations
    before = operator_requests(operator.metrics_port)
    time.sleep(20)
    sent = operator_requests(operator.metrics_port) - before
    assert sent == 0, f"the operator sent {sent:.0f} requests in 20 s for an idle resource"


@pytest.mark.chaos
@pytest.mark.disruptive
@pytest.mark.parametrize(
    "outage",
    ["frozen", "stopped"],
)
def test_status_is_fresh_within_5_s_after_an_api_server_outage(
    operator: Operator, crds: Cluster, outage: str
) -> None:
    """The API server goes away (stopped 30 s, or SIGSTOPped 60 s) while a KnowledgeBase
    waits for its source; the source appears the moment it is back; status says so within
    5 s, and the operator process never exited."""
    assert crds.plane is not None
    name, source = f"outage-{outage}", f"outage-{outage}-docs"
    crds.apply(knowledge_base(name, source), NS)
    wait_for_source_then_milvus(crds, name)
    if outage == "stopped":
        crds.plane.stop_apiserver()
        time.sleep(30)
        crds.plane.start_apiserver()
    else:
        crds.plane.apiserver.pause()
        time.sleep(60)
        crds.plane.apiserver.resume()
        helpers.eventually(
            lambda: "ok" in crds.kubectl("get", "--raw", "/readyz", check=False) or None,
            60,
            "the API server answering again",
        )
    crds.apply(documents(source), NS)
    back = time.monotonic()
    try:
        helpers.eventually(
            lambda: ready_reason(crds, name) == "VectorStoreUnavailable" or None,
            15,
            f"{name} past its source",
        )
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{operator.log_tail()}") from None
    took = time.monotonic() - back
    restarts = operator_metric(operator.metrics_port, "phiops_operator_restarts_total")
    print(
        f"status fresh {took:.1f} s after the API server returned ({outage});"
        f" Kopf started again in-process {restarts:.0f} time(s) so far"
    )
    assert took <= 5, f"status caught up {took:.1f} s after the API server returned"
