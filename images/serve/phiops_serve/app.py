"""The HTTP application: routes, and the background start of the models and the knowledge
base (the server answers /healthz at once; /readyz turns 200 once everything is in)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from phiops_workload.serving import ServeConfig

from phiops_serve.admission import GATE, METRICS, Gate, admission
from phiops_serve.chat import AUGMENTER, ENGINE, chat_completions
from phiops_serve.engine import Engine
from phiops_serve.errors import errors
from phiops_serve.knowledge import RETRY_SECONDS, KnowledgeBase
from phiops_serve.metrics import Metrics
from phiops_serve.rag import Augmenter
from phiops_serve.retrieve import KNOWLEDGE, retrieve

log = logging.getLogger(__name__)

CREATED = int(time.time())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 once the base, every adapter and the knowledge base (if any) are ready; the body
    says what is missing and why."""
    engine, knowledge = request.app[ENGINE], request.app[KNOWLEDGE]
    ready = engine.ready and (knowledge is None or knowledge.ready)
    body = {
        "ready": ready,
        "models": [state.report() for state in engine.states.values()],
        "loaded": [name for name, state in engine.states.items() if state.loaded],
        "retrieval": None if knowledge is None else knowledge.report(),
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render(request.app[ENGINE].states.values())
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def list_models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]

    def card(name: str, parent: str | None) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": CREATED,
            "owned_by": "phiops",
            "parent": parent,
        }

    data = [card(engine.base_name, None)]
    data += [card(name, engine.base_name) for name in engine.adapter_names]
    return web.json_response({"object": "list", "data": data})


def create_app(
    config: ServeConfig, load: bool = True, retry_seconds: float = RETRY_SECONDS
) -> web.Application:
    """The application for `config`; with `load`, the models load and the knowledge base
    opens in the background once the server starts (`retry_seconds` between attempts)."""
    app = web.Application(middlewares=[admission, errors])
    engine = Engine(config)
    app[METRICS] = metrics_ = Metrics()
    knowledge = None
    if config.retrieval is not None:
        knowledge = KnowledgeBase(config.retrieval, retry_seconds, metrics_.retrieval.observe)
    app[ENGINE] = engine
    app[KNOWLEDGE] = knowledge
    app[AUGMENTER] = Augmenter(config, knowledge)
    app[GATE] = Gate(config.max_concurrent_requests)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/retrieve", retrieve)
    if load:
        app.cleanup_ctx.append(_background_start)
    return app


async def _background_start(app: web.Application) -> AsyncIterator[None]:
    # Engine.load records its failures in the models' states: nothing to await.
    asyncio.get_running_loop().run_in_executor(None, app[ENGINE].load)
    knowledge = app[KNOWLEDGE]
    opening = asyncio.create_task(knowledge.open()) if knowledge is not None else None
    yield
    if opening is not None:
        opening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opening
    if knowledge is not None:
        knowledge.close()
