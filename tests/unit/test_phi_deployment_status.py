"""PhiDeployment conditions: waiting on inputs, serving the previous config, rolling, degraded."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from phiops_operator.conditions import Observation
from phiops_operator.status.phi_deployment import (
    AdapterView,
    Dependency,
    DeploymentObservation,
    Rollout,
    compute,
)

TRAINING = Dependency("adapter", "adapter tone: FineTuneJob tone-job is Running (step 3/30)")
FAILED = Dependency("adapter", "adapter tone: FineTuneJob tone-job is Failed (OOM)", failed=True)
ROLLED = Rollout(desired=2, replicas=2, ready=2, updated=2, current=True)
BASE = DeploymentObservation(
    selector="app.kubernetes.io/instance=a,app.kubernetes.io/component=server",
    endpoint="http://a-server.ns.svc:8000/v1",
    adapters=(AdapterView("tone", "fineTuneJob/tone-job", "ab" * 32, served=True),),
    knowledge_base="handbook",
    collection="kb_ns_handbook",
    blocked=(),
    waiting=(),
    rollout=ROLLED,
)


def by_type(observed: list[Observation]) -> dict[str, tuple[str, str]]:
    return {o.type: (o.status, o.reason) for o in observed}


def run(**changes: Any) -> tuple[dict[str, tuple[str, str]], dict[str, Any]]:
    observed, fields = compute(replace(BASE, **changes))
    return by_type(observed), fields


def test_rolled_out_and_ready_is_ready_with_every_adapter_loaded() -> None:
    conditions, fields = run()
    assert conditions["Ready"] == ("True", "Serving")
    assert conditions["Progressing"][0] == "False"
    assert conditions["Degraded"][0] == "False"
    assert conditions["Reconciling"][0] == "False" and conditions["Stalled"][0] == "False"
    assert fields["adapters"] == [
        {"name": "tone", "source": "fineTuneJob/tone-job", "loaded": True, "sha256": "ab" * 32}
    ]
    assert fields["adaptersReady"] == "1/1"
    assert (fields["replicas"], fields["readyReplicas"]) == (2, 2)
    assert fields["knowledgeBase"] == {"name": "handbook", "collection": "kb_ns_handbook"}
    assert fields["endpoint"] == BASE.endpoint and fields["selector"] == BASE.selector


def test_nothing_deployed_waits_for_the_adapter_with_adapter_not_ready() -> None:
    view = AdapterView("tone", "fineTuneJob/tone-job", None, served=False, waiting=TRAINING)
    conditions, fields = run(blocked=(TRAINING,), rollout=None, adapters=(view,))
    assert conditions["Ready"] == ("False", "AdapterNotReady")
    assert conditions["Reconciling"] == ("True", "AdapterNotReady")
    assert conditions["Progressing"] == ("True", "AdapterNotReady")
    assert fields["adapters"][0]["loaded"] is False
    assert fields["adapters"][0]["message"] == TRAINING.message
    assert fields["adaptersReady"] == "0/1"
    assert fields["readyReplicas"] == 0


def test_a_failed_fine_tune_job_with_nothing_deployed_is_stalled_and_degraded() -> None:
    conditions, _ = run(blocked=(FAILED,), rollout=None)
    assert conditions["Stalled"] == ("True", "AdapterNotReady")
    assert conditions["Degraded"][0] == "True"
    assert conditions["Ready"][0] == "False"


def test_previous_configuration_keeps_serving_while_the_new_adapter_trains() -> None:
    view = AdapterView("tone", "fineTuneJob/tone-job", "ab" * 32, served=True, waiting=TRAINING)
    conditions, fields = run(waiting=(TRAINING,), adapters=(view,))
    assert conditions["Ready"] == ("True", "ServingPrevious")
    assert conditions["Reconciling"] == ("True", "AdapterNotReady")
    assert fields["adapters"][0]["message"] == TRAINING.message


def test_rolling_out_is_progressing_not_ready_until_pods_load() -> None:
    rolling = Rollout(desired=1, replicas=2, ready=1, updated=1, current=False)
    conditions, fields = run(rollout=rolling)
    assert conditions["Ready"] == ("False", "RollingOut")
    assert conditions["Progressing"] == ("True", "RollingOut")
    assert fields["adapters"][0]["loaded"] is False
    assert fields["adapters"][0]["message"] == "rolling out"


def test_an_adapter_a_pod_cannot_load_is_reported_per_adapter() -> None:
    partial = Rollout(desired=2, replicas=2, ready=1, updated=2, current=True)
    view = replace(BASE.adapters[0], load_error="sha256 mismatch")
    conditions, fields = run(rollout=partial, adapters=(view,))
    assert conditions["Ready"] == ("True", "Serving")
    assert conditions["Degraded"][0] == "True"
    assert fields["adapters"][0]["message"] == "sha256 mismatch"


def test_crashing_pods_with_nothing_ready_stall_the_rollout() -> None:
    stuck = Rollout(desired=1, replicas=1, ready=0, updated=1, current=True, stuck="CrashLoop")
    conditions, _ = run(rollout=stuck)
    assert conditions["Stalled"] == ("True", "RolloutStuck")
    assert conditions["Degraded"][0] == "True"


def test_scaled_to_zero_is_ready() -> None:
    zero = Rollout(desired=0, replicas=0, ready=0, updated=0, current=True)
    conditions, fields = run(rollout=zero)
    assert conditions["Ready"] == ("True", "ScaledToZero")
    assert fields["adapters"][0]["loaded"] is False


def test_missing_knowledge_base_is_its_own_reason() -> None:
    missing = Dependency("knowledgeBase", "KnowledgeBase handbook not found")
    conditions, _ = run(blocked=(missing,), rollout=None)
    assert conditions["Ready"] == ("False", "KnowledgeBaseNotReady")


def test_scaling_down_after_a_scale_is_serving_not_rolling_out() -> None:
    shrinking = Rollout(desired=1, replicas=2, ready=2, updated=2, current=True)
    conditions, fields = run(rollout=shrinking)
    assert conditions["Ready"] == ("True", "Serving")
    assert conditions["Progressing"] == ("True", "Scaling")
    assert fields["adapters"][0]["loaded"] is True


def test_scaling_up_keeps_serving_while_the_new_pod_loads() -> None:
    growing = Rollout(desired=2, replicas=2, ready=1, updated=2, current=True)
    conditions, _ = run(rollout=growing)
    assert conditions["Ready"] == ("True", "Serving")
    assert conditions["Degraded"][0] == "False"
