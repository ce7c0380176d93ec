"""A keyed work queue: what makes reconciles event-driven instead of periodic.

Watch events `add` a resource's key; a deadline (a sync interval, a retry) `add_after`s it.
Each key is queued at most once however many events arrive before a worker takes it, and is
never handled by two workers at once (an event during a reconcile queues one more run after
it). Failed keys come back with exponential back-off, and all of them at once as soon as the
API server is heard from again (`retry_failed_now`), instead of waiting out their back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


@dataclass
class _KeyState:
    failures: int = 0
    timer: asyncio.TimerHandle | None = None
    due: float | None = None  # loop time the timer fires at


@dataclass
class WorkQueue:
    """Calls `handle(key)` from `workers` tasks; `handle` returns seconds until the key wants
    another run (a deadline), or None. An exception from `handle` means: retry with back-off."""

    handle: Callable[[Hashable], Awaitable[float | None]]
    workers: int = 20
    debounce: float = 0.05  # lets a burst of events for one key become one run
    transient: tuple[type[Exception], ...] = ()  # logged without a traceback
    _queue: asyncio.Queue[Hashable] = field(default_factory=asyncio.Queue)
    _queued: set[Hashable] = field(default_factory=set)
    _running: set[Hashable] = field(default_factory=set)
    _again: set[Hashable] = field(default_factory=set)
    _keys: dict[Hashable, _KeyState] = field(default_factory=dict)
    _failing: set[Hashable] = field(default_factory=set)  # keys whose last run failed
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    runs: int = 0  # handled so far (for who waits for a quiet moment)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for state in self._keys.values():
            if state.timer is not None:
                state.timer.cancel()

    def add(self, key: Hashable, debounce: float | None = None) -> None:
        """Run `key` after `debounce` seconds (the queue's own by default), events meanwhile
        included; an earlier deadline or back-off for it is dropped."""
        state = self._keys.setdefault(key, _KeyState())
        self._cancel_timer(state)
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            wait = self.debounce if debounce is None else debounce
            asyncio.get_running_loop().call_later(wait, self._queue.put_nowait, key)

    def add_after(self, key: Hashable, seconds: float) -> None:
        """Run `key` in `seconds` unless something runs it earlier; the earliest deadline wins."""
        loop = asyncio.get_running_loop()
        state = self._keys.setdefault(key, _KeyState())
        due = loop.time() + max(0.0, seconds)
        if state.due is not None and state.due <= due:
            return
        self._cancel_timer(state)
        state.due = due
        state.timer = loop.call_at(due, self._fire, key)

    def forget(self, key: Hashable) -> None:
        """The resource is gone: drop its deadline and back-off (a queued run still happens
        and finds nothing to do)."""
        state = self._keys.pop(key, None)
        if state is not None:
            self._cancel_timer(state)
        self._again.discard(key)
        self._failing.discard(key)

    def retry_failed_now(self) -> None:
        """The API server answers again: every key waiting out a back-off runs now."""
        # Only the failing keys are looked at: this runs on every watch event.
        for key in list(self._failing):
            state = self._keys.get(key)
            if state is not None and state.timer is not None:
                self.add(key)

    @property
    def failing(self) -> int:
        return len(self._failing)

    @property
    def depth(self) -> int:
        return len(self._queued)

    @property
    def idle(self) -> bool:
        return not self._queued and not self._running

    def _fire(self, key: Hashable) -> None:
        state = self._keys.get(key)
        if state is not None:
            state.timer, state.due = None, None
        self.add(key)

    @staticmethod
    def _cancel_timer(state: _KeyState) -> None:
        if state.timer is not None:
            state.timer.cancel()
        state.timer, state.due = None, None

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._running.add(key)
            try:
                after = await self.handle(key)
            except asyncio.CancelledError:
                raise
            except self.transient as err:
                after = self._failed(key)
                log.warning("reconcile of %s failed (%s); retrying in %.0fs", key, err, after)
            except Exception:
                after = self._failed(key)
                log.exception("reconcile of %s failed; retrying in %.0fs", key, after)
            else:
                if key in self._keys:
                    self._keys[key].failures = 0
                self._failing.discard(key)
            finally:
                self._running.discard(key)
                self.runs += 1
            if key in self._again:
                self._again.discard(key)
                self.add(key)
            elif after is not None and key in self._keys:
                self.add_after(key, after)

    def _failed(self, key: Hashable) -> float:
        state = self._keys.setdefault(key, _KeyState())
        state.failures += 1
        self._failing.add(key)
        return backoff(state.failures)


def backoff(failures: int) -> float:
    """1, 2, 4, ... seconds, at most a minute."""
    return float(min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, failures - 1)))
