"""The operator renders what the workloads parse; the termination message fits the kubelet."""

import json

from phiops_operator.builders import phi_deployment
from phiops_operator.builders.phi_deployment import Inputs, ResolvedAdapter
from phiops_operator.config import OperatorConfig
from phiops_operator.models.kinds import ALL_KINDS
from phiops_workload.contracts import TERMINATION_MESSAGE_LIMIT, WorkloadResult
from phiops_workload.serving import CONFIG_FILE, ServeConfig

from tests.helpers import samples


def test_rendered_server_config_parses_as_the_serving_contract() -> None:
    kinds = {k.kind: k for k in ALL_KINDS}
    (sample,) = [s for s in samples() if s["kind"] == "PhiDeployment"]
    parent = {**sample, "metadata": {**sample["metadata"], "namespace": "ns", "uid": "u-1"}}
    spec = kinds["PhiDeployment"].spec.model_validate(sample["spec"])
    adapter = ResolvedAdapter("support-tone", "support-tone-output", ".", "fineTuneJob/x", "ab")
    config_map = phi_deployment.build(parent, spec, OperatorConfig(), Inputs((adapter,)))[0]
    config = ServeConfig.model_validate_json(config_map["data"][CONFIG_FILE])
    assert config.base_model_name == spec.model.name
    assert [a.name for a in config.adapters] == ["support-tone"]
    assert config.max_new_tokens == spec.server.max_new_tokens


def test_result_round_trips() -> None:
    result = WorkloadResult(
        outcome="Succeeded", reason="Synced", figures={"documents": 3, "chunks": 12}
    )
    assert WorkloadResult.model_validate_json(result.to_message()) == result


def test_long_message_is_shortened_to_fit_the_termination_message_limit() -> None:
    result = WorkloadResult(outcome="Failed", reason="EmbeddingFailed", message="x" * 10_000)
    text = result.to_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = json.loads(text)
    assert parsed["reason"] == "EmbeddingFailed"
    assert parsed["message"].endswith("...")
