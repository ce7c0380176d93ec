"""Notice when one of Kopf's watches has died while the operator runs on.

Kopf runs a task per watched kind, named "watcher for <resource>@<namespace>". One that fails
(an API error Kopf does not retry) is logged and never started again, so that kind is no
longer reconciled though the process looks healthy. The watchdog checks them every few
seconds and reports a dead one; the supervisor then starts Kopf again (`supervise.py`).
A watch Kopf cancels on purpose (its kind went away, the operator stops) is not dead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

WATCHER_PREFIX = "watcher for "
CHECK_SECONDS = 2.0


def dead_watches(tasks: Iterable[asyncio.Task[object]]) -> list[str]:
    """The watches among `tasks` that ended by themselves: failed, or returned (they never
    return while healthy); each with why."""
    dead = []
    for task in tasks:
        name = task.get_name()
        if not name.startswith(WATCHER_PREFIX) or not task.done() or task.cancelled():
            continue
        error = task.exception()
        why = f"{type(error).__name__}: {error}" if error is not None else "it returned"
        dead.append(f"{name.removeprefix(WATCHER_PREFIX)} ({why})")
    return dead


async def watch_the_watches(report: Callable[[str], None], interval: float = CHECK_SECONDS) -> None:
    """Track Kopf's watch tasks as they appear; report the first dead ones, then end."""
    watches: dict[str, asyncio.Task[object]] = {}
    while True:
        for task in asyncio.all_tasks():
            if task.get_name().startswith(WATCHER_PREFIX):
                watches[task.get_name()] = task
        dead = dead_watches(watches.values())
        if dead:
            report(f"Kopf's watch of {', '.join(dead)} died")
            return
        await asyncio.sleep(interval)
