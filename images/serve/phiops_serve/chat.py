"""`POST /v1/chat/completions`, whole or streamed (server-sent events), with citations of the
retrieved chunks when the server grounds answers in a knowledge base."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from typing import Any

from aiohttp import web

from phiops_serve.admission import ARRIVED, METRICS, MODEL
from phiops_serve.engine import (
    Completion,
    Engine,
    NotLoaded,
    PromptRejected,
    Sampling,
    UnknownModel,
)
from phiops_serve.errors import bad, model_not_found, unavailable
from phiops_serve.knowledge import KnowledgeUnavailable
from phiops_serve.rag import Augmenter, fitted
from phiops_serve.validation import json_body, parse_request

log = logging.getLogger(__name__)

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
AUGMENTER: web.AppKey[Augmenter] = web.AppKey("augmenter", Augmenter)


def _usage(done: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.total_tokens,
    }


class _Reply:
    """What every object of one answer shares: id, creation time, model, extra fields."""

    def __init__(self, model: str, extra: dict[str, Any]) -> None:
        self.ident = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.extra = extra

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.ident, "object": kind, "created": self.created, "model": self.model}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = await json_body(request)
    model, messages, sampling, stream = parse_request(body, engine.config.max_new_tokens)
    if model not in engine.states:
        raise model_not_found(model)
    request[MODEL] = model
    try:
        engine.require(model)
        grounding = await request.app[AUGMENTER].prepare(messages)
    except (NotLoaded, KnowledgeUnavailable) as err:
        raise unavailable(str(err)) from None
    completion = min(sampling.max_tokens, engine.config.max_new_tokens)
    ids, grounding = fitted(grounding, engine.tokens, engine.room, completion)
    if grounding.dropped:
        request.app[METRICS].context_dropped.labels(model).inc(grounding.dropped)
    try:  # too long is a 400 now, before a stream's headers
        engine.checked(ids)
    except PromptRejected as err:
        raise bad("messages", str(err)) from None
    cited = grounding.citations  # a property: built once
    extra = {} if cited is None else {"citations": cited}
    reply = _Reply(model, extra)
    if stream:
        return await _stream(request, engine, reply, ids, sampling, body)
    try:
        done = await engine.complete(model, ids, sampling)
    except (NotLoaded, UnknownModel) as err:  # unloaded while retrieval ran
        raise unavailable(str(err)) from None
    except PromptRejected as err:
        raise bad("messages", str(err)) from None
    _account(request, model, done)
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": done.text},
        "finish_reason": done.finish_reason,
        "logprobs": None,
    }
    answer = {**reply.head("chat.completion"), "choices": [choice], "usage": _usage(done)}
    return web.json_response({**answer, **reply.extra})


def _account(request: web.Request, model: str, done: Completion) -> None:
    metrics, arrived = request.app[METRICS], request[ARRIVED]
    metrics.completion(model, arrived, done)
    metrics.duration.labels(model).observe(time.monotonic() - arrived)


async def _stream(
    request: web.Request,
    engine: Engine,
    reply: _Reply,
    ids: list[int],
    sampling: Sampling,
    body: dict[str, Any],
) -> web.StreamResponse:
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)

    async def send(data: dict[str, Any]) -> None:
        await response.write(f"data: {json.dumps(data)}\n\n".encode())

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        data = {**reply.head("chat.completion.chunk"), "choices": [choice]}
        return {**data, "usage": None} if include_usage else data

    usage = Completion()
    try:
        # The first chunk carries the citations: clients can show sources while text comes.
        await send({**chunk({"role": "assistant", "content": ""}, None), **reply.extra})
        async with contextlib.aclosing(engine.stream(reply.model, ids, sampling, usage)) as pieces:
            async for piece in pieces:
                await send(chunk({"content": piece}, None))
        await send(chunk({}, usage.finish_reason))
        if include_usage:
            await send(
                {**reply.head("chat.completion.chunk"), "choices": [], "usage": _usage(usage)}
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        # Leaving the `aclosing` block aborted the request in vLLM: its slot is free.
        log.info("the client left a streamed answer; generation stopped")
        return response
    except Exception as err:  # headers are sent: report in the stream, as OpenAI does
        log.exception("streaming failed")
        error = {"message": str(err), "type": "server_error", "param": None, "code": None}
        with contextlib.suppress(ConnectionResetError):
            await send({"error": error})
            await response.write(b"data: [DONE]\n\n")
        return response
    _account(request, reply.model, usage)
    return response
