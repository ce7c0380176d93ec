"""Kopf stopping on an error, or stopped by the watchdog, is started again in the process
with a back-off; a stop asked for ends it; a failed run that does not stop ends the process."""

from __future__ import annotations

import threading

import pytest
from phiops_operator import metrics, supervise


class Runs:
    """Each call plays the next outcome: seconds it lasted, and how it ended: "ok" (by
    itself), "raised" (Kopf stopped on an error) or "failed" (the watchdog stopped it)."""

    def __init__(self, outcomes: list[tuple[float, str]]) -> None:
        self.outcomes, self.now = outcomes, 0.0
        self.slept: list[float] = []

    def run(self, run: supervise.Run) -> None:
        lasted, ending = self.outcomes.pop(0)
        self.now += lasted
        if ending == "raised":
            raise RuntimeError("404 page not found")
        if ending == "failed":
            supervise.fail_current_run("a watch died")
            assert run.stop_flag.is_set()

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def supervise_runs(runs: Runs) -> None:
    supervise.run_until_stopped(runs.run, sleep=runs.sleep, clock=lambda: runs.now)


def test_failures_restart_with_a_growing_back_off_until_a_run_ends_by_itself() -> None:
    before = metrics.OPERATOR_RESTARTS._value.get()
    runs = Runs([(1, "raised"), (1, "failed"), (1, "raised"), (5, "ok")])
    supervise_runs(runs)
    assert runs.slept == [1.0, 2.0, 4.0]
    assert runs.outcomes == []
    assert metrics.OPERATOR_RESTARTS._value.get() - before == 3


def test_a_long_healthy_run_starts_the_back_off_over() -> None:
    runs = Runs([(1, "raised"), (1, "raised"), (supervise.HEALTHY_SECONDS, "failed"), (1, "ok")])
    supervise_runs(runs)
    assert runs.slept == [1.0, 2.0, 1.0]


def test_the_back_off_stops_growing_at_its_last_step() -> None:
    runs = Runs([(1, "raised")] * 9 + [(1, "ok")])
    supervise_runs(runs)
    assert runs.slept[-3:] == [30.0, 30.0, 30.0]


def test_an_interrupt_is_not_caught() -> None:
    def interrupted(run: supervise.Run) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        supervise.run_until_stopped(interrupted, sleep=lambda _: None)


def test_a_failure_outside_a_supervised_run_is_only_logged() -> None:
    supervise.fail_current_run("a watch died")  # no run: nothing to stop, nothing raised


def test_a_failed_run_that_does_not_stop_ends_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervise, "STOP_GRACE_SECONDS", 0.05)
    exited = threading.Event()
    run = supervise.Run(exit_process=exited.set)
    run.fail("a watch died")
    assert exited.wait(5), "the process was not ended"


def test_a_failed_run_that_stops_in_time_keeps_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(supervise, "STOP_GRACE_SECONDS", 0.2)
    exited = threading.Event()
    run = supervise.Run(exit_process=exited.set)
    run.fail("a watch died")
    run.fail("another watch died")  # the first reason stands, one deadline
    run.ended()
    assert not exited.wait(0.5)
    assert run.failure == "a watch died"
