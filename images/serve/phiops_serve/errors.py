"""Errors in OpenAI's format: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


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

    def body(self) -> dict[str, Any]:
        return {"message": str(self), "type": self.type, "param": self.param, "code": self.code}

    def response(self) -> web.Response:
        return web.json_response({"error": self.body()}, status=self.status)


def bad(param: str, message: str) -> ApiError:
    """400 naming the offending parameter."""
    return ApiError(400, message, param=param, code="invalid_value")


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404, f"The model '{model}' does not exist", param="model", code="model_not_found"
    )


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, type_="server_error", code="service_unavailable")


def rate_limited(limit: int) -> ApiError:
    # OpenAI answers overload with type "requests" and this code; clients back off on 429.
    message = f"Too many requests: this server handles at most {limit} at once, retry later"
    return ApiError(429, message, type_="requests", code="rate_limit_exceeded")


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure, ours or aiohttp's (404, 405...), leaves as an OpenAI error object."""
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
