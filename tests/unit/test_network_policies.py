"""Which pods the NetworkPolicies admit, evaluated offline (tests/network_policy.py): the
embedded store admits its own KnowledgeBase's Jobs and the servers of the PhiDeployments that
retrieve from it; a server's API port admits everyone and its admin port only the operator."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from phiops_operator.builders import knowledge_base as kb
from phiops_operator.builders import phi_deployment as phid
from phiops_operator.builders.common import labels
from phiops_operator.config import NetworkPolicies, OperatorConfig
from phiops_operator.network_policies import REMOVED_MEMO, sync
from phiops_operator.reconcile import Context

from tests import children
from tests.network_policy import Pod, admits, pod_of, selects

NS = children.NAMESPACE
OPERATOR_NS = "phiops-system"
OPERATOR_LABELS = {"app.kubernetes.io/name": "phiops", "app.kubernetes.io/component": "operator"}
CONFIG = OperatorConfig(
    network_policies=NetworkPolicies(
        enabled=True, operator_namespace=OPERATOR_NS, operator_pod_labels=OPERATOR_LABELS
    )
)


def rendered(case: str) -> list[dict[str, Any]]:
    return children.render(children.parents()[case], CONFIG)


def policies(*cases: str) -> list[dict[str, Any]]:
    return [c for case in cases for c in rendered(case) if c["kind"] == "NetworkPolicy"]


def one(case: str, kind: str, name_suffix: str = "") -> dict[str, Any]:
    (found,) = [
        c
        for c in rendered(case)
        if c["kind"] == kind and c["metadata"]["name"].endswith(name_suffix)
    ]
    return found


# Everything in one namespace: the handbook's store and Jobs, two PhiDeployments that use it,
# one that does not, and the operator in its own namespace.
CASES = (
    "KnowledgeBase/handbook",
    "PhiDeployment/assistant",
    "PhiDeployment/assistant-tiny",
    "PhiDeployment/base-only-cpu",
)
OPERATOR = Pod(OPERATOR_NS, OPERATOR_LABELS, {"kubernetes.io/metadata.name": OPERATOR_NS})
STRANGER = Pod(NS, {"app": "curious"}, {"kubernetes.io/metadata.name": NS})


@pytest.fixture(scope="module")
def all_policies() -> list[dict[str, Any]]:
    return policies(*CASES)


def store() -> Pod:
    return pod_of(one("KnowledgeBase/handbook", "Deployment", "-store"))


def server(case: str) -> Pod:
    return pod_of(one(case, "Deployment", "-server"))


def test_the_evaluator_follows_selector_and_peer_rules() -> None:
    """The evaluator itself, on cases whose answer is known, so the tests below can fail."""
    assert selects({}, {"a": "1"}) and selects(None, {})
    assert selects({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"})
    assert not selects({"matchLabels": {"a": "1"}}, {"a": "2"})
    expressions = [
        {"key": "tier", "operator": "In", "values": ["web", "api"]},
        {"key": "debug", "operator": "DoesNotExist"},
    ]
    assert selects({"matchExpressions": expressions}, {"tier": "api"})
    assert not selects({"matchExpressions": expressions}, {"tier": "api", "debug": "1"})
    assert not selects({"matchExpressions": expressions}, {"tier": "db"})
    target = Pod("a", {"app": "db"}, ports={"sql": 5432})
    policy = {
        "metadata": {"namespace": "a"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                    "ports": [{"port": "sql"}],
                }
            ],
        },
    }
    web = Pod("a", {"app": "web"})
    assert admits([policy], web, target, 5432)
    assert not admits([policy], web, target, 22), "another port"
    assert not admits([policy], Pod("b", {"app": "web"}), target, 5432), "another namespace"
    assert not admits([policy], Pod("a", {"app": "job"}), target, 5432)
    assert admits([policy], Pod("a", {}), Pod("a", {"app": "other"}), 22), "not isolated"
    assert not admits([{**policy, "spec": {**policy["spec"], "ingress": []}}], web, target, 5432)


def test_the_store_admits_its_jobs_and_the_servers_that_retrieve_from_it(
    all_policies: list[dict[str, Any]],
) -> None:
    target = store()
    sync_job = pod_of(one("KnowledgeBase/handbook", "Job", "-0"))
    assert admits(all_policies, sync_job, target, kb.STORE_PORT)
    for case in ("PhiDeployment/assistant", "PhiDeployment/assistant-tiny"):
        assert admits(all_policies, server(case), target, kb.STORE_PORT), case
    assert not admits(all_policies, sync_job, target, 22), "the store's port only"


def test_the_store_refuses_everyone_else(all_policies: list[dict[str, Any]]) -> None:
    target = store()
    assert not admits(all_policies, server("PhiDeployment/base-only-cpu"), target, kb.STORE_PORT)
    assert not admits(all_policies, STRANGER, target, kb.STORE_PORT)
    assert not admits(all_policies, OPERATOR, target, kb.STORE_PORT), "the operator never calls it"
    # The same labels in another namespace, or for another knowledge base, do not pass.
    sync_job = pod_of(one("KnowledgeBase/handbook", "Job", "-0"))
    elsewhere = replace(sync_job, namespace="team-b", namespace_labels={"x": "y"})
    assert not admits(all_policies, elsewhere, target, kb.STORE_PORT)
    other_kb = dict(server("PhiDeployment/assistant").labels)
    other_kb[kb.KNOWLEDGE_BASE_LABEL] = "another"
    assert not admits(all_policies, replace(STRANGER, labels=other_kb), target, kb.STORE_PORT)
    # The knowledge base's other components are not its sync Jobs.
    for component in ("store", "drop"):
        same_kb = labels("KnowledgeBase", "handbook", component)
        assert not admits(all_policies, replace(STRANGER, labels=same_kb), target, kb.STORE_PORT)


def test_the_api_port_admits_everyone_the_admin_port_only_the_operator(
    all_policies: list[dict[str, Any]],
) -> None:
    for case in ("PhiDeployment/assistant", "PhiDeployment/base-only-cpu"):
        target = server(case)
        anywhere = Pod("ingress-nginx", {"app": "ingress"}, {"team": "edge"})
        for source in (STRANGER, anywhere, OPERATOR):
            assert admits(all_policies, source, target, phid.HTTP_PORT), (case, source)
        assert admits(all_policies, OPERATOR, target, phid.ADMIN_PORT), case
        for source in (STRANGER, anywhere, store()):
            assert not admits(all_policies, source, target, phid.ADMIN_PORT), (case, source)
        # Operator labels outside the operator's namespace are not the operator.
        impostor = Pod(NS, OPERATOR_LABELS, {"kubernetes.io/metadata.name": NS})
        assert not admits(all_policies, impostor, target, phid.ADMIN_PORT)


def test_policies_are_owned_labelled_children() -> None:
    for policy in policies(*CASES):
        meta = policy["metadata"]
        assert meta["namespace"] == NS
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "phiops-operator"
        assert policy["spec"]["policyTypes"] == ["Ingress"], "egress is left alone"
    names = {p["metadata"]["name"] for p in policies(*CASES)}
    assert names == {
        "handbook-store",
        "assistant-server",
        "assistant-tiny-server",
        "base-only-cpu-server",
    }


def test_an_external_store_gets_no_policy_and_servers_label_their_knowledge_base() -> None:
    assert policies("KnowledgeBase/external-sharded-openai-delete") == []
    assert server("PhiDeployment/assistant").labels[kb.KNOWLEDGE_BASE_LABEL] == "handbook"
    assert kb.KNOWLEDGE_BASE_LABEL not in server("PhiDeployment/base-only-cpu").labels


class RecordingKube:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def apply_all(self, manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [await self.apply(m) for m in manifests]

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("apply", manifest["metadata"]["name"]))
        return manifest

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        assert (api_version, kind) == ("networking.k8s.io/v1", "NetworkPolicy")
        self.calls.append(("delete", name))
        return True


def _run(enabled: bool, memo: dict[str, Any], kube: RecordingKube) -> None:
    config = OperatorConfig(network_policies=NetworkPolicies(enabled=enabled))
    parent = children.parents()["PhiDeployment/assistant"]
    context = Context(kube, config, parent, memo, None)  # type: ignore[arg-type]
    spec = phid.PhiDeploymentSpec.model_validate(parent["spec"])
    asyncio.run(sync(context, phid.network_policies(parent, spec, config)))


def test_turned_on_they_are_applied_turned_off_removed_once() -> None:
    kube, memo = RecordingKube(), {}
    _run(True, memo, kube)
    _run(True, memo, kube)
    assert kube.calls == [("apply", "assistant-server")] * 2
    kube, memo = RecordingKube(), {}
    _run(False, memo, kube)
    _run(False, memo, kube)
    assert kube.calls == [("delete", "assistant-server")], "one delete per resource and run"
    assert memo[REMOVED_MEMO] is True


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHIOPS_NETWORK_POLICIES", "false")
    monkeypatch.setenv("PHIOPS_OPERATOR_NAMESPACE", "ops")
    monkeypatch.setenv("PHIOPS_OPERATOR_POD_LABELS", "a=1,b=2")
    settings = NetworkPolicies()
    assert (settings.enabled, settings.operator_namespace) == (False, "ops")
    assert settings.operator_pod_labels == {"a": "1", "b": "2"}
    monkeypatch.delenv("PHIOPS_NETWORK_POLICIES")
    assert NetworkPolicies().enabled is True, "on unless turned off"
