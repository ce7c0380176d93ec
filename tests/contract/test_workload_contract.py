"""The operator renders what the workloads parse; the termination message fits the kubelet."""

import json

from phiops_operator.builders import phi_deployment
from phiops_operator.config import OperatorConfig
from phiops_operator.models.kinds import ALL_KINDS
from phiops_workload.contracts import TERMINATION_MESSAGE_LIMIT, WorkloadConfig, WorkloadResult

from tests.helpers import samples

BUILDERS = {
    "PhiDeployment": phi_deployment.build,
}


def test_rendered_config_parses_as_the_workload_contract() -> None:
    kinds = {k.kind: k for k in ALL_KINDS}
    for sample in samples():
        if sample["kind"] not in BUILDERS:
            continue  # the others render their own contracts: see their builder tests
        parent = {**sample, "metadata": {**sample["metadata"], "namespace": "ns", "uid": "u-1"}}
        spec = kinds[sample["kind"]].spec.model_validate(sample["spec"])
        (config_map,) = BUILDERS[sample["kind"]](parent, spec, OperatorConfig())
        config = WorkloadConfig.model_validate_json(config_map["data"]["config.json"])
        assert config.resource.kind == sample["kind"]
        assert config.resource.uid == "u-1"
        # The spec survives the trip and still validates as the operator's model.
        assert kinds[sample["kind"]].spec.model_validate(config.spec) == spec


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
