"""PhiDeployment children: the server config contract, volumes, placement and rolling."""

from __future__ import annotations

import json
from typing import Any

import pytest
from phiops_operator.builders import phi_deployment as builder
from phiops_operator.builders.phi_deployment import (
    Inputs,
    ResolvedAdapter,
    ResolvedKnowledgeBase,
)
from phiops_operator.config import OperatorConfig
from phiops_operator.models.base import SecretKeyRef
from phiops_operator.models.phi_deployment import PhiDeploymentSpec
from phiops_workload.serving import CONFIG_FILE, ServeConfig

PARENT: dict[str, Any] = {
    "apiVersion": "phiops.dev/v1alpha1",
    "kind": "PhiDeployment",
    "metadata": {
        "name": "assistant",
        "namespace": "team-a",
        "uid": "1234",
        "generation": 2,
        "labels": {"argocd.argoproj.io/instance": "assistant-app", "team": "a"},
    },
}
SPEC = {
    "model": {"name": "tiny-phi3", "pvc": {"claimName": "models", "path": "tiny-phi3"}},
    "adapters": [
        {"name": "tone", "fineTuneJobRef": {"name": "tone-job"}},
        {"name": "legal", "pvc": {"claimName": "models", "path": "adapters/legal"}},
    ],
    "knowledgeBaseRef": {"name": "handbook", "topK": 3, "hybrid": True},
    "prompt": {"systemPrompt": "Be brief.", "contextTemplate": "Facts:\n{context}"},
    "server": {"maxNewTokens": 64},
    "service": {"port": 8080},
}
TONE = ResolvedAdapter("tone", "tone-job-output", ".", "fineTuneJob/tone-job", "a" * 64)
LEGAL = ResolvedAdapter("legal", "models", "adapters/legal", "pvc/models/adapters/legal")
KB = ResolvedKnowledgeBase(
    name="handbook",
    uri="http://handbook-store.team-a.svc:19530",
    collection="kb_team_a_handbook",
    database="default",
    model="sentence-transformers/all-MiniLM-L6-v2",
    device="cpu",
    token=SecretKeyRef(name="milvus", key="token"),
)
INPUTS = Inputs(adapters=(TONE, LEGAL), knowledge_base=KB)


def build(spec: dict[str, Any] = SPEC, inputs: Inputs = INPUTS) -> list[dict[str, Any]]:
    return builder.build(PARENT, PhiDeploymentSpec.model_validate(spec), OperatorConfig(), inputs)


def served(children: list[dict[str, Any]]) -> ServeConfig:
    return ServeConfig.model_validate_json(children[0]["data"][CONFIG_FILE])


def pod_spec(children: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = children[1]["spec"]["template"]["spec"]
    return spec


def test_children_have_fixed_names_owner_and_never_the_parents_labels() -> None:
    children = build()
    assert [(c["kind"], c["metadata"]["name"]) for c in children] == [
        ("ConfigMap", "assistant-server-config"),
        ("Deployment", "assistant-server"),
        ("Service", "assistant-server"),
    ]
    for child in children:
        assert child["metadata"]["ownerReferences"][0]["uid"] == "1234"
        assert child["metadata"]["labels"]["app.kubernetes.io/instance"] == "assistant"
        for key in PARENT["metadata"]["labels"]:
            assert key not in child["metadata"]["labels"]


def test_config_is_the_serving_contract_with_paths_inside_the_mounted_claims() -> None:
    config = served(build())
    assert config.base_model_path == "/phiops/volumes/models/tiny-phi3"
    assert config.base_model_name == "tiny-phi3"
    assert [(a.name, a.path, a.sha256) for a in config.adapters] == [
        ("tone", "/phiops/volumes/tone-job-output", "a" * 64),
        ("legal", "/phiops/volumes/models/adapters/legal", None),
    ]
    assert config.max_new_tokens == 64
    assert config.system_prompt == "Be brief."
    assert config.context_template == "Facts:\n{context}"
    retrieval = config.retrieval
    assert retrieval is not None
    assert (retrieval.uri, retrieval.collection, retrieval.top_k, retrieval.hybrid) == (
        KB.uri,
        KB.collection,
        3,
        True,
    )
    assert retrieval.token_file == "/phiops/secrets/milvus/token"
    assert retrieval.citations is True


def test_each_claim_is_mounted_once_read_only_and_secrets_as_files() -> None:
    pod = pod_spec(build())
    claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [
        {"claimName": "models", "readOnly": True},
        {"claimName": "tone-job-output", "readOnly": True},
    ]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/phiops/volumes/models"]["readOnly"] is True
    assert mounts["/phiops/secrets/milvus"]["readOnly"] is True
    secret = next(v for v in pod["volumes"] if v["name"] == "milvus-token")
    assert secret["secret"] == {
        "secretName": "milvus",
        "items": [{"key": "token", "path": "token"}],
    }
    assert "env" not in json.dumps(secret)


def test_probes_ports_and_restricted_security_context() -> None:
    pod = pod_spec(build())
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"][0]["containerPort"] == 8000
    assert container["args"] == ["--config", "/etc/phiops/serve.json"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_service_exposes_the_api_port_and_status_endpoint_names_it() -> None:
    service = build()[2]
    assert service["spec"]["ports"][0]["port"] == 8080
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == build()[1]["spec"]["selector"]["matchLabels"]
    spec = PhiDeploymentSpec.model_validate(SPEC)
    assert builder.endpoint(PARENT, spec) == "http://assistant-server.team-a.svc:8080/v1"


def test_gpus_are_requested_and_the_gpu_taint_tolerated() -> None:
    spec = {**SPEC, "resources": {"gpus": 1, "nodeSelector": {"pool": "gpu"}}}
    pod = pod_spec(build(spec))
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert "tolerations" not in pod_spec(build())


def test_a_new_adapter_digest_or_collection_rolls_the_pods_and_nothing_else_does() -> None:
    def digest(inputs: Inputs = INPUTS, spec: dict[str, Any] = SPEC) -> str:
        template = build(spec, inputs)[1]["spec"]["template"]
        return str(template["metadata"]["annotations"][builder.CONFIG_HASH_ANNOTATION])

    retrained = ResolvedAdapter("tone", "tone-job-output", ".", "fineTuneJob/tone-job", "b" * 64)
    moved = ResolvedKnowledgeBase(**{**KB.__dict__, "collection": "kb_other"})
    assert digest() == digest()
    assert digest(Inputs((retrained, LEGAL), KB)) != digest()
    assert digest(Inputs((TONE, LEGAL), moved)) != digest()
    assert digest(spec={**SPEC, "replicas": 3}) == digest()


@pytest.mark.parametrize("replicas", [0, 3])
def test_replicas_follow_the_spec(replicas: int) -> None:
    assert build({**SPEC, "replicas": replicas})[1]["spec"]["replicas"] == replicas


def test_hub_model_without_knowledge_base_has_no_retrieval_and_no_claims() -> None:
    spec = {"model": {"name": "microsoft/Phi-3-mini-4k-instruct"}, "replicas": 0}
    children = build(spec, Inputs())
    config = served(children)
    assert config.base_model_path == "microsoft/Phi-3-mini-4k-instruct"
    assert config.retrieval is None and config.adapters == []
    volumes = pod_spec(children)["volumes"]
    assert not [v for v in volumes if "persistentVolumeClaim" in v]
    env = {e["name"] for e in pod_spec(children)["containers"][0]["env"]}
    assert "HF_HUB_OFFLINE" not in env
