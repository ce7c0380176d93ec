"""The OpenAI-compatible HTTP API: /v1/models, /v1/chat/completions, /healthz, /readyz."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from aiohttp import web

from phiops_serve.engine import Completion, Engine, Message, Sampling, UnknownModel
from phiops_serve.rag import Augmenter

log = logging.getLogger(__name__)

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
AUGMENTER: web.AppKey[Augmenter | None] = web.AppKey("augmenter")
CREATED = int(time.time())


class ApiError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type_, param, code

    def response(self) -> web.Response:
        body = {"message": str(self), "type": self.type, "param": self.param, "code": self.code}
        return web.json_response({"error": body}, status=self.status)


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name, f"'{name}' must be a number")
    if not low <= value <= high:
        raise _bad(name, f"'{name}' must be between {low} and {high}, got {value}")
    return float(value)


def _content(message: Any, index: int) -> Message:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise _bad(param, f"'{param}' must be an object with a 'role'")
    role, content = message["role"], message.get("content")
    if role not in ("system", "user", "assistant", "developer"):
        raise _bad(f"{param}.role", f"unsupported role '{role}'")
    if isinstance(content, list):  # content parts: only text is understood
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad(f"{param}.content", "only text content parts are supported")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    if not isinstance(content, str):
        raise _bad(f"{param}.content", f"'{param}.content' must be a string")
    return {"role": "system" if role == "developer" else role, "content": content}


def parse_request(body: Any, default_max: int) -> tuple[str, list[Message], Sampling, bool]:
    """The model, messages, sampling and `stream` of a chat completion request."""
    if not isinstance(body, dict):
        raise _bad("body", "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "'model' is required")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "'messages' must be a non-empty array")
    messages = [_content(m, i) for i, m in enumerate(raw)]
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise _bad("top_p", "'top_p' must be greater than 0")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if limit is None:
        limit = default_max
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise _bad(name, f"'{name}' must be a positive integer")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise _bad("stop", "'stop' must be a string or an array of up to 4 strings")
    n = body.get("n", 1)
    if n != 1:
        raise _bad("n", "only n=1 is supported")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("seed", "'seed' must be an integer")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "'stream' must be a boolean")
    sampling = Sampling(limit, temperature, top_p, stops, seed)
    return model, messages, sampling, stream


def _usage(done: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.total_tokens,
    }


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as err:
        return err.response()
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return ApiError(err.status, err.reason, type_="invalid_request_error").response()
    except Exception:
        log.exception("request failed")
        return ApiError(500, "internal server error", type_="server_error").response()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    wanted = [engine.base_name, *engine.adapter_names]
    body = {"ready": engine.ready, "loaded": [m for m in wanted if m in engine.loaded]}
    return web.json_response(body, status=200 if engine.ready else 503)


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


async def chat_completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    try:
        body = await request.json()
    except json.JSONDecodeError as err:
        raise _bad("body", f"the request body is not JSON: {err}") from None
    model, messages, sampling, stream = parse_request(body, engine.config.max_new_tokens)
    if model != engine.base_name and model not in engine.adapter_names:
        message = f"The model '{model}' does not exist"
        raise ApiError(404, message, param="model", code="model_not_found")
    if not engine.ready:
        raise ApiError(503, "the model is still loading", type_="server_error")
    augmenter = request.app.get(AUGMENTER)
    if augmenter is not None:
        messages = await augmenter.augment(messages)
    elif engine.config.system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": engine.config.system_prompt}, *messages]
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if stream:
        return await _stream(request, engine, ident, created, model, messages, sampling, body)
    try:
        done = await engine.complete(model, messages, sampling)
    except UnknownModel:
        raise ApiError(
            404, f"The model '{model}' does not exist", param="model", code="model_not_found"
        ) from None
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": done.text},
        "finish_reason": done.finish_reason,
        "logprobs": None,
    }
    return web.json_response(
        {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": _usage(done),
        }
    )


async def _stream(
    request: web.Request,
    engine: Engine,
    ident: str,
    created: int,
    model: str,
    messages: list[Message],
    sampling: Sampling,
    body: dict[str, Any],
) -> web.StreamResponse:
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)

    async def send(delta: dict[str, Any], finish: str | None, **extra: Any) -> None:
        chunk: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

    usage = Completion()
    await send({"role": "assistant", "content": ""}, None)
    try:
        async for piece in engine.stream(model, messages, sampling, usage):
            await send({"content": piece}, None)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as err:
        log.exception("streaming failed")
        error = {"message": str(err), "type": "server_error", "param": None, "code": None}
        await response.write(f"data: {json.dumps({'error': error})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response
    await send({}, usage.finish_reason)
    if include_usage:
        chunk = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(usage),
        }
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def create_app(
    engine: Engine, augmenter: Augmenter | None = None, load: bool = True
) -> web.Application:
    """The aiohttp application; with `load`, the model loads in the background at startup
    (so /healthz answers while it does, and /readyz turns 200 once everything is in)."""
    app = web.Application(middlewares=[errors])
    app[ENGINE] = engine
    app[AUGMENTER] = augmenter
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat_completions)

    if load:

        async def start_loading(app: web.Application) -> None:
            future = asyncio.get_running_loop().run_in_executor(None, engine.load)
            future.add_done_callback(_log_load_failure)
            app[LOADING] = future

        app.on_startup.append(start_loading)
    return app


def _log_load_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("loading the model failed: %s", future.exception())


LOADING: web.AppKey[asyncio.Future[None]] = web.AppKey("loading")
