"""The watchdog reports a Kopf watch task that died, not one cancelled on purpose."""

from __future__ import annotations

import asyncio

from phiops_operator import watchdog


async def forever() -> None:
    await asyncio.Event().wait()


async def fails() -> None:
    await asyncio.sleep(0.05)
    raise RuntimeError("404 page not found")


async def test_a_failed_watch_is_reported_with_its_error() -> None:
    reports: list[str] = []
    healthy = asyncio.create_task(forever(), name="watcher for pods@ns")
    failing = asyncio.create_task(fails(), name="watcher for finetunejobs.v1alpha1.phiops.dev@ns")
    await asyncio.wait_for(watchdog.watch_the_watches(reports.append, interval=0.01), 5)
    healthy.cancel()
    what = "finetunejobs.v1alpha1.phiops.dev@ns (RuntimeError: 404 page not found)"
    assert reports == [f"Kopf's watch of {what} died"]
    assert failing.done()


async def test_cancelled_watches_and_other_tasks_are_not_dead() -> None:
    cancelled = asyncio.create_task(forever(), name="watcher for jobs@ns")
    other = asyncio.create_task(fails(), name="a handler")
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, other, return_exceptions=True)
    assert watchdog.dead_watches([cancelled, other]) == []


async def test_a_watch_that_returns_is_dead() -> None:
    async def returns() -> None:
        return None

    task = asyncio.create_task(returns(), name="watcher for pods@ns")
    await task
    assert watchdog.dead_watches([task]) == ["pods@ns (it returned)"]


async def test_healthy_watches_are_watched_until_one_dies() -> None:
    reports: list[str] = []
    watch = asyncio.create_task(forever(), name="watcher for pods@ns")
    dog = asyncio.create_task(watchdog.watch_the_watches(reports.append, interval=0.01))
    await asyncio.sleep(0.1)
    assert reports == [] and not dog.done()
    dog.cancel()
    watch.cancel()
