"""Admission and accounting of API requests: at most `max_concurrent_requests` completions
and retrievals at once (more get 429 at once rather than queueing without bound), and every
/v1 request counted by model, endpoint and status code."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from phiops_serve.errors import rate_limited
from phiops_serve.metrics import Metrics


@dataclass
class Gate:
    limit: int
    admitted: int = 0


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
GATE: web.AppKey[Gate] = web.AppKey("gate", Gate)
# Endpoints that hold the model or the knowledge base; listing models is always let in.
LIMITED = frozenset({"/v1/chat/completions", "/v1/retrieve"})
# Set by handlers once the request names a served model (a label of bounded cardinality).
MODEL: web.RequestKey[str] = web.RequestKey("model", str)
ARRIVED: web.RequestKey[float] = web.RequestKey("arrived", float)


def _endpoint(request: web.Request) -> str | None:
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else None
    return path if path is not None and path.startswith("/v1/") else None


@web.middleware
async def admission(request: web.Request, handler: Any) -> web.StreamResponse:
    request[ARRIVED] = time.monotonic()
    endpoint = _endpoint(request)
    if endpoint is None:  # health, readiness, metrics, unknown paths: not accounted
        response: web.StreamResponse = await handler(request)
        return response
    metrics, gate = request.app[METRICS], request.app[GATE]
    limited = endpoint in LIMITED
    if limited and gate.admitted >= gate.limit:
        response = rate_limited(gate.limit).response()
    elif limited:
        gate.admitted += 1
        metrics.in_flight.inc()
        try:
            response = await handler(request)
        finally:
            gate.admitted -= 1
            metrics.in_flight.dec()
    else:
        response = await handler(request)
    metrics.requests.labels(request.get(MODEL, ""), endpoint, str(response.status)).inc()
    return response
