"""Request bodies checked and turned into typed values; a 400 names the bad parameter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from phiops_serve.engine import Message, Sampling
from phiops_serve.errors import bad

MAX_TOP_K = 100


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError as err:
        raise bad("body", f"the request body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise bad("body", "the request body must be a JSON object")
    return body


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(name, f"'{name}' must be a number")
    if not low <= value <= high:
        raise bad(name, f"'{name}' must be between {low} and {high}, got {value}")
    return float(value)


def _flag(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad(name, f"'{name}' must be a boolean")
    return value


def _content(message: Any, index: int) -> Message:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise bad(param, f"'{param}' must be an object with a 'role'")
    role, content = message["role"], message.get("content")
    if role not in ("system", "user", "assistant", "developer"):
        raise bad(f"{param}.role", f"unsupported role '{role}'")
    if isinstance(content, list):  # content parts: only text is understood
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise bad(f"{param}.content", "only text content parts are supported")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    if not isinstance(content, str):
        raise bad(f"{param}.content", f"'{param}.content' must be a string")
    return {"role": "system" if role == "developer" else role, "content": content}


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    raise bad("stop", "'stop' must be a string or an array of up to 4 strings")


def parse_request(body: Any, default_max: int) -> tuple[str, list[Message], Sampling, bool]:
    """The model, messages, sampling and `stream` of a chat completion request."""
    if not isinstance(body, dict):
        raise bad("body", "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "'model' is required")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("messages", "'messages' must be a non-empty array")
    messages = [_content(m, i) for i, m in enumerate(raw)]
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise bad("top_p", "'top_p' must be greater than 0")
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    limit = body.get(name)
    if limit is None:
        limit = default_max
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise bad(name, f"'{name}' must be a positive integer")
    if body.get("n", 1) != 1:
        raise bad("n", "only n=1 is supported")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad("seed", "'seed' must be an integer")
    stream = _flag(body, "stream") or False
    # `ignore_eos` (as in vLLM): run to max_tokens; benchmarks use it for fixed-length output.
    ignore_eos = _flag(body, "ignore_eos") or False
    sampling = Sampling(limit, temperature, top_p, _stops(body), seed, ignore_eos)
    return model, messages, sampling, stream


@dataclass(frozen=True)
class RetrieveRequest:
    query: str
    top_k: int | None
    score_threshold: float | None
    hybrid: bool | None
    """None: the server's configured value."""


def parse_retrieve(body: dict[str, Any]) -> RetrieveRequest:
    """The body of `POST /v1/retrieve`."""
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise bad("query", "'query' must be a non-empty string")
    top_k = body.get("top_k")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K
    ):
        raise bad("top_k", f"'top_k' must be an integer between 1 and {MAX_TOP_K}")
    threshold = body.get("score_threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float)
    ):
        raise bad("score_threshold", "'score_threshold' must be a number")
    unknown = sorted(set(body) - {"query", "top_k", "score_threshold", "hybrid"})
    if unknown:
        raise bad(unknown[0], f"unknown parameter '{unknown[0]}'")
    score = None if threshold is None else float(threshold)
    return RetrieveRequest(query, top_k, score, _flag(body, "hybrid"))
