"""Operator start-up: settings, the shared API client, metrics, liveness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import kopf

from phiops_operator import GROUP, metrics, supervise, watchdog
from phiops_operator.config import OperatorConfig
from phiops_operator.controller import Controller
from phiops_operator.k8s import Kube
from phiops_operator.object_store import ObjectStore

# Kopf's retries of a failed request, in seconds: through an API server restart of a few
# minutes (its default, 54 s in all, runs out while a loaded API server starts again, and a
# watch whose retries ran out dies; see supervise.py).
RETRY_BACKOFFS = (1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, *(30.0,) * 8)

# Identity strings: chosen once, never changed (resources in the field carry them).
FINALIZER = f"{GROUP}/cleanup"
STORAGE_PREFIX = GROUP


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's record of the last handled spec, for change handlers; phiops has none (the
    controller compares specs itself), so every object's essence is the same empty one.
    Kopf's default would deep-copy each watched object on every event (a tenth of the
    operator's CPU under load) and write an annotation on every new or changed resource
    (a PATCH, and a watch event back, per resource). Deletion handlers do not need it: Kopf
    detects deletion from the object's deletion timestamp."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class QuietEventHandlers(logging.Filter):
    """Kopf logs every event handler's success; for these, that is every watch event."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith(("Handler 'watch_", "Handler 'children_", "Handler 'inputs_"))
            and message.endswith("succeeded.")
        )


def configure(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.networking.error_backoffs = RETRY_BACKOFFS
    # No log message becomes an Event (Kopf 1.45's default, made explicit so that a new default
    # cannot start posting): Kopf would post a "Handler ... succeeded" per handler run, and our
    # reconciles log from the controller's own tasks, where Kopf's poster is not reachable
    # (measured: 1,000 resources, 0 Events from phiops; the namespace's 1,998 were the
    # scheduler's and the Job controller's). Explicit kopf.event() calls would still post.
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietEventHandlers) for f in objects.filters):
        objects.addFilter(QuietEventHandlers())
    # Kopf's workers only hand events to the controller's queue (whose own workers, as many
    # as `worker_limit`, reconcile), so they need no limit of their own.


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = OperatorConfig()
    configure(settings, config)
    memo["config"] = config
    memo["kube"] = await Kube.connect(config.api_qps, config.api_burst)
    # Reads come from the watches' store (filled before any reconcile; see handlers/watch.py).
    memo["kube"].objects = ObjectStore()
    controller = Controller(memo["kube"], config, memo, settings)
    controller.start()
    memo["controller"] = controller
    metrics.serve(config.metrics_port)
    # Kopf cancels it with every other task when it stops.
    memo["watchdog"] = asyncio.create_task(
        watchdog.watch_the_watches(supervise.fail_current_run), name="phiops watchdog"
    )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.stop()
    kube: Kube | None = memo.get("kube")
    if kube is not None:
        await kube.close()


@kopf.on.probe(id="apiClient")
async def api_client_ready(memo: kopf.Memo, **_: Any) -> bool:
    """Liveness: the shared client exists (Kopf's own watch health is checked by Kopf)."""
    return "kube" in memo


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: $KUBECONFIG, read now (client libraries
    capture it once, at import time, which breaks operators embedded in tests)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
