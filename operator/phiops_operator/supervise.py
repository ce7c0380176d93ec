"""Keep Kopf running in this process when it stops on an error, or when part of it died.

Kopf ends the whole operator when one of its root tasks meets an API error it does not
retry. Worse, when a single watch fails that way (a 404 for a custom resource from an API
server that has just restarted and does not serve its custom resources yet, or a 503 "server
is starting" after Kopf's retries ran out), Kopf logs it and goes on without that watch:
the process lives, and that kind is never reconciled again (nolar/kopf#1077, #1145). The
watchdog (`phiops_operator.watchdog`) sees such a watch die and stops the run through
`Run.fail`.

Either way we start Kopf again in this process after a short back-off, which lists
everything afresh. Exiting instead would leave it to the kubelet, whose restart back-off
grows to five minutes. A stop asked for (SIGTERM, SIGINT) ends the process as before. A run
that does not finish stopping within STOP_GRACE_SECONDS of a failure ends the process: the
kubelet then starts a fresh one, better than a live process that reconciles nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from phiops_operator import metrics

log = logging.getLogger(__name__)
# Seconds before each successive restart; a run that lasted HEALTHY_SECONDS starts over.
BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
HEALTHY_SECONDS = 300.0
STOP_GRACE_SECONDS = 60.0
EXIT_CODE = 70  # the process ended because a failed run would not stop


def _exit_process() -> None:
    log.critical(
        "the operator did not stop within %.0f s of a failure; exiting", STOP_GRACE_SECONDS
    )
    logging.shutdown()
    os._exit(EXIT_CODE)


@dataclass
class Run:
    """One Kopf run: the flag that stops it, and why it was stopped when not asked to."""

    stop_flag: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None
    exit_process: Callable[[], None] = _exit_process
    _deadline: threading.Timer | None = None

    def fail(self, why: str) -> None:
        """Stop this run so that it is started again; end the process if it does not stop."""
        if self.failure is not None:
            return
        self.failure = why
        log.error("%s; stopping the operator to start it again", why)
        self._deadline = threading.Timer(STOP_GRACE_SECONDS, self.exit_process)
        self._deadline.daemon = True
        self._deadline.start()
        self.stop_flag.set()

    def ended(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()


_current: Run | None = None


def fail_current_run(why: str) -> None:
    """Stop the supervised run, if any (an operator embedded elsewhere, as in tests, has
    none: there the failure is only logged)."""
    if _current is None:
        log.error("%s; no supervisor to start the operator again", why)
        return
    _current.fail(why)


def run_until_stopped(
    run: Callable[[Run], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    exit_process: Callable[[], None] = _exit_process,
) -> None:
    """Call `run` (a whole operator run, stopped by `Run.stop_flag`) again whenever it fails
    or was failed; return when it returns of its own accord."""
    global _current
    failures = 0
    while True:
        started = clock()
        current = _current = Run(exit_process=exit_process)
        try:
            run(current)
            if current.failure is None:
                return
        except Exception:
            log.exception("the operator stopped on an error")
        finally:
            current.ended()
            _current = None
        if clock() - started >= HEALTHY_SECONDS:
            failures = 0
        delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
        failures += 1
        log.error("starting the operator again in %.0f s", delay)
        metrics.OPERATOR_RESTARTS.inc()
        sleep(delay)
