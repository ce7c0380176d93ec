"""Keep Kopf running in this process when it stops on an error.

Kopf ends the whole operator when one of its watches meets an API error it does not retry.
The one seen here: a 404 for a custom resource's watch from an API server that has just
restarted and does not serve its custom resources yet (it opens its port before that; a
load balancer that checks /readyz hides the moment, a single API server does not). Kopf
treats that as final (see nolar/kopf#1077 and #1145: a watcher that failed is not
restarted). Exiting would leave it to the kubelet, whose restart back-off grows to five
minutes; we start Kopf again in this process after a short back-off instead, which lists
everything afresh. A stop asked for (SIGTERM, SIGINT) ends the process as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from phiops_operator import metrics

log = logging.getLogger(__name__)
# Seconds before each successive restart; a run that lasted HEALTHY_SECONDS starts over.
BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
HEALTHY_SECONDS = 300.0


def run_until_stopped(
    run: Callable[[], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Call `run` (a whole operator run) again whenever it fails; return when it returns."""
    failures = 0
    while True:
        started = clock()
        try:
            run()
            return
        except Exception:
            if clock() - started >= HEALTHY_SECONDS:
                failures = 0
            delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
            failures += 1
            log.exception("the operator stopped on an error; starting it again in %.0f s", delay)
            metrics.OPERATOR_RESTARTS.inc()
        sleep(delay)
