from phiops_operator import conditions
from phiops_operator.conditions import Observation


def test_merge_adds_conditions_with_times_and_generation() -> None:
    merged = conditions.merge(None, conditions.ready("Synced", "all good"), 3, now="T1")
    assert [c["type"] for c in merged] == ["Ready", "Reconciling", "Stalled"]
    ready = merged[0]
    assert ready == {
        "type": "Ready",
        "status": "True",
        "reason": "Synced",
        "message": "all good",
        "lastTransitionTime": "T1",
        "observedGeneration": 3,
    }


def test_transition_time_moves_only_when_status_flips() -> None:
    first = conditions.merge(None, conditions.reconciling("Syncing", "working"), 1, now="T1")
    # Same statuses, new reason and generation: times stay.
    second = conditions.merge(first, conditions.reconciling("StillSyncing", "more"), 2, now="T2")
    assert {c["type"]: c["lastTransitionTime"] for c in second} == {
        "Ready": "T1",
        "Reconciling": "T1",
        "Stalled": "T1",
    }
    assert conditions.find(second, "Ready") == {
        "type": "Ready",
        "status": "False",
        "reason": "StillSyncing",
        "message": "more",
        "lastTransitionTime": "T1",
        "observedGeneration": 2,
    }
    # Ready flips to True and Reconciling to False: those two move; Stalled does not.
    third = conditions.merge(second, conditions.ready("Synced"), 2, now="T3")
    times = {c["type"]: c["lastTransitionTime"] for c in third}
    assert times == {"Ready": "T3", "Reconciling": "T3", "Stalled": "T1"}


def test_unrelated_conditions_are_kept_and_sorted_after_the_summary() -> None:
    merged = conditions.merge(
        [{"type": "Accepted", "status": "True", "reason": "SpecValid", "lastTransitionTime": "T0"}],
        conditions.stalled("InvalidSpec", "bad"),
        4,
        now="T1",
    )
    assert [c["type"] for c in merged] == ["Ready", "Reconciling", "Stalled", "Accepted"]
    assert conditions.find(merged, "Stalled")["status"] == "True"  # type: ignore[index]
    assert conditions.find(merged, "Accepted")["lastTransitionTime"] == "T0"  # type: ignore[index]


def test_observation_statuses_follow_the_abnormal_true_convention() -> None:
    def statuses(observed: list[Observation]) -> dict[str, str]:
        return {o.type: o.status for o in observed}

    assert statuses(conditions.ready("R")) == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
    }
    assert statuses(conditions.reconciling("R", "m")) == {
        "Ready": "False",
        "Reconciling": "True",
        "Stalled": "False",
    }
    assert statuses(conditions.stalled("R", "m")) == {
        "Ready": "False",
        "Reconciling": "False",
        "Stalled": "True",
    }
