"""The operator on a REAL control plane: CRDs, validation, status, children, GC, metrics."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests import helpers
from tests.conftest import Cluster
from tests.helpers import SAMPLES_DIR, samples

pytestmark = pytest.mark.cluster
NS = "operator-tests"


@pytest.fixture(scope="module", autouse=True)
def namespace(crds: Cluster) -> str:
    crds.create_namespace(NS)
    return NS


def get(cluster: Cluster, *args: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", "-n", NS, *args, "-o", "json"))  # type: ignore[no-any-return]


def eventually(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    return helpers.eventually(check, timeout, what, interval=0.3)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next(
        (c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None
    )


def test_crds_are_established_and_listed_by_category(crds: Cluster) -> None:
    names = crds.kubectl("get", "crd", "-l", "app.kubernetes.io/part-of=phiops", "-o", "name")
    assert sorted(names.split()) == [
        "customresourcedefinition.apiextensions.k8s.io/finetunejobs.phiops.dev",
        "customresourcedefinition.apiextensions.k8s.io/knowledgebases.phiops.dev",
        "customresourcedefinition.apiextensions.k8s.io/phideployments.phiops.dev",
    ]
    assert crds.kubectl("get", "phiops", "-A", check=True) is not None


BAD_RESOURCES = [
    (
        {
            "kind": "FineTuneJob",
            "spec": {"dataset": {"url": "https://e/d.jsonl"}, "method": "dora"},
        },
        'spec.method: Unsupported value: "dora"',
    ),
    (
        {
            "kind": "FineTuneJob",
            "spec": {"dataset": {"url": "https://e/d.jsonl"}, "training": {"batchSize": 0}},
        },
        "spec.training.batchSize: Invalid value: 0",
    ),
    (
        {"kind": "PhiDeployment", "spec": {"replicas": "three"}},
        'spec.replicas: Invalid value: "string"',
    ),
    (
        {"kind": "KnowledgeBase", "spec": {"sources": [{"name": "UPPER", "git": {"url": "u"}}]}},
        'spec.sources.name: Invalid value: "UPPER"',
    ),
    ({"kind": "KnowledgeBase", "spec": {}}, "spec.sources: Required value"),
]


@pytest.mark.parametrize(("resource", "message"), BAD_RESOURCES)
def test_api_server_rejects_bad_resources_naming_the_field(
    crds: Cluster, resource: dict[str, Any], message: str
) -> None:
    manifest = {
        "apiVersion": "phiops.dev/v1alpha1",
        "metadata": {"name": "bad", "namespace": "default"},
        **resource,
    }
    out = crds.kubectl(
        "apply", "--validate=false", "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    assert message in out
    assert "NotFound" in crds.kubectl("get", resource["kind"].lower(), "bad", check=False)


def test_every_sample_gets_conditions_and_observed_generation(operator: int, crds: Cluster) -> None:
    crds.kubectl("apply", "-n", NS, "-f", str(SAMPLES_DIR))
    for sample in samples():
        kind, name = sample["kind"].lower(), sample["metadata"]["name"]
        crds.kubectl(
            "wait", "-n", NS, "--for=condition=Accepted", "--timeout=60s", f"{kind}/{name}"
        )
        obj = get(crds, kind, name)
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        ready = condition(obj, "Ready")
        assert ready is not None
        assert ready["observedGeneration"] == obj["metadata"]["generation"]
        if sample["kind"] == "PhiDeployment":  # the others run for real: see their tests
            # Its FineTuneJob and KnowledgeBase are not done: it waits, deploying nothing.
            assert ready["status"] == "False"
            assert ready["reason"] in ("AdapterNotReady", "KnowledgeBaseNotReady")
            assert obj["status"]["adaptersReady"] == "0/1"


# A deployment with nothing to wait for, scaled to zero: its children exist, no pod runs.
STANDALONE = {
    "apiVersion": "phiops.dev/v1alpha1",
    "kind": "PhiDeployment",
    "metadata": {"name": "standalone", "namespace": NS},
    "spec": {"model": {"name": "microsoft/Phi-3-mini-4k-instruct"}, "replicas": 0},
}


def server_config(cluster: Cluster, name: str) -> dict[str, Any]:
    config_map = get(cluster, "configmap", f"{name}-server-config")
    return json.loads(config_map["data"]["serve.json"])  # type: ignore[no-any-return]


def test_children_are_applied_by_the_operator_with_owner_references(
    operator: int, crds: Cluster
) -> None:
    crds.kubectl("apply", "-f", "-", input=yaml.safe_dump(STANDALONE))
    owner = get(crds, "phideployment", "standalone")
    for kind in ("configmap", "deployment", "service"):
        name = "standalone-server-config" if kind == "configmap" else "standalone-server"
        child = eventually(lambda k=kind, n=name: get_or_none(crds, k, n), what=f"{kind} {name}")
        assert child["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
        with_fields = get(crds, kind, name, "--show-managed-fields")
        managers = {m["manager"] for m in with_fields["metadata"]["managedFields"]}
        assert "phiops-operator" in managers
    assert (
        server_config(crds, "standalone")["base_model_name"] == "microsoft/Phi-3-mini-4k-instruct"
    )
    crds.kubectl("wait", "-n", NS, "--for=condition=Ready", "--timeout=60s", "phid/standalone")
    assert condition(get(crds, "phid", "standalone"), "Ready")["reason"] == "ScaledToZero"  # type: ignore[index]


def get_or_none(cluster: Cluster, kind: str, name: str) -> dict[str, Any] | None:
    return cluster.get(NS, kind, name)


def test_spec_change_bumps_observed_generation_and_rerenders(operator: int, crds: Cluster) -> None:
    crds.kubectl("apply", "-f", "-", input=yaml.safe_dump(STANDALONE))
    crds.kubectl("wait", "-n", NS, "--for=condition=Ready", "--timeout=60s", "phid/standalone")
    before = get(crds, "phid", "standalone")
    crds.kubectl(
        "patch",
        "-n",
        NS,
        "phid",
        "standalone",
        "--type=merge",
        "-p",
        '{"spec": {"server": {"maxNewTokens": 128}}}',
    )
    after = eventually(
        lambda: (
            (o := get(crds, "phid", "standalone"))["status"]["observedGeneration"]
            == before["metadata"]["generation"] + 1
            and o
        ),
        what="observedGeneration to follow the spec",
    )
    # Ready stayed True: its lastTransitionTime must not move.
    assert (
        condition(after, "Ready")["lastTransitionTime"]
        == condition(before, "Ready")[  # type: ignore[index]
            "lastTransitionTime"
        ]
    )
    eventually(
        lambda: server_config(crds, "standalone")["max_new_tokens"] == 128,
        what="the server config to be re-rendered",
    )


def test_invalid_spec_is_stalled_with_the_field_named_then_recovers(
    operator: int, crds: Cluster
) -> None:
    manifest = {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "KnowledgeBase",
        "metadata": {"name": "overlapping", "namespace": NS},
        "spec": {
            "sources": [{"name": "docs", "configMap": {"name": "handbook-docs"}}],
            "chunking": {"size": 64, "overlap": 80},
        },
    }
    crds.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    crds.kubectl("wait", "-n", NS, "--for=condition=Stalled", "--timeout=60s", "kb/overlapping")
    obj = get(crds, "kb", "overlapping")
    ready = condition(obj, "Ready")
    assert ready is not None and ready["reason"] == "InvalidSpec"
    assert "spec.chunking: overlap (80) must be smaller than size (64)" in ready["message"]
    # Nothing half-built: not even the store.
    assert get_or_none(crds, "deployment", "overlapping-store") is None

    manifest["spec"]["chunking"]["overlap"] = 16  # type: ignore[index]
    crds.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    crds.kubectl("wait", "-n", NS, "--for=condition=Accepted", "--timeout=60s", "kb/overlapping")
    assert condition(get(crds, "kb", "overlapping"), "Stalled")["status"] == "False"  # type: ignore[index]


def test_deleting_a_resource_garbage_collects_its_children(operator: int, crds: Cluster) -> None:
    crds.kubectl("apply", "-n", NS, "-f", str(SAMPLES_DIR / "finetunejob.yaml"))
    eventually(lambda: get_or_none(crds, "configmap", "support-tone-train-config"))
    crds.kubectl("delete", "-n", NS, "ftj", "support-tone", "--wait=true", "--timeout=60s")
    eventually(
        lambda: get_or_none(crds, "configmap", "support-tone-train-config") is None,
        timeout=60,
        what="the garbage collector to remove the child ConfigMap",
    )
    # The user's own ConfigMap (no owner) is untouched.
    assert get_or_none(crds, "configmap", "support-dataset") is not None


def test_metrics_count_reconciles_by_kind_and_result(operator: int, crds: Cluster) -> None:
    # The invalid-spec test above produced at least one `invalid` reconcile.
    with urllib.request.urlopen(f"http://127.0.0.1:{operator}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'phiops_reconcile_total{kind="KnowledgeBase",result="success"}' in text
    assert 'phiops_reconcile_total{kind="KnowledgeBase",result="invalid"}' in text
    assert "phiops_reconcile_duration_seconds_bucket" in text
