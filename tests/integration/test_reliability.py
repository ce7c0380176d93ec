"""The operator under trouble on a REAL control plane: idle costs nothing, and status is fresh
within seconds after the API server was stopped or frozen."""

from __future__ import annotations

import json
import re
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
def operator(namespace: str) -> Iterator[int]:
    """The operator in this process, watching this module's namespace only: its request
    count is this module's resources' alone (other modules' resources stay in the cluster)."""
    from kopf.testing import KopfRunner

    metrics_port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PHIOPS_METRICS_PORT", str(metrics_port))
        args = ["run", "--namespace", NS, "--standalone", "-m", "phiops_operator.handlers"]
        with KopfRunner(args, timeout=60) as runner:
            yield metrics_port
    assert runner.exception is None, runner.exception


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


def operator_requests(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if re.match(r"phiops_api_requests_total\{", line)
    )


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
@pytest.mark.parametrize("outage", ["stopped", "frozen"])
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
    print(f"status fresh {took:.1f} s after the API server returned ({outage})")
    assert took <= 5, f"status caught up {took:.1f} s after the API server returned"
