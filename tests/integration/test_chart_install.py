"""The Helm chart on the real control plane: `helm install` runs the operator as a pod (the
node runtime runs the phiops-operator image for real, with its ServiceAccount token), which
reconciles a sample to Ready with the chart's least-privilege RBAC; `helm test`; `helm upgrade`
with changed values; `helm upgrade` to a new operator version with resources in place rolls
nothing whose pod spec did not change; `helm uninstall` keeps the CRDs and the users'
resources.

No in-process operator runs in this module (the `operator` fixture is per module), so
everything reconciled here is reconciled by the chart's."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from phiops_devcluster.node_runtime import pod_log_path
from phiops_devcluster.node_runtime.containers import IMAGE_ENV
from phiops_operator import __version__
from phiops_operator.builders.phi_deployment import CONFIG_HASH_ANNOTATION

from tests import helpers
from tests.chart.tools import CHART, helm_path
from tests.conftest import Cluster
from tests.helpers import REPO, SAMPLES_DIR

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
    # The tiny Phi-3 the upgrade test serves, made while the earlier tests run.
    crds.apply(helpers.models_claim(), APPS)
    crds.apply(helpers.tiny_model_pod(), APPS)
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


# The operator version `helm upgrade` moves to: the chart, its appVersion (so the operator's
# image tag) and the operator's own `__version__` (which labels every child it applies).
NEXT_VERSION = "99.0.0"
NEXT_CODE = "/opt/phiops-next"


def serving(max_new_tokens: int = 16) -> dict[str, Any]:
    """One server of the tiny Phi-3, retrieving from the handbook KnowledgeBase."""
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "PhiDeployment",
        "metadata": {"name": "assistant"},
        "spec": {
            "model": {"name": "tiny-phi3", "pvc": {"claimName": "models", "path": "tiny"}},
            "knowledgeBaseRef": {"name": "handbook", "topK": 2},
            "replicas": 1,
            "server": {"maxNewTokens": max_new_tokens},
        },
    }


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected {old!r} once in the chart's template"
    return text.replace(old, new)


def next_release(root: Path) -> Path:
    """A copy of the chart as the next release would ship it, and that release's operator.

    The node runtime runs every `phiops-operator` image as this checkout's code, so the new
    operator is a copy of the package whose `__version__` is NEXT_VERSION, put first on the
    pod's PYTHONPATH from a hostPath volume. The copy's Chart.yaml carries NEXT_VERSION as
    version and appVersion, so the operator's image tag changes too: the pod must roll."""
    code = root / "code"
    shutil.copytree(
        REPO / "operator" / "phiops_operator",
        code / "phiops_operator",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    init = code / "phiops_operator" / "__init__.py"
    text, count = re.subn(
        r'^__version__ = ".*"$', f'__version__ = "{NEXT_VERSION}"', init.read_text(), flags=re.M
    )
    assert count == 1, init
    init.write_text(text)

    chart = root / "phiops"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    assert meta["appVersion"] == __version__ != NEXT_VERSION, meta
    meta["version"] = meta["appVersion"] = NEXT_VERSION
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    template = chart / "templates" / "deployment.yaml"
    text = template.read_text()
    python_path = f"{NEXT_CODE}:{IMAGE_ENV['PYTHONPATH']}"
    text = replace_once(
        text,
        '              value: "1"\n',
        f'              value: "1"\n'
        f"            - name: PYTHONPATH\n              value: {python_path!r}\n",
    )
    text = replace_once(
        text,
        "              mountPath: /tmp\n",
        "              mountPath: /tmp\n"
        f"            - name: next-code\n              mountPath: {NEXT_CODE}\n"
        "              readOnly: true\n",
    )
    text = replace_once(
        text,
        "            sizeLimit: 64Mi\n",
        "            sizeLimit: 64Mi\n"
        f"        - name: next-code\n          hostPath:\n            path: {code}\n"
        "            type: Directory\n",
    )
    template.write_text(text)
    return chart


def workloads(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    """What shows a roll, a restart or a re-creation in `namespace`: each Deployment's uid,
    generation and whole pod template, each ReplicaSet's and Job's uid, each pod's uid and
    its containers' restart counts."""
    listed = cluster.kubectl(
        "get", "deployments,replicasets,jobs,pods", "-n", namespace, "-o", "json"
    )
    found: dict[str, dict[str, Any]] = {}
    for item in json.loads(listed)["items"]:
        meta, kind = item["metadata"], item["kind"]
        entry: dict[str, Any] = {"uid": meta["uid"]}
        if kind == "Deployment":
            entry["generation"] = meta["generation"]
            entry["template"] = item["spec"]["template"]
        elif kind == "Pod":
            statuses = (item.get("status") or {}).get("containerStatuses") or []
            entry["restarts"] = {c["name"]: c["restartCount"] for c in statuses}
            entry["deleting"] = bool(meta.get("deletionTimestamp"))
        found[f"{kind}/{meta['name']}"] = entry
    return found


def settled(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The Deployment once its controller has rolled out its latest generation fully."""
    found = cluster.get(namespace, "deployment", name)
    if found is None:
        return None
    spec, st = found["spec"], found.get("status") or {}
    done = (
        st.get("observedGeneration") == found["metadata"]["generation"]
        and st.get("updatedReplicas", 0) == spec["replicas"]
        and st.get("replicas", 0) == spec["replicas"]
        and st.get("readyReplicas", 0) == spec["replicas"]
    )
    return found if done else None


def operator_pod(cluster: Cluster) -> dict[str, Any]:
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", SYSTEM, "-l", "app.kubernetes.io/component=operator", "-o", "json"
        )
    )["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]  # type: ignore[no-any-return]


def labelled_by(cluster: Cluster, version: str, *deployments: str) -> bool:
    """Every named Deployment of APPS was last applied by the operator of `version`."""
    for name in deployments:
        found = cluster.get(APPS, "deployment", name) or {}
        labels = found.get("metadata", {}).get("labels") or {}
        if labels.get("app.kubernetes.io/version") != version:
            return False
    return True


def test_upgrade_to_a_new_operator_version_restarts_no_workload(
    installed: Cluster, tmp_path: Path
) -> None:
    """`helm upgrade` to the next operator version, with a KnowledgeBase (its store and its
    finished sync Job) and a serving PhiDeployment in place: the operator pod is replaced, the
    new operator re-applies every child (they carry its version), and no Deployment's
    generation moves, no pod is replaced or restarted, no Job is re-created. Then a real
    change of the PhiDeployment's pod template rolls exactly its Deployment."""
    installed.apply(serving(), APPS)
    eventually_or_log(
        installed,
        lambda: ready(installed, APPS, "phid", "assistant"),
        "the PhiDeployment to serve under the chart's operator",
        timeout=300,
    )
    for name in ("handbook-store", "assistant-server"):
        eventually(lambda n=name: settled(installed, APPS, n), what=f"{name} to settle")
    assert labelled_by(installed, __version__, "handbook-store", "assistant-server")
    before = workloads(installed, APPS)
    assert {"Deployment/handbook-store", "Deployment/assistant-server"} <= set(before)
    assert any(key.startswith("Job/handbook-sync") for key in before), sorted(before)
    assert sum(key.startswith("Pod/assistant-server") for key in before) == 1, sorted(before)
    old_operator = operator_pod(installed)
    old_env = {e["name"]: e.get("value") for e in old_operator["spec"]["containers"][0]["env"]}

    # The workload images pinned to the running ones, as upgrade-uninstall.md advises: an
    # appVersion bump alone would otherwise move their default tags and roll every workload.
    pins = [
        f"workloadImages.{kind}.tag={old_env[f'PHIOPS_{kind.upper()}_IMAGE'].split(':')[-1]}"
        for kind in ("embed", "finetune", "serve")
    ]
    chart = next_release(tmp_path)
    args = ["upgrade", RELEASE, str(chart), "--namespace", SYSTEM, "--reuse-values"]
    for pin in pins:
        args += ["--set", pin]
    helm(installed, *args, "--wait", "--timeout", "3m")

    new_operator = eventually(
        lambda: (
            (pod := operator_pod(installed))["metadata"]["uid"] != old_operator["metadata"]["uid"]
            and (pod.get("status") or {}).get("phase") == "Running"
            and pod
        ),
        what="a new operator pod",
    )
    container = new_operator["spec"]["containers"][0]
    assert container["image"].endswith(f":{NEXT_VERSION}")
    new_env = {e["name"]: e.get("value") for e in container["env"]}
    for kind in ("EMBED", "FINETUNE", "SERVE"):
        assert new_env[f"PHIOPS_{kind}_IMAGE"] == old_env[f"PHIOPS_{kind}_IMAGE"]
    # The new operator has reconciled both resources: their children carry its version.
    eventually_or_log(
        installed,
        lambda: labelled_by(installed, NEXT_VERSION, "handbook-store", "assistant-server"),
        f"the operator {NEXT_VERSION} to re-apply the children",
    )
    for kind, name in (("kb", "handbook"), ("phid", "assistant")):
        assert ready(installed, APPS, kind, name), f"{kind}/{name} is not Ready after the upgrade"
    after = workloads(installed, APPS)
    assert after == before

    # A real pod-spec change (maxNewTokens is in the config hash) rolls exactly the server
    # Deployment: a new ReplicaSet and its pod. The old pod serves until the new one is
    # ready (maxUnavailable 0); the test does not wait for that (a model load, ~1 minute).
    installed.apply(serving(max_new_tokens=24), APPS)
    old_server = before["Deployment/assistant-server"]

    def new_server_pod() -> dict[str, dict[str, Any]] | None:
        now = workloads(installed, APPS)
        return (
            now
            if any(k.startswith("Pod/assistant-server") for k in set(now) - set(before))
            else None
        )

    rolled = eventually_or_log(installed, new_server_pod, "a server pod of the new template")
    server = rolled["Deployment/assistant-server"]
    assert server["generation"] > old_server["generation"]
    assert (
        server["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        != old_server["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    )
    new = set(rolled) - set(before)
    assert len(new) == 2, sorted(new)
    assert {k.split("/")[0] for k in new} == {"ReplicaSet", "Pod"}, sorted(new)
    assert all(k.split("/")[1].startswith("assistant-server-") for k in new), sorted(new)
    changed = {k for k in before if rolled.get(k) != before[k]}
    assert changed == {"Deployment/assistant-server"}, changed
    # Gone while the operator runs (its finalizer), so later modules share no serving pod.
    installed.kubectl("delete", "-n", APPS, "phid", "assistant", "--wait=true", "--timeout=120s")


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
