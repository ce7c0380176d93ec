"""Every pod phiops makes passes Pod Security "restricted", mounts a ServiceAccount token only
where it calls the Kubernetes API, and requests cpu and memory: over every child of every
option combination in tests/children.py (samples, demo, embedded and external stores,
sharded syncs, LoRA/QLoRA on 0/1/2 GPUs, retrieval, adapters)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from phiops_operator.builders.common import WORKLOAD_UID
from phiops_operator.builders.fine_tune_job import TRAIN_COMPONENT

from tests import children
from tests.pod_security import missing_requests, pod_specs, violations

# Pods that call the API server, and why: the trainer patches its progress ConfigMap.
API_CLIENTS = {("finetunejob", TRAIN_COMPONENT)}

PODS = [
    (f"{case} {child['kind']}/{child['metadata']['name']}", meta, pod)
    for case, child in children.all_children()
    for meta, pod in pod_specs(child)
]
IDS = [name for name, _, _ in PODS]

GOOD: dict[str, Any] = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "containers": [
        {
            "name": "app",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
        }
    ],
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
}


def test_the_cases_cover_every_pod_kind() -> None:
    """If a builder stops producing one of these, the cases below no longer test it."""
    components = {
        (meta["labels"]["app.kubernetes.io/name"], meta["labels"]["app.kubernetes.io/component"])
        for _, meta, _ in PODS
    }
    assert components == {
        ("knowledgebase", "store"),
        ("knowledgebase", "sync"),
        ("knowledgebase", "drop"),
        ("finetunejob", "preflight"),
        ("finetunejob", "train"),
        ("phideployment", "server"),
    }
    assert any(meta["labels"].get("phiops.dev/shard") == "promote" for _, meta, _ in PODS)


def test_the_checker_passes_a_good_pod() -> None:
    assert violations(GOOD) == []
    assert missing_requests(GOOD) == []


def _bad(change: Any) -> dict[str, Any]:
    pod = copy.deepcopy(GOOD)
    change(pod)
    return pod


BAD_PODS = {
    "root": lambda p: p["securityContext"].update(runAsUser=0),
    "no runAsNonRoot": lambda p: p["securityContext"].pop("runAsNonRoot"),
    "unconfined": lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}),
    "no seccomp": lambda p: p["securityContext"].pop("seccompProfile"),
    "escalation": lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
    "capabilities kept": lambda p: p["containers"][0]["securityContext"].pop("capabilities"),
    "capability added": lambda p: p["containers"][0]["securityContext"]["capabilities"].update(
        add=["SYS_ADMIN"]
    ),
    "privileged": lambda p: p["containers"][0]["securityContext"].update(privileged=True),
    "hostPath": lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "hostNetwork": lambda p: p.update(hostNetwork=True),
    "hostPort": lambda p: p["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
    "bare init container": lambda p: p.update(initContainers=[{"name": "init"}]),
}


@pytest.mark.parametrize("change", BAD_PODS.values(), ids=BAD_PODS.keys())
def test_the_checker_refuses_a_bad_pod(change: Any) -> None:
    assert violations(_bad(change)), "the checker let a non-restricted pod through"


def test_the_requests_check_refuses_a_container_without_requests() -> None:
    pod = _bad(lambda p: p["containers"][0]["resources"].pop("requests"))
    assert missing_requests(pod) == ["app: no cpu request", "app: no memory request"]


@pytest.mark.parametrize(("name", "meta", "pod"), PODS, ids=IDS)
def test_pod_is_restricted(name: str, meta: dict[str, Any], pod: dict[str, Any]) -> None:
    assert violations(pod) == []
    # The images' own user, so that files the image made are theirs.
    assert pod["securityContext"]["runAsUser"] == WORKLOAD_UID
    assert pod["securityContext"]["fsGroup"] == WORKLOAD_UID


@pytest.mark.parametrize(("name", "meta", "pod"), PODS, ids=IDS)
def test_token_only_where_the_api_is_called(
    name: str, meta: dict[str, Any], pod: dict[str, Any]
) -> None:
    labels = meta["labels"]
    calls_api = (labels["app.kubernetes.io/name"], labels["app.kubernetes.io/component"])
    expected = calls_api in API_CLIENTS
    assert pod["automountServiceAccountToken"] is expected
    if expected:
        assert pod["serviceAccountName"], "a token of its own ServiceAccount, not the default"


@pytest.mark.parametrize(("name", "meta", "pod"), PODS, ids=IDS)
def test_every_container_requests_cpu_and_memory(
    name: str, meta: dict[str, Any], pod: dict[str, Any]
) -> None:
    assert missing_requests(pod) == []


def test_requests_follow_the_spec_where_it_has_them() -> None:
    parents = children.parents()
    pods = {
        meta["labels"]["app.kubernetes.io/component"]: pod
        for child in children.render(parents["KnowledgeBase/embedded-delete-pod-settings"])
        for meta, pod in pod_specs(child)
    }
    # Only limits in the spec: requests equal them, as Kubernetes would make them.
    sync = pods["sync"]["containers"][0]["resources"]
    assert sync["requests"] == {"cpu": "2", "memory": "4Gi"} == sync["limits"]
    parents_ftj = children.render(parents["FineTuneJob/qlora-two-gpus-url"])
    (train,) = [c for c in parents_ftj if c["metadata"]["name"].endswith("-train-1")]
    resources = train["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"memory": "16Gi", "cpu": "1", "nvidia.com/gpu": "2"}
