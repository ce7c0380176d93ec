"""PhiDeployment children: the server config contract, volumes, placement and rolling."""

from __future__ import annotations

import json
from dataclasses import replace
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


def test_the_operator_version_labels_the_deployment_but_not_its_pods() -> None:
    deployment = build()[1]
    assert "app.kubernetes.io/version" in deployment["metadata"]["labels"]
    template = deployment["spec"]["template"]["metadata"]["labels"]
    assert "app.kubernetes.io/version" not in template  # an upgrade would roll every server
    assert template.items() >= builder.selector("assistant").items()


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


def digest(inputs: Inputs = INPUTS, spec: dict[str, Any] = SPEC) -> str:
    template = build(spec, inputs)[1]["spec"]["template"]
    return str(template["metadata"]["annotations"][builder.CONFIG_HASH_ANNOTATION])


def test_adapters_change_the_config_but_not_the_pod_template() -> None:
    retrained = ResolvedAdapter("tone", "tone-job-output", ".", "fineTuneJob/tone-job", "b" * 64)
    before = build()
    for inputs in (
        Inputs((retrained, LEGAL), KB),  # a retrained adapter
        Inputs((LEGAL,), KB, claims=("tone-job-output",)),  # an adapter not there yet
        Inputs((TONE, LEGAL, replace(LEGAL, name="legal-2", path="adapters/l2")), KB),  # new
    ):
        after = build(inputs=inputs)
        assert after[1]["spec"]["template"] == before[1]["spec"]["template"], inputs
        assert served(after).adapters != served(before).adapters  # new pods start with them
    assert digest(spec={**SPEC, "replicas": 3}) == digest()


@pytest.mark.parametrize(
    "change",
    [
        {"engine": {"maxModelLen": 2048}},
        {"engine": {"enforceEager": True}},
        {"engine": {"maxLoraRank": 64}},
        {"engine": {"enablePrefixCaching": False}},
        {"server": {"maxNewTokens": 32}},
        {"server": {"dtype": "float16"}},
        {"prompt": {"systemPrompt": "Be long."}},
        {"model": {"name": "tiny-phi3-b", "pvc": {"claimName": "models", "path": "b"}}},
        {"resources": {"gpus": 2}},
    ],
)
def test_what_needs_an_engine_restart_rolls_the_pods(change: dict[str, Any]) -> None:
    assert digest(spec={**SPEC, **change}) != digest()


def test_a_new_collection_rolls_the_pods() -> None:
    moved = ResolvedKnowledgeBase(**{**KB.__dict__, "collection": "kb_other"})
    assert digest(Inputs((TONE, LEGAL), moved)) != digest()


def test_engine_settings_are_rendered_and_gpus_spread_the_model() -> None:
    spec = {
        **SPEC,
        "resources": {"gpus": 4},
        "server": {"quantize": "nf4"},
        "engine": {
            "maxModelLen": 2048,
            "gpuMemoryUtilization": 0.8,
            "maxNumSeqs": 32,
            "enforceEager": True,
            "enablePrefixCaching": False,
            "maxLoras": 4,
            "maxLoraRank": 64,
        },
    }
    config = served(build(spec))
    engine = config.engine
    assert (engine.max_model_len, engine.gpu_memory_utilization, engine.max_num_seqs) == (
        2048,
        0.8,
        32,
    )
    assert (engine.enforce_eager, engine.enable_prefix_caching) == (True, False)
    assert (engine.max_loras, engine.max_lora_rank) == (4, 64)
    assert engine.tensor_parallel_size == 4
    assert engine.kv_cache_space_gib is None
    assert config.quantize == "nf4"


@pytest.mark.parametrize(("gpus", "parallel"), [(0, 1), (1, 1), (2, 2)])
def test_tensor_parallelism_follows_the_gpus(gpus: int, parallel: int) -> None:
    config = served(build({**SPEC, "resources": {"gpus": gpus}}))
    assert config.engine.tensor_parallel_size == parallel


def test_engine_defaults_and_the_cpu_kv_cache() -> None:
    engine = served(build()).engine
    assert engine.enable_prefix_caching is True and engine.enforce_eager is None
    assert engine.max_lora_rank is None and engine.max_model_len is None
    cpu = served(build({**SPEC, "engine": {"kvCacheSpaceGiB": 6}})).engine
    assert cpu.kv_cache_space_gib == 6


def test_the_admin_port_is_on_the_pod_and_not_behind_the_service() -> None:
    children = build()
    config = served(children)
    assert config.admin_port == builder.ADMIN_PORT == 8001
    assert config.port == 8000
    ports = pod_spec(children)["containers"][0]["ports"]
    assert {p["name"]: p["containerPort"] for p in ports} == {"http": 8000, "admin": 8001}
    service_ports = children[2]["spec"]["ports"]
    assert [p["targetPort"] for p in service_ports] == ["http"]
    assert config.work_dir is not None and config.work_dir.startswith(builder.CACHE_DIR)


def test_claims_of_adapters_not_there_yet_are_mounted_in_name_order() -> None:
    inputs = Inputs((LEGAL,), KB, claims=("tone-job-output", "a-claim", "models"))
    pod = pod_spec(build(inputs=inputs))
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["a-claim", "models", "tone-job-output"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/phiops/volumes/tone-job-output" in mounts
    assert served(build(inputs=inputs)).adapters[0].name == "legal"


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


def test_retrieval_defaults_are_the_measured_best_and_rerank_is_passed_on() -> None:
    # A user who writes only the KnowledgeBase's name gets hybrid search and +-1 neighbour.
    plain = {**SPEC, "knowledgeBaseRef": {"name": "handbook"}}
    retrieval = served(build(plain)).retrieval
    assert retrieval is not None
    assert (retrieval.top_k, retrieval.hybrid, retrieval.neighbors, retrieval.rerank) == (
        4,
        True,
        1,
        None,
    )
    ref = {
        "name": "handbook",
        "neighbors": 0,
        "hybrid": False,
        "rerank": {"model": "cross-encoder/ms-marco-MiniLM-L-6-v2", "candidates": 30},
    }
    retrieval = served(build({**SPEC, "knowledgeBaseRef": ref})).retrieval
    assert retrieval is not None and retrieval.rerank is not None
    assert (retrieval.hybrid, retrieval.neighbors) == (False, 0)
    assert (retrieval.rerank.model, retrieval.rerank.candidates, retrieval.rerank.device) == (
        "cross-encoder/ms-marco-MiniLM-L-6-v2",
        30,
        KB.device,
    )
    # Re-ranking changes what the server does: its config hash, so the pods roll.
    assert build(plain)[1] != build({**SPEC, "knowledgeBaseRef": ref})[1]


def test_an_hnsw_ef_reaches_the_server_and_rolls_it() -> None:
    plain = {**SPEC, "knowledgeBaseRef": {"name": "handbook"}}
    wide = {**SPEC, "knowledgeBaseRef": {"name": "handbook", "ef": 256}}
    assert served(build(plain)).retrieval.ef is None  # type: ignore[union-attr]
    assert served(build(wide)).retrieval.ef == 256  # type: ignore[union-attr]
    assert build(plain)[1] != build(wide)[1]
