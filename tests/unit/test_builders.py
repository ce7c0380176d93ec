import json
from typing import Any

from phiops_operator.builders import fine_tune_job, phi_deployment
from phiops_operator.config import OperatorConfig
from phiops_operator.models.fine_tune_job import FineTuneJobSpec

PARENT: dict[str, Any] = {
    "apiVersion": "phiops.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {
        "name": "handbook",
        "namespace": "team-a",
        "uid": "1234",
        "generation": 2,
        "labels": {"argocd.argoproj.io/instance": "handbook-app", "team": "a"},
    },
}


def build_job() -> list[dict[str, Any]]:
    spec = FineTuneJobSpec.model_validate({"dataset": {"url": "https://e/d.jsonl"}})
    return fine_tune_job.build(PARENT, spec, OperatorConfig())


def test_config_map_has_fixed_name_owner_and_recommended_labels() -> None:
    (child,) = build_job()
    meta = child["metadata"]
    assert meta["name"] == "handbook-train-config"
    assert meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "phiops.dev/v1alpha1",
            "kind": "FineTuneJob",
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
    assert config["spec"]["lora"]["targetModules"] == [
        "qkv_proj",
        "o_proj",
        "gate_up_proj",
        "down_proj",
    ]


def test_every_kind_uses_its_own_component_name() -> None:
    assert {fine_tune_job.CONFIG_COMPONENT, phi_deployment.CONFIG_COMPONENT} == {
        "train-config",
        "serve-config",
    }
