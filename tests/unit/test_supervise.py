"""Kopf stopping on an error is started again in the process, with a back-off; a stop asked
for ends it."""

from __future__ import annotations

import pytest
from phiops_operator import metrics, supervise


class Runs:
    """Each call plays the next outcome: seconds it lasted, and whether it failed."""

    def __init__(self, outcomes: list[tuple[float, bool]]) -> None:
        self.outcomes, self.now = outcomes, 0.0
        self.slept: list[float] = []

    def run(self) -> None:
        lasted, failed = self.outcomes.pop(0)
        self.now += lasted
        if failed:
            raise RuntimeError("404 page not found")

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def supervise_runs(runs: Runs) -> None:
    supervise.run_until_stopped(runs.run, sleep=runs.sleep, clock=lambda: runs.now)


def test_failures_restart_with_a_growing_back_off_until_a_run_ends_by_itself() -> None:
    before = metrics.OPERATOR_RESTARTS._value.get()
    runs = Runs([(1, True), (1, True), (1, True), (5, False)])
    supervise_runs(runs)
    assert runs.slept == [1.0, 2.0, 4.0]
    assert runs.outcomes == []
    assert metrics.OPERATOR_RESTARTS._value.get() - before == 3


def test_a_long_healthy_run_starts_the_back_off_over() -> None:
    runs = Runs([(1, True), (1, True), (supervise.HEALTHY_SECONDS, True), (1, False)])
    supervise_runs(runs)
    assert runs.slept == [1.0, 2.0, 1.0]


def test_the_back_off_stops_growing_at_its_last_step() -> None:
    runs = Runs([(1, True)] * 9 + [(1, False)])
    supervise_runs(runs)
    assert runs.slept[-3:] == [30.0, 30.0, 30.0]


def test_an_interrupt_is_not_caught() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        supervise.run_until_stopped(interrupted, sleep=lambda _: None)
