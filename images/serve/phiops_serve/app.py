"""The HTTP applications: the OpenAI-compatible API (with health, readiness and metrics),
the operator's adapter API on a port of its own, and the background start of the engine and
the knowledge base (the server answers /healthz at once; /readyz turns 200 once it serves)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from phiops_workload.serving import AdapterConfig, ServeConfig

from phiops_serve.admission import GATE, METRICS, Gate, admission
from phiops_serve.chat import AUGMENTER, ENGINE, chat_completions
from phiops_serve.engine import Engine, UnknownModel
from phiops_serve.errors import ApiError, bad, errors
from phiops_serve.knowledge import RETRY_SECONDS, KnowledgeBase
from phiops_serve.loading import LoadError
from phiops_serve.metrics import Metrics
from phiops_serve.rag import Augmenter
from phiops_serve.retrieve import KNOWLEDGE, retrieve

log = logging.getLogger(__name__)

CREATED = int(time.time())
START_ENGINE: web.AppKey[bool] = web.AppKey("start_engine", bool)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 once the engine serves the base, every startup adapter was tried (one that failed
    is reported, not waited for) and the knowledge base (if any) is ready; the body says
    what is missing and why."""
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
    """The server's own series, then vLLM's engine series (queue, KV cache, prefix cache,
    LoRA), which vLLM keeps in the process-wide registry."""
    body = request.app[METRICS].render(request.app[ENGINE].states.values(), engine=True)
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


async def put_adapter(request: web.Request) -> web.Response:
    """Load an adapter, or a new version of it, while serving (the operator calls this)."""
    engine, name = request.app[ENGINE], request.match_info["name"]
    body = await request.json() if request.can_read_body else {}
    if not isinstance(body, dict) or not isinstance(body.get("path"), str):
        raise bad("path", "'path' (the adapter folder) is required")
    try:
        adapter = AdapterConfig(
            name=name, path=body["path"], sha256=body.get("sha256"), source=body.get("source")
        )
    except ValueError as err:
        raise bad("body", str(err)) from None
    try:
        state = await engine.load_adapter(adapter)
    except LoadError as err:
        raise ApiError(422, str(err), param="path", code="adapter_not_loaded") from None
    return web.json_response(state.report())


async def delete_adapter(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        await request.app[ENGINE].unload_adapter(name)
    except UnknownModel:
        raise ApiError(404, f"no adapter '{name}'", param="name", code="model_not_found") from None
    return web.json_response({"name": name, "unloaded": True})


def create_admin_app(engine: Engine) -> web.Application:
    """Adapter loading for the operator, on `admin_port` (not behind the Service)."""
    app = web.Application(middlewares=[errors])
    app[ENGINE] = engine
    app.router.add_put("/v1/adapters/{name}", put_adapter)
    app.router.add_delete("/v1/adapters/{name}", delete_adapter)
    return app


def create_app(
    config: ServeConfig,
    load: bool = True,
    retry_seconds: float = RETRY_SECONDS,
    engine: Engine | None = None,
    start_engine: bool = True,
) -> web.Application:
    """The API application for `config`; with `load`, the engine starts (unless not
    `start_engine`: retrieval alone) and the knowledge base opens in the background once the
    server starts (`retry_seconds` between tries)."""
    app = web.Application(middlewares=[admission, errors])
    if engine is None:
        engine = Engine(config, work_dir_for(config))
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
        app[START_ENGINE] = start_engine
        app.cleanup_ctx.append(_background_start)
    return app


def work_dir_for(config: ServeConfig) -> Path:
    """The engine's writable folder: `work_dir`, else a new temporary one."""
    if config.work_dir is None:
        return Path(tempfile.mkdtemp(prefix="phiops-serve-"))
    path = Path(config.work_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _import_heavy(engine: bool, knowledge: bool) -> None:
    """Import what the engine and the knowledge base need, in one thread: importing the same
    packages (transformers, accelerate) from two threads at once can fail with 'partially
    initialized module' errors."""
    import importlib

    modules = ["transformers", "transformers.modeling_utils"]
    if engine:
        modules += ["vllm", "vllm.engine.arg_utils", "vllm.v1.engine.async_llm", "vllm.platforms"]
    if knowledge:
        modules += ["sentence_transformers", "phiops_embed.embedder", "phiops_embed.retrieval"]
    for module in modules:
        importlib.import_module(module)


async def _start(app: web.Application) -> None:
    """Start the engine and open the knowledge base; each records its own failures."""
    engine, knowledge = app[ENGINE], app[KNOWLEDGE]
    start_engine = app[START_ENGINE]
    await asyncio.to_thread(_import_heavy, start_engine, knowledge is not None)
    starts = [engine.start()] if start_engine else []
    if knowledge is not None:
        starts.append(knowledge.open())
    await asyncio.gather(*starts)


async def _background_start(app: web.Application) -> AsyncIterator[None]:
    # In a task: the server listens (and answers /healthz) from the first second.
    starting = asyncio.create_task(_start(app))
    yield
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    app[ENGINE].shutdown()
    knowledge = app[KNOWLEDGE]
    if knowledge is not None:
        knowledge.close()
