"""The models accept what a user may write and reject nonsense, naming the field."""

from typing import Any

import pytest
from phiops_operator.errors import describe
from phiops_operator.models.fine_tune_job import PHI3_TARGET_MODULES, FineTuneJobSpec
from phiops_operator.models.knowledge_base import KnowledgeBaseSpec
from phiops_operator.models.phi_deployment import PhiDeploymentSpec
from pydantic import ValidationError


def error_of(model: Any, data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return describe(info.value)


def test_knowledge_base_defaults_fit_the_default_embedding_model() -> None:
    spec = KnowledgeBaseSpec.model_validate(
        {"sources": [{"name": "a", "configMap": {"name": "x"}}]}
    )
    assert spec.embedding.sentence_transformers.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert spec.chunking.size <= 256  # all-MiniLM-L6-v2 reads 256 word pieces
    assert spec.vector_store.milvus.uri is None  # embedded milvus-lite by default
    assert spec.reclaim_policy == "Retain"
    # The retrieval defaults the evaluation chose (docs/knowledge-bases.md#retrieval-quality).
    assert spec.chunking.include_path and spec.vector_store.milvus.hybrid
    assert spec.embedding.sentence_transformers.precision == "auto"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"sources": [{"name": "a", "configMap": {"name": "x"}, "git": {"url": "https://g/r"}}]},
            "spec.sources[0]: set exactly one of configMap, persistentVolumeClaim, http, git "
            "(found: configMap, git)",
        ),
        (
            {"sources": [{"name": "a"}]},
            "spec.sources[0]: set exactly one of configMap, persistentVolumeClaim, http, git "
            "(found: none)",
        ),
        (
            {
                "sources": [{"name": "a", "configMap": {"name": "x"}}],
                "chunking": {"size": 64, "overlap": 64},
            },
            "spec.chunking: overlap (64) must be smaller than size (64)",
        ),
        (
            {"sources": [{"name": "a", "configMap": {"name": "x"}}], "chunking": {"size": 512}},
            "exceeds the 256 tokens sentence-transformers/all-MiniLM-L6-v2 reads",
        ),
        (
            {
                "sources": [
                    {"name": "a", "configMap": {"name": "x"}},
                    {"name": "a", "configMap": {"name": "y"}},
                ]
            },
            "spec.sources[1].name: 'a' is already taken by spec.sources[0].name",
        ),
        (
            {
                "sources": [{"name": "a", "configMap": {"name": "x"}}],
                "embedding": {"provider": "openai"},
            },
            "spec.embedding: provider openai needs the openai settings",
        ),
        (
            {"sources": [{"name": "Bad_Name", "configMap": {"name": "x"}}]},
            "spec.sources[0].name: String should match pattern",
        ),
        (
            {"sources": [{"name": "a", "configMap": {"name": "x"}}], "sync": {"interval": "soon"}},
            "spec.sync.interval: String should match pattern",
        ),
    ],
)
def test_knowledge_base_rejects_with_the_field_named(data: dict[str, Any], expected: str) -> None:
    assert expected in error_of(KnowledgeBaseSpec, data)


def test_fine_tune_job_defaults_target_phi3_fused_modules() -> None:
    spec = FineTuneJobSpec.model_validate({"dataset": {"url": "https://example.com/d.jsonl"}})
    assert spec.lora.target_modules == PHI3_TARGET_MODULES
    assert spec.method == "qlora"
    assert spec.quantization.type == "nf4"
    assert spec.resources.gpu_resource_name == "nvidia.com/gpu"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"dataset": {}}, "spec.dataset: set exactly one of configMap, pvc, url (found: none)"),
        ({"dataset": {"url": "https://e/d"}, "method": "dora"}, "spec.method: Input should be"),
        (
            {"dataset": {"url": "https://e/d"}, "training": {"evalSteps": 10}},
            "training.evalSteps needs dataset.validationSplit > 0",
        ),
        (
            {"dataset": {"url": "https://e/d"}, "training": {"learningRate": 0}},
            "spec.training.learningRate: Input should be greater than 0",
        ),
        (
            {"dataset": {"url": "https://e/d"}, "resources": {"gpuMemory": "lots"}},
            "spec.resources.gpuMemory: String should match pattern",
        ),
        (
            {"dataset": {"url": "https://e/d"}, "lora": {"dropout": 1}},
            "spec.lora.dropout: Input should be less than 1",
        ),
    ],
)
def test_fine_tune_job_rejects_with_the_field_named(data: dict[str, Any], expected: str) -> None:
    assert expected in error_of(FineTuneJobSpec, data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"adapters": [{"name": "a"}]},
            "spec.adapters[0]: set exactly one of fineTuneJobRef, pvc (found: none)",
        ),
        (
            {
                "adapters": [
                    {"name": "a", "pvc": {"claimName": "c"}},
                    {"name": "a", "fineTuneJobRef": {"name": "j"}},
                ]
            },
            "spec.adapters[1].name: 'a' is already taken by spec.adapters[0].name",
        ),
        (
            {"knowledgeBaseRef": {"name": "kb", "neighbors": 9}},
            "spec.knowledgeBaseRef.neighbors: Input should be less than or equal to 8",
        ),
        (
            {"knowledgeBaseRef": {"name": "kb", "rerank": {"candidates": 5}}},
            "spec.knowledgeBaseRef.rerank.model: Field required",
        ),
        (
            {"knowledgeBaseRef": {"name": "kb", "rerank": {"model": "m", "candidates": 0}}},
            "spec.knowledgeBaseRef.rerank.candidates: Input should be greater than or equal to 1",
        ),
        (
            {"prompt": {"contextTemplate": "no placeholder"}},
            "spec.prompt: contextTemplate must contain the placeholder {context}",
        ),
        ({"replicas": -1}, "spec.replicas: Input should be greater than or equal to 0"),
        ({"service": {"port": 70000}}, "spec.service.port: Input should be less than or equal"),
        (
            {"engine": {"gpuMemoryUtilization": 1.5}},
            "spec.engine.gpuMemoryUtilization: Input should be less than or equal to 1",
        ),
        (
            {"engine": {"gpuMemoryUtilization": 0}},
            "spec.engine.gpuMemoryUtilization: Input should be greater than 0",
        ),
        ({"engine": {"maxModelLen": 8}}, "spec.engine.maxModelLen: Input should be greater"),
        ({"engine": {"maxNumSeqs": 0}}, "spec.engine.maxNumSeqs: Input should be greater"),
        ({"engine": {"maxLoras": 0}}, "spec.engine.maxLoras: Input should be greater"),
        (
            {"engine": {"kvCacheSpaceGiB": -1}},
            "spec.engine.kvCacheSpaceGiB: Input should be greater than or equal to 1",
        ),
        ({"engine": {"maxLoraRank": 48}}, "spec.engine.maxLoraRank: Input should be 1, 8, 16"),
        ({"engine": {"maxBatchSize": 8}}, "spec.engine.maxBatchSize: Extra inputs"),
        (
            {"server": {"quantize": "nf4"}},
            "spec: server.quantize nf4 needs resources.gpus >= 1",
        ),
        (
            {"server": {"quantize": "nf4"}, "resources": {"gpus": 0}},
            "spec: server.quantize nf4 needs resources.gpus >= 1",
        ),
        (
            {"engine": {"kvCacheSpaceGiB": 4}, "resources": {"gpus": 1}},
            "spec: engine.kvCacheSpaceGiB applies to CPU-only pods",
        ),
    ],
)
def test_phi_deployment_rejects_with_the_field_named(data: dict[str, Any], expected: str) -> None:
    assert expected in error_of(PhiDeploymentSpec, data)


def test_phi_deployment_engine_settings_and_nf4_on_gpus() -> None:
    spec = PhiDeploymentSpec.model_validate(
        {
            "server": {"quantize": "nf4"},
            "resources": {"gpus": 1},
            "engine": {"maxLoraRank": 320, "kvCacheSpaceGiB": None, "maxModelLen": 4096},
        }
    )
    assert spec.engine.max_lora_rank == 320
    assert spec.engine.enable_prefix_caching is True
    assert spec.to_wire()["engine"]["maxModelLen"] == 4096
    cpu = PhiDeploymentSpec.model_validate({"engine": {"kvCacheSpaceGiB": 2}})
    assert cpu.to_wire()["engine"]["kvCacheSpaceGiB"] == 2


def test_unknown_fields_are_errors() -> None:
    assert "spec.replica: Extra inputs are not permitted" in error_of(
        PhiDeploymentSpec, {"replica": 2}
    )
