"""The Helm chart on the real control plane: `helm install` runs the operator as a pod (the
node runtime runs the phiops-operator image for real, with its ServiceAccount token), which
reconciles a sample to Ready with the chart's least-privilege RBAC; `helm test`; `helm upgrade`
with changed values; `helm uninstall` keeps the CRDs and the users' resources.

No in-process operator runs in this module (the `operator` fixture is per module), so
everything reconciled here is reconciled by the chart's."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from phiops_devcluster.node_runtime import pod_log_path

from tests import helpers
from tests.chart.tools import CHART, helm_path
from tests.conftest import Cluster
from tests.helpers import SAMPLES_DIR

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]
RELEASE, SYSTEM = "phiops", "phiops-system"
APPS, MORE_APPS = "chart-apps", "chart-apps-more"
TIMEOUT = 120


def eventually(check: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    return helpers.eventually(check, timeout, what)


def helm(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [helm_path(), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def ready(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    obj = cluster.get(namespace, kind, name)
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    ok = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return obj if ok else None


def scaled_to_zero(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "PhiDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"name": "microsoft/Phi-3-mini-4k-instruct"}, "replicas": 0},
    }


@pytest.fixture(scope="module")
def installed(crds: Cluster) -> Cluster:
    for namespace in (APPS, MORE_APPS):
        crds.create_namespace(namespace)
    # The session installed the CRDs with kubectl; let this release adopt them, as a user
    # moving to the chart would (Helm's documented ownership labels).
    for crd in crds.kubectl(
        "get", "crd", "-l", "app.kubernetes.io/part-of=phiops", "-o", "name"
    ).split():
        crds.kubectl("label", crd, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        crds.kubectl(
            "annotate",
            crd,
            f"meta.helm.sh/release-name={RELEASE}",
            f"meta.helm.sh/release-namespace={SYSTEM}",
            "--overwrite",
        )
    helm(
        crds,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        SYSTEM,
        "--create-namespace",
        "--set",
        "rbac.scope=namespaced",
        "--set",
        f"watchNamespaces={{{APPS}}}",
        "--wait",
        "--timeout",
        "3m",
    )
    return crds


def operator_log(cluster: Cluster) -> str:
    """The chart operator's log (the node runtime keeps it as a file), for failure messages."""
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", SYSTEM, "-l", "app.kubernetes.io/name=phiops", "-o", "json"
        )
    )["items"]
    logs = []
    for pod in pods:
        meta = pod["metadata"]
        path = pod_log_path(cluster.state_dir, SYSTEM, meta["name"], meta["uid"], "operator")
        logs.append(path.read_text()[-4000:] if path.exists() else f"(no log at {path})")
    return "\n".join(logs)


def eventually_or_log(
    cluster: Cluster, check: Callable[[], Any], what: str, timeout: float = TIMEOUT
) -> Any:
    try:
        return eventually(check, timeout, what)
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- operator log ---\n{operator_log(cluster)}") from None


def operator_deployment(cluster: Cluster) -> dict[str, Any]:
    found = json.loads(
        cluster.kubectl(
            "get", "deployment", "-n", SYSTEM, "-l", "app.kubernetes.io/name=phiops", "-o", "json"
        )
    )["items"]
    assert len(found) == 1, found
    return found[0]  # type: ignore[no-any-return]


def test_the_chart_operator_reconciles_a_sample_to_ready(installed: Cluster) -> None:
    deployment = operator_deployment(installed)
    assert deployment["status"].get("readyReplicas") == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    installed.kubectl("apply", "-n", APPS, "-f", str(SAMPLES_DIR / "knowledgebase.yaml"))
    kb = eventually_or_log(
        installed,
        lambda: ready(installed, APPS, "kb", "handbook"),
        "the chart's operator to sync the handbook sample",
    )
    assert kb["status"]["chunks"] > 0
    # Its children were applied by the operator's ServiceAccount, under its field manager.
    store = installed.get(APPS, "deployment", "handbook-store")
    assert store is not None
    assert store["metadata"]["ownerReferences"][0]["uid"] == kb["metadata"]["uid"]


def test_helm_test_checks_the_operator_is_healthy(installed: Cluster) -> None:
    done = helm(installed, "test", RELEASE, "--namespace", SYSTEM, "--timeout", "3m")
    assert "Phase:          Succeeded" in done.stdout or "Succeeded" in done.stdout


def test_upgrade_with_changed_values_watches_the_new_namespace(installed: Cluster) -> None:
    before = operator_deployment(installed)["metadata"]["generation"]
    helm(
        installed,
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        SYSTEM,
        "--reuse-values",
        "--set",
        f"watchNamespaces={{{APPS},{MORE_APPS}}}",
        "--set",
        "logLevel=verbose",
        "--wait",
        "--timeout",
        "3m",
    )
    deployment = operator_deployment(installed)
    assert deployment["metadata"]["generation"] > before
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert MORE_APPS in args and "--verbose" in args
    # The new namespace got its Role and RoleBinding: a resource there is reconciled.
    installed.apply(scaled_to_zero("idle"), MORE_APPS)
    eventually_or_log(
        installed,
        lambda: ready(installed, MORE_APPS, "phid", "idle"),
        "the upgraded operator to reconcile in the new namespace",
        timeout=120,
    )


def test_uninstall_keeps_the_crds_and_the_users_resources(installed: Cluster) -> None:
    helm(installed, "uninstall", RELEASE, "--namespace", SYSTEM, "--wait", "--timeout", "3m")
    eventually(
        lambda: (
            not json.loads(installed.kubectl("get", "deployment", "-n", SYSTEM, "-o", "json"))[
                "items"
            ]
        ),
        timeout=120,
        what="the operator Deployment to go",
    )
    crds = installed.kubectl("get", "crd", "-l", "app.kubernetes.io/part-of=phiops", "-o", "name")
    assert len(crds.split()) == 3
    assert installed.get(APPS, "kb", "handbook") is not None
    assert installed.get(MORE_APPS, "phid", "idle") is not None
    # Discovery still serves the kinds: `kubectl get phiops` works without the operator.
    listed = yaml.safe_load(installed.kubectl("get", "phiops", "-A", "-o", "yaml"))
    assert {i["metadata"]["name"] for i in listed["items"]} >= {"handbook", "idle"}
