"""Chaos: the operator SIGKILLed at random moments while resources of all three kinds are
created, changed and deleted, on a REAL control plane. Afterwards: every resource converges
(status for its latest generation), no child exists twice or for an old generation, and
deleting everything leaves nothing behind.

The operator runs as its own process (`python -m phiops_operator -A`, as its pod runs it) so
it can be killed; the workload pods are held Pending by a node selector nothing matches, so
only the operator's own work is exercised."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from tests.conftest import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.timeout(600)]
NS = "chaos-tests"
KILLS = 24
NOWHERE = {"phiops.dev/chaos": "no-such-node"}
CHILD_KINDS = (
    "configmaps,services,deployments,jobs,serviceaccounts,roles,rolebindings,"
    "persistentvolumeclaims,networkpolicies"
)
MANAGED = "app.kubernetes.io/managed-by=phiops-operator"


class FakeMilvus:
    """A TCP port that accepts (the operator's reachability check), standing in for an
    external Milvus the sync pods would use (they never run here)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self.sock.close()


class Operator:
    """The operator as a process of its own, killed and started again on demand."""

    def __init__(self, cluster: Cluster, log: Path) -> None:
        self.cluster, self.log = cluster, log
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        argv = [sys.executable, "-m", "phiops_operator", "-A"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*argv, "--metrics-port", "0", "--liveness-port", "0"],
                env=env,
                stdout=out,
                stderr=out,
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def resource(kind: str, name: str, milvus: str, version: int = 1) -> dict[str, Any]:
    meta = {"name": name, "namespace": NS}
    if kind == "PhiDeployment":
        spec: dict[str, Any] = {
            "model": {"name": "microsoft/Phi-3-mini-4k-instruct"},
            "replicas": 0,
            "prompt": {"systemPrompt": f"version {version}"},
        }
    elif kind == "KnowledgeBase":
        spec = {
            "sources": [{"name": "docs", "configMap": {"name": "chaos-docs"}}],
            "chunking": {"size": 200 + version},
            "vectorStore": {"milvus": {"uri": milvus}},
            "pod": {"nodeSelector": NOWHERE},
        }
    else:
        spec = {
            "baseModel": {"name": "microsoft/Phi-3-mini-4k-instruct"},
            "dataset": {"configMap": {"name": "chaos-dataset", "key": "train.jsonl"}},
            "method": "lora",
            "resources": {"gpus": 0, "nodeSelector": NOWHERE},
            "output": {"reclaimPolicy": "Delete"},
        }
    return {"apiVersion": "phiops.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


INPUTS = [
    {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "chaos-docs"},
        "data": {"a.md": "# A\nSome text.\n"},
    },
    {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "chaos-dataset"},
        "data": {
            "train.jsonl": '{"messages": [{"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": "hello"}]}\n'
        },
    },
]


@pytest.fixture(scope="module")
def chaos(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    crds.create_namespace(NS)
    for item in INPUTS:
        crds.apply(item, NS)
    operator = Operator(crds, tmp_path_factory.mktemp("chaos") / "operator.log")
    try:
        yield operator
    finally:
        operator.stop()


def listed(cluster: Cluster, kinds: str, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", kinds, "-n", NS, "-l", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def converged(cluster: Cluster) -> list[dict[str, Any]] | None:
    items = listed(cluster, "phiops", "!phiops.dev/none")
    stale = [
        i
        for i in items
        if (i.get("status") or {}).get("observedGeneration") != i["metadata"]["generation"]
    ]
    return None if stale else items


def _owner(child: dict[str, Any]) -> tuple[str, str] | None:
    owners = child["metadata"].get("ownerReferences") or []
    return (owners[0]["kind"], owners[0]["name"]) if owners else None


def owned_by(cluster: Cluster, left: set[tuple[str, str]]) -> list[dict[str, Any]] | None:
    """Every managed child, once each is owned by one of `left`; None while some are not."""
    children = listed(cluster, CHILD_KINDS, MANAGED)
    strays = [f"{c['kind']} {c['metadata']['name']}" for c in children if _owner(c) not in left]
    if strays:
        print("waiting for the owners of", ", ".join(strays))
        return None
    return children


def test_random_kills_during_creates_changes_and_deletes_leave_no_duplicate_or_orphan(
    chaos: Operator, crds: Cluster
) -> None:
    rng = random.Random(11)
    milvus = FakeMilvus()
    names = [
        (kind, f"{kind.lower()}-{i}")
        for kind in ("PhiDeployment", "KnowledgeBase", "FineTuneJob")
        for i in range(4)
    ]
    plan: list[tuple[str, dict[str, Any] | tuple[str, str]]] = []
    for kind, name in names:
        plan.append(("apply", resource(kind, name, milvus.uri)))
    for kind, name in names:
        if kind != "FineTuneJob" and rng.random() < 0.6:  # a FineTuneJob's spec is immutable
            plan.append(("apply", resource(kind, name, milvus.uri, version=2)))
    doomed = [names[i] for i in rng.sample(range(len(names)), 4)]
    plan += [("delete", target) for target in doomed]
    rng.shuffle(plan[len(names) :])

    chaos.start()
    try:
        for action, what in plan:
            if action == "apply":
                assert isinstance(what, dict)
                crds.apply(what, NS)
            else:
                kind, name = what  # type: ignore[misc]
                crds.kubectl("delete", kind.lower(), name, "-n", NS, "--wait=false")
            # Kill at a random moment of the work this caused (or of a start-up listing).
            time.sleep(rng.uniform(0.2, 1.5))
            chaos.kill()
            chaos.start()
        while chaos.kills < KILLS:
            time.sleep(rng.uniform(0.3, 2.0))
            chaos.kill()
            chaos.start()
        print(f"operator killed {chaos.kills} times")

        items = helpers.eventually(lambda: converged(crds), 120, "every resource converged")
        left = {(i["kind"], i["metadata"]["name"]) for i in items}
        assert left == set(names) - set(doomed)

        # A reconcile under way when its resource is deleted may still apply a child: it names
        # the deleted owner, and Kubernetes' garbage collector removes it (a child naming no
        # owner, or a living one it should not have, would stay and fail this).
        children = helpers.eventually(
            lambda: owned_by(crds, left), 60, "every child owned by a resource still there"
        )
        twice = [
            key
            for key, count in Counter((c["kind"], c["metadata"]["name"]) for c in children).items()
            if count > 1
        ]
        assert not twice
        for kind, name in left:
            if kind == "KnowledgeBase":  # the sync of the latest spec only, and it is running
                syncs = {
                    job["metadata"]["labels"].get("phiops.dev/sync-id")
                    for job in children
                    if job["kind"] == "Job"
                    and job["metadata"]["labels"].get("app.kubernetes.io/instance") == name
                }
                kb = next(i for i in items if i["metadata"]["name"] == name)
                said = json.dumps(kb["status"].get("conditions"))
                assert len(syncs) == 1 and f"sync {syncs.pop()}" in said, (name, said)

        crds.kubectl("delete", "phiops", "--all", "-n", NS, "--wait=false")
        time.sleep(1)
        chaos.kill()
        chaos.start()
        helpers.eventually(
            lambda: (
                (
                    not listed(crds, "phiops", "!phiops.dev/none")
                    and not listed(crds, CHILD_KINDS, MANAGED)
                )
                or None
            ),
            120,
            "every resource and child gone",
        )
    finally:
        milvus.close()
