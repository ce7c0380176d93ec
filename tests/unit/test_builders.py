import json
from typing import Any

from phiops_operator.builders import phi_deployment
from phiops_operator.config import OperatorConfig
from phiops_operator.models.phi_deployment import PhiDeploymentSpec

PARENT: dict[str, Any] = {
    "apiVersion": "phiops.dev/v1alpha1",
    "kind": "PhiDeployment",
    "metadata": {
        "name": "handbook",
        "namespace": "team-a",
        "uid": "1234",
        "generation": 2,
        "labels": {"argocd.argoproj.io/instance": "handbook-app", "team": "a"},
    },
}


def build_job() -> list[dict[str, Any]]:
    spec = PhiDeploymentSpec.model_validate(
        {"adapters": [{"name": "a", "pvc": {"claimName": "c"}}]}
    )
    return phi_deployment.build(PARENT, spec, OperatorConfig())


def test_config_map_has_fixed_name_owner_and_recommended_labels() -> None:
    (child,) = build_job()
    meta = child["metadata"]
    assert meta["name"] == "handbook-serve-config"
    assert meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "phiops.dev/v1alpha1",
            "kind": "PhiDeployment",
            "name": "handbook",
            "uid": "1234",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"]["app.kubernetes.io/instance"] == "handbook"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "phiops-operator"


def test_children_never_inherit_the_parents_labels() -> None:
    (child,) = build_job()
    for key in PARENT["metadata"]["labels"]:
        assert key not in child["metadata"]["labels"]


def test_rendering_is_deterministic_and_carries_resolved_defaults() -> None:
    first, second = build_job(), build_job()
    assert first == second
    config = json.loads(first[0]["data"]["config.json"])
    assert config["resource"]["generation"] == 2
    assert config["spec"]["server"]["maxNewTokens"] == 512


def test_server_config_component_name() -> None:
    assert phi_deployment.CONFIG_COMPONENT == "serve-config"
