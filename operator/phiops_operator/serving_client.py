"""The operator's side of the inference server's HTTP API: `/readyz` on the API port, the
adapter calls on the admin port (`PUT`/`DELETE /v1/adapters/{name}`). Best effort with short
timeouts: an unreachable pod tells nothing and is asked again at the next reconcile."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp
from phiops_workload.serving import AdapterConfig

from phiops_operator.adapter_sync import ModelReport, parse_model, parse_models

READYZ_TIMEOUT_SECONDS = 2.0
# A load reads the adapter from its volume into the engine: seconds, not minutes. One that
# takes longer is seen in /readyz (being loaded) at the next reconcile.
ADMIN_TIMEOUT_SECONDS = 10.0

_Errors = (TimeoutError, aiohttp.ClientError, ValueError)


def _url(ip: str, port: int, path: str) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{path}"


def _adapter_path(name: str) -> str:
    return f"/v1/adapters/{quote(name, safe='')}"


def _error_message(body: Any, status: int) -> str:
    """The message of an OpenAI-style error body, or the status code."""
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return str(message) if message else f"HTTP {status}"


def _describe(err: BaseException) -> str:
    return str(err) or type(err).__name__


async def _body(response: aiohttp.ClientResponse) -> Any:
    """The JSON body, or None when there is none."""
    try:
        return json.loads(await response.text())
    except ValueError:
        return None


async def read_models(
    session: aiohttp.ClientSession, ip: str, port: int
) -> dict[str, ModelReport] | None:
    """The models a server reports in /readyz (whatever its status code: 503 while it
    loads); None when it does not answer with a report."""
    timeout = aiohttp.ClientTimeout(total=READYZ_TIMEOUT_SECONDS)
    try:
        async with session.get(_url(ip, port, "/readyz"), timeout=timeout) as response:
            body = await _body(response)
    except _Errors:
        return None
    return parse_models(body)


async def load(
    session: aiohttp.ClientSession, ip: str, port: int, adapter: AdapterConfig
) -> ModelReport:
    """Load or replace one adapter; the server's report of it afterwards, with an error when
    it could not be loaded (or the server not be asked). A load that takes longer than the
    timeout is reported as not loaded yet, without an error."""
    payload = {"path": adapter.path, "sha256": adapter.sha256, "source": adapter.source}
    timeout = aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_SECONDS)
    failed = ModelReport(adapter.name, loaded=False, sha256=adapter.sha256, path=adapter.path)
    try:
        url = _url(ip, port, _adapter_path(adapter.name))
        async with session.put(url, json=payload, timeout=timeout) as response:
            body = await _body(response)
            status = response.status
    except TimeoutError:
        return failed  # maybe still loading: the next /readyz tells
    except _Errors as err:
        return _with_error(failed, f"load request failed: {_describe(err)}")
    if status == 200:
        report = parse_model(body)
        if report is not None:
            return report
        return _with_error(failed, "the server's answer to the load is no model report")
    return _with_error(failed, _error_message(body, status))


async def unload(session: aiohttp.ClientSession, ip: str, port: int, name: str) -> str | None:
    """Unload one adapter; None when done (or it was not there), else what went wrong."""
    timeout = aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_SECONDS)
    try:
        url = _url(ip, port, _adapter_path(name))
        async with session.delete(url, timeout=timeout) as response:
            if response.status in (200, 204, 404):
                return None
            return _error_message(await _body(response), response.status)
    except _Errors as err:
        return f"unload request failed: {_describe(err)}"


def _with_error(report: ModelReport, error: str) -> ModelReport:
    return ModelReport(report.name, report.loaded, report.sha256, report.path, error)
