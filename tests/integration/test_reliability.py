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
from typing import Any

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


@pytest.fixture(scope="module")
def operator(namespace: str, crds: Cluster) -> Iterator[int]:
    """The operator as its pod runs it (`python -m phiops_operator`, its own process),
    watching this module's namespace only: its request count is this module's resources'
    alone. Yields the port of its /metrics; the process must live through every test."""
    metrics_port = free_port()
    argv = ["-m", "phiops_operator", "-n", NS, "--metrics-port", str(metrics_port)]
    env = {**os.environ, "KUBECONFIG": str(crds.kubeconfig)}
    with open(crds.state_dir / "reliability-operator.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, *argv, "--liveness-port", "0"], env=env, stdout=log, stderr=log
        )
    try:
        helpers.eventually(lambda: _metrics_up(metrics_port), 60, "the operator's /metrics")
        yield metrics_port
        assert process.poll() is None, f"the operator exited ({process.returncode})"
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


def test_an_idle_resource_sends_the_api_server_nothing(operator: int, crds: Cluster) -> None:
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
    before = operator_requests(operator)
    time.sleep(20)
    sent = operator_requests(operator) - before
    assert sent == 0, f"the operator sent {sent:.0f} requests in 20 s for an idle resource"


@pytest.mark.chaos
@pytest.mark.disruptive
@pytest.mark.parametrize(
    "outage",
    [
        "frozen",
        # Last, and allowed to fail: when a watch of Kopf's reconnects in the moment the
        # restarted API server answers 404 for custom resources, Kopf stops (nolar/kopf#1145)
        # and, in some runs, does not return to the in-process restart (supervise.py).
        pytest.param(
            "stopped",
            marks=pytest.mark.xfail(reason="Kopf's 404 race on API server restart", strict=False),
        ),
    ],
)
def test_status_is_fresh_within_5_s_after_an_api_server_outage(
    operator: int, crds: Cluster, outage: str
) -> None:
    """The API server goes away (stopped 30 s, or SIGSTOPped 60 s) while a KnowledgeBase
    waits for its source; the source appears the moment it is back; status says so within
    5 s, the operator never restarted."""
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
    helpers.eventually(
        lambda: ready_reason(crds, name) == "VectorStoreUnavailable" or None,
        15,
        f"{name} past its source",
    )
    took = time.monotonic() - back
    restarts = operator_metric(operator, "phiops_operator_restarts_total")
    print(
        f"status fresh {took:.1f} s after the API server returned ({outage});"
        f" Kopf started again in-process {restarts:.0f} time(s) so far"
    )
    assert took <= 5, f"status caught up {took:.1f} s after the API server returned"
