"""Prometheus metrics of the operator itself (`phiops_...`), served on /metrics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "phiops_reconcile",
    "Reconciles of phiops resources, by kind and result (success, invalid, retry, error).",
    ["kind", "result"],
)
RECONCILE_DURATION = Histogram(
    "phiops_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind and result.",
    ["kind", "result"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

API_REQUESTS = Counter(
    "phiops_api_requests",
    "Requests the operator's reconciles sent the API server, by HTTP method (Kopf's own "
    "watches and finalizer patches are not counted).",
    ["method"],
)
API_THROTTLED = Counter(
    "phiops_api_client_throttled_seconds",
    "Seconds reconciles waited for the client-side rate limit (apiClient.qps/burst).",
)
OPERATOR_RESTARTS = Counter(
    "phiops_operator_restarts",
    "Times Kopf stopped on an error and was started again inside the same process.",
)
QUEUE_DEPTH = Gauge(
    "phiops_reconcile_queue_depth",
    "Resources waiting for a reconcile (each is queued at most once).",
)


class ReconcileOutcome:
    """Set `result` inside the block; it is recorded when the block ends."""

    def __init__(self) -> None:
        self.result = "error"


@contextmanager
def observe_reconcile(kind: str) -> Iterator[ReconcileOutcome]:
    outcome = ReconcileOutcome()
    started = time.perf_counter()
    try:
        yield outcome
    finally:
        RECONCILES.labels(kind, outcome.result).inc()
        RECONCILE_DURATION.labels(kind, outcome.result).observe(time.perf_counter() - started)


_served: set[int] = set()


def serve(port: int) -> None:
    """Expose /metrics on all interfaces (in a thread: scraping never waits on handlers);
    once per process, however often the operator starts inside it."""
    if port > 0 and port not in _served:
        start_http_server(port)
        _served.add(port)


KB_DOCUMENTS = Gauge(
    "phiops_knowledge_base_documents",
    "Documents in a knowledge base after its last successful sync.",
    ["namespace", "name"],
)
KB_CHUNKS = Gauge(
    "phiops_knowledge_base_chunks",
    "Chunks in a knowledge base's collection after its last successful sync.",
    ["namespace", "name"],
)
KB_LAST_SYNC = Gauge(
    "phiops_knowledge_base_last_successful_sync_timestamp_seconds",
    "Unix time of a knowledge base's last successful sync.",
    ["namespace", "name"],
)
KB_SYNC_DURATION = Gauge(
    "phiops_knowledge_base_sync_duration_seconds",
    "Duration of a knowledge base's last successful sync.",
    ["namespace", "name"],
)
KB_SYNC_INTERVAL = Gauge(
    "phiops_knowledge_base_sync_interval_seconds",
    "A knowledge base's periodic re-sync interval (absent when it syncs on change only).",
    ["namespace", "name"],
)
KB_SYNC_FAILURES = Counter(
    "phiops_knowledge_base_sync_failures",
    "Failed knowledge base syncs, by reason.",
    ["namespace", "name", "reason"],
)


def forget_knowledge_base(namespace: str, name: str) -> None:
    """Drop a deleted knowledge base's series so dashboards do not show ghosts."""
    for gauge in (KB_DOCUMENTS, KB_CHUNKS, KB_LAST_SYNC, KB_SYNC_DURATION, KB_SYNC_INTERVAL):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    forget_resource("KnowledgeBase", namespace, name)


FTJ_PHASES = ("Pending", "Validating", "Running", "Succeeded", "Failed")
FTJ_PHASE = Gauge(
    "phiops_fine_tune_job_phase",
    "1 for the phase a fine-tune job is in, 0 for the others.",
    ["namespace", "name", "phase"],
)
FTJ_DURATION = Gauge(
    "phiops_fine_tune_job_duration_seconds",
    "Training time of a fine-tune job: so far while it runs, in total once it ended.",
    ["namespace", "name"],
)
FTJ_FINAL_LOSS = Gauge(
    "phiops_fine_tune_job_final_loss",
    "Training loss of a finished fine-tune job.",
    ["namespace", "name"],
)
FTJ_RESTARTS = Gauge(
    "phiops_fine_tune_job_restarts",
    "Training pods of a fine-tune job that ended before it finished, by reason.",
    ["namespace", "name", "reason"],
)


def forget_fine_tune_job(namespace: str, name: str) -> None:
    for phase in FTJ_PHASES:
        with contextlib.suppress(KeyError):
            FTJ_PHASE.remove(namespace, name, phase)
    for gauge in (FTJ_DURATION, FTJ_FINAL_LOSS, FTJ_LAST_PROGRESS):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    forget_resource("FineTuneJob", namespace, name)


FTJ_LAST_PROGRESS = Gauge(
    "phiops_fine_tune_job_last_progress_timestamp_seconds",
    "Unix time a fine-tune job's trainer last reported progress (a step or an evaluation).",
    ["namespace", "name"],
)

RESOURCE_READY = Gauge(
    "phiops_resource_ready",
    "1 when a phiops resource's Ready condition is True, else 0, by kind.",
    ["kind", "namespace", "name"],
)


def forget_resource(kind: str, namespace: str, name: str) -> None:
    with contextlib.suppress(KeyError):
        RESOURCE_READY.remove(kind, namespace, name)


DEPLOYMENT_REPLICAS = Gauge(
    "phiops_deployment_replicas",
    "Serving pods a PhiDeployment asks for (spec.replicas).",
    ["namespace", "name"],
)
DEPLOYMENT_READY_REPLICAS = Gauge(
    "phiops_deployment_ready_replicas",
    "Serving pods of a PhiDeployment that are ready (base model and every adapter loaded).",
    ["namespace", "name"],
)
DEPLOYMENT_ADAPTERS = Gauge(
    "phiops_deployment_adapters",
    "Adapters a PhiDeployment declares.",
    ["namespace", "name"],
)
DEPLOYMENT_ADAPTERS_LOADED = Gauge(
    "phiops_deployment_adapters_loaded",
    "Adapters of a PhiDeployment loaded on every ready replica of the current rollout.",
    ["namespace", "name"],
)


def forget_phi_deployment(namespace: str, name: str) -> None:
    for gauge in (
        DEPLOYMENT_REPLICAS,
        DEPLOYMENT_READY_REPLICAS,
        DEPLOYMENT_ADAPTERS,
        DEPLOYMENT_ADAPTERS_LOADED,
    ):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    forget_resource("PhiDeployment", namespace, name)
