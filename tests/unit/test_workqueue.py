"""The work queue that makes reconciles event-driven: coalescing, deadlines, back-off."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest
from phiops_operator.workqueue import WorkQueue, backoff


class Recorder:
    def __init__(self, after: float | None = None, fail: int = 0, hold: float = 0.0) -> None:
        self.calls: list[Hashable] = []
        self.running = 0
        self.most_at_once = 0
        self.after, self.fail, self.hold = after, fail, hold

    async def __call__(self, key: Hashable) -> float | None:
        self.calls.append(key)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.hold)
            if self.fail:
                self.fail -= 1
                raise RuntimeError("API down")
            return self.after
        finally:
            self.running -= 1


async def run(queue: WorkQueue, seconds: float) -> None:
    queue.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await queue.stop()


async def test_a_burst_of_events_for_one_key_is_one_run() -> None:
    handle = Recorder()
    queue = WorkQueue(handle, workers=4)
    queue.start()
    for _ in range(50):
        queue.add("a")
    queue.add("b")
    await asyncio.sleep(0.2)
    await queue.stop()
    assert sorted(map(str, handle.calls)) == ["a", "b"]


async def test_an_event_during_a_run_queues_one_more_never_two_at_once() -> None:
    handle = Recorder(hold=0.1)
    queue = WorkQueue(handle, workers=4)
    queue.start()
    queue.add("a")
    await asyncio.sleep(0.08)  # the first run is under way
    for _ in range(5):
        queue.add("a")
    await asyncio.sleep(0.4)
    await queue.stop()
    assert handle.calls == ["a", "a"]
    assert handle.most_at_once == 1


async def test_a_deadline_runs_the_key_again_and_an_event_comes_first() -> None:
    handle = Recorder(after=0.15)
    queue = WorkQueue(handle, workers=1)
    queue.start()
    queue.add("a")
    await asyncio.sleep(0.1)
    assert handle.calls == ["a"]
    await asyncio.sleep(0.25)  # the deadline (and the debounce after it) passed
    assert handle.calls == ["a", "a"]
    handle.after = None
    queue.add("a")  # an event before the next deadline replaces it
    await asyncio.sleep(0.3)
    await queue.stop()
    assert handle.calls == ["a", "a", "a"]


async def test_failures_back_off_and_the_api_returning_retries_at_once() -> None:
    handle = Recorder(fail=2)
    queue = WorkQueue(handle, workers=1)
    queue.start()
    queue.add("a")
    await asyncio.sleep(0.1)
    assert handle.calls == ["a"] and queue.failing == 1
    await asyncio.sleep(0.5)  # within the 1-s back-off: nothing
    assert handle.calls == ["a"]
    queue.retry_failed_now()
    await asyncio.sleep(0.1)
    assert handle.calls == ["a", "a"]  # failed again: back-off 2 s now
    queue.retry_failed_now()
    await asyncio.sleep(0.1)
    await queue.stop()
    assert handle.calls == ["a", "a", "a"] and queue.failing == 0


async def test_a_forgotten_key_keeps_no_deadline() -> None:
    handle = Recorder(after=0.1)
    queue = WorkQueue(handle, workers=1)
    queue.start()
    queue.add("a")
    await asyncio.sleep(0.07)
    queue.forget("a")
    await asyncio.sleep(0.3)
    await queue.stop()
    assert handle.calls == ["a"]


@pytest.mark.parametrize(("failures", "seconds"), [(1, 1), (2, 2), (3, 4), (7, 60), (30, 60)])
def test_backoff_doubles_up_to_a_minute(failures: int, seconds: float) -> None:
    assert backoff(failures) == seconds


def test_the_queue_counts_its_runs_and_says_when_it_is_idle() -> None:
    async def scenario() -> tuple[bool, int, bool]:
        queue = WorkQueue(lambda key: asyncio.sleep(0.05, result=None), workers=2, debounce=0)
        queue.start()
        queue.add("a")
        busy = queue.idle
        await asyncio.sleep(0.2)
        await queue.stop()
        return busy, queue.runs, queue.idle

    busy, runs, idle = asyncio.run(scenario())
    assert (busy, runs, idle) == (False, 1, True)
