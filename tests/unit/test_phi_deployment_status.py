"""PhiDeployment conditions: waiting on inputs, serving the previous config, rolling, adapters
loading or failing in the running pods, degraded."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from phiops_operator.adapter_sync import AdapterState
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
EVERYWHERE = AdapterState(ready_replicas=2, loaded_replicas=2, answering_replicas=2)
TONE = AdapterView("tone", "fineTuneJob/tone-job", "ab" * 32, served=True, state=EVERYWHERE)
BASE = DeploymentObservation(
    selector="app.kubernetes.io/instance=a,app.kubernetes.io/component=server",
    endpoint="http://a-server.ns.svc:8000/v1",
    adapters=(TONE,),
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
        {
            "name": "tone",
            "source": "fineTuneJob/tone-job",
            "loaded": True,
            "loadedReplicas": 2,
            "sha256": "ab" * 32,
        }
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


def test_the_base_and_ready_adapters_serve_while_an_adapter_trains_not_ready() -> None:
    training = AdapterView("tone", "fineTuneJob/tone-job", None, served=False, waiting=TRAINING)
    legal = replace(TONE, name="legal", source="pvc/models/legal", sha256=None)
    conditions, fields = run(blocked=(TRAINING,), adapters=(training, legal))
    assert conditions["Ready"] == ("False", "AdapterNotReady")
    assert conditions["Reconciling"] == ("True", "AdapterNotReady")
    assert conditions["Stalled"][0] == "False"
    assert conditions["Degraded"][0] == "False"
    tone, loaded = fields["adapters"]
    assert (tone["loaded"], tone["loadedReplicas"], tone["message"]) == (
        False,
        0,
        TRAINING.message,
    )
    assert loaded["loaded"] is True and "message" not in loaded
    assert fields["adaptersReady"] == "1/2"
    assert fields["readyReplicas"] == 2


def test_the_base_serving_and_a_failed_fine_tune_job_is_stalled_and_degraded() -> None:
    view = AdapterView("tone", "fineTuneJob/tone-job", None, served=False, waiting=FAILED)
    conditions, fields = run(blocked=(FAILED,), adapters=(view,))
    assert conditions["Ready"] == ("False", "AdapterNotReady")
    assert conditions["Stalled"][0] == "True"
    assert conditions["Degraded"][0] == "True"
    assert fields["adapters"][0]["message"] == FAILED.message


def test_rolling_out_is_progressing_not_ready_until_pods_load() -> None:
    rolling = Rollout(desired=1, replicas=2, ready=1, updated=1, current=False)
    old_pod_only = AdapterState(ready_replicas=1, loaded_replicas=0, answering_replicas=1)
    conditions, fields = run(rollout=rolling, adapters=(replace(TONE, state=old_pod_only),))
    assert conditions["Ready"] == ("False", "RollingOut")
    assert conditions["Progressing"] == ("True", "RollingOut")
    assert fields["adapters"][0]["loaded"] is False
    assert fields["adapters"][0]["message"] == "loaded on 0/1 ready replicas"


def test_an_adapter_one_pod_cannot_load_is_reported_on_it_and_degrades() -> None:
    half = AdapterState(2, 1, 1, error="a-server-x: sha256 mismatch")
    conditions, fields = run(adapters=(replace(TONE, state=half),))
    assert conditions["Ready"] == ("True", "Serving")  # another pod answers it
    assert conditions["Degraded"] == ("True", "Degraded")
    assert fields["adapters"][0]["loaded"] is False
    assert fields["adapters"][0]["loadedReplicas"] == 1
    assert fields["adapters"][0]["message"] == "a-server-x: sha256 mismatch"
    assert fields["adaptersReady"] == "0/1"


def test_an_adapter_no_pod_can_load_stalls_while_the_base_serves() -> None:
    broken = AdapterState(2, 0, 0, error="a-server-x: not a LoRA adapter")
    conditions, fields = run(adapters=(replace(TONE, state=broken),))
    assert conditions["Ready"] == ("False", "AdapterLoadFailed")
    assert conditions["Stalled"] == ("True", "AdapterLoadFailed")
    assert conditions["Degraded"][0] == "True"
    assert "not a LoRA adapter" in fields["adapters"][0]["message"]


def test_an_adapter_failing_on_a_pod_that_is_not_ready_yet() -> None:
    starting = Rollout(desired=1, replicas=1, ready=0, updated=1, current=True)
    broken = AdapterState(0, 0, 0, error="a-server-x: not a LoRA adapter")
    conditions, _ = run(rollout=starting, adapters=(replace(TONE, state=broken),))
    assert conditions["Ready"] == ("False", "Loading")
    assert conditions["Degraded"][0] == "True"


def test_a_new_adapter_being_loaded_hot_is_progressing() -> None:
    loading = AdapterState(ready_replicas=2, loaded_replicas=1, answering_replicas=1)
    conditions, fields = run(adapters=(replace(TONE, state=loading),))
    assert conditions["Ready"] == ("True", "Serving")  # it answers on one pod already
    assert conditions["Progressing"] == ("True", "LoadingAdapters")
    assert fields["adapters"][0]["message"] == "loaded on 1/2 ready replicas"
    nowhere = AdapterState(ready_replicas=2, loaded_replicas=0, answering_replicas=0)
    conditions, _ = run(adapters=(replace(TONE, state=nowhere),))
    assert conditions["Ready"] == ("False", "LoadingAdapters")
    assert conditions["Degraded"][0] == "False"


def test_a_retrained_adapter_being_loaded_hot_keeps_the_old_one_serving() -> None:
    replacing = AdapterState(ready_replicas=2, loaded_replicas=0, answering_replicas=2)
    conditions, fields = run(adapters=(replace(TONE, state=replacing),))
    assert conditions["Ready"] == ("True", "Serving")
    assert conditions["Progressing"] == ("True", "LoadingAdapters")
    assert fields["adapters"][0]["loaded"] is False


def test_pods_that_do_not_answer_readyz_do_not_count_as_loaded() -> None:
    silent = AdapterState(ready_replicas=2, loaded_replicas=1, silent_replicas=1)
    _, fields = run(adapters=(replace(TONE, state=silent),))
    assert fields["adapters"][0]["loaded"] is False
    assert fields["adapters"][0]["message"] == (
        "loaded on 1/2 ready replicas (1 did not answer /readyz)"
    )


def test_crashing_pods_with_nothing_ready_stall_the_rollout() -> None:
    stuck = Rollout(desired=1, replicas=1, ready=0, updated=1, current=True, stuck="CrashLoop")
    conditions, _ = run(rollout=stuck)
    assert conditions["Stalled"] == ("True", "RolloutStuck")
    assert conditions["Degraded"][0] == "True"


def test_scaled_to_zero_is_ready() -> None:
    zero = Rollout(desired=0, replicas=0, ready=0, updated=0, current=True)
    conditions, fields = run(rollout=zero, adapters=(replace(TONE, state=AdapterState()),))
    assert conditions["Ready"] == ("True", "ScaledToZero")
    assert fields["adapters"][0]["loaded"] is False


def test_missing_knowledge_base_is_its_own_reason() -> None:
    missing = Dependency("knowledgeBase", "KnowledgeBase handbook not found")
    conditions, fields = run(blocked=(missing,), rollout=None)
    assert conditions["Ready"] == ("False", "KnowledgeBaseNotReady")
    assert fields["adapters"][0]["message"] == "not deployed yet"


def test_scaling_down_after_a_scale_is_serving_not_rolling_out() -> None:
    shrinking = Rollout(desired=1, replicas=2, ready=2, updated=2, current=True)
    conditions, fields = run(rollout=shrinking)
    assert conditions["Ready"] == ("True", "Serving")
    assert conditions["Progressing"] == ("True", "Scaling")
    assert fields["adapters"][0]["loaded"] is True


def test_scaling_up_keeps_serving_while_the_new_pod_loads() -> None:
    growing = Rollout(desired=2, replicas=2, ready=1, updated=2, current=True)
    one = AdapterState(ready_replicas=1, loaded_replicas=1, answering_replicas=1)
    conditions, _ = run(rollout=growing, adapters=(replace(TONE, state=one),))
    assert conditions["Ready"] == ("True", "Serving")
    assert conditions["Progressing"] == ("True", "Scaling")
    assert conditions["Degraded"][0] == "False"
