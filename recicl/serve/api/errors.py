"""Error responses: every error is JSON ``{"error": code, "detail": text naming the field}``.

4xx for bad input (400 malformed JSON, 401/403/404 admin auth, 403 a model not in
``serve.selectable_models``, 404 unknown route/model, 405, 413 body too large, 415 not JSON,
422 validation/unknown items, 429 over a rate or quota of ``serve.access`` with
``Retry-After``); 5xx only for server faults (500), no model loaded yet or a version
that returned scores that are not probabilities (503), the interaction store unreachable (503
with ``Retry-After``), or the model registry unreachable for a ``model`` reference it never
answered (503 ``registry_unavailable`` with ``Retry-After``; a last known answer is served), or
the model replicas' queues full (503 ``overloaded`` with ``Retry-After``: Serve's load shedding).
Handlers here turn FastAPI's and Starlette's own errors into that shape, so a client parses one
format whatever went wrong.

Server faults are logged with their exception and answered without it: a store's or a library's
message names hosts, paths and URLs (a Redis URL may hold its password), which are the operator's
business, not the client's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from recicl.serve.registry_cache import REGISTRY_RETRY_AFTER_SECONDS, RegistryUnavailableError
from recicl.serve.store import StoreUnavailableError

log = logging.getLogger("recicl.serve")

#: ``Retry-After`` (seconds) of a 503 for an unreachable interaction store: long enough for a
#: Redis failover or a restarted pod, short enough that clients come back soon after.
STORE_RETRY_AFTER_SECONDS = 5

#: Error codes of plain HTTP statuses (routes raise more specific ones through ApiError).
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    """An error response: ``{"error": code, "detail": ...}`` (plus ``extra``) with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra
        self.headers = headers  # e.g. Retry-After of a 429

    def response(self) -> JSONResponse:
        body = error_body(self.code, self.detail, **self.extra)
        return JSONResponse(body, self.status, headers=self.headers)


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, **extra}


def field_error(where: str, message: str) -> ApiError:
    """A 422 about one field, in the shape pydantic's errors are reported in."""
    return ApiError(
        422,
        "validation_error",
        f"{where}: {message}",
        fields=[{"field": where, "message": message}],
    )


def field_path(loc: Sequence[Any]) -> str:
    """``("body", "history", 0, "label")`` → ``history[0].label`` (``body`` for the root)."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_error(problems: Sequence[Any]) -> ApiError:
    """422 naming the fields of pydantic errors (locations below ``body``)."""
    fields = [{"field": field_path(p.get("loc", ())), "message": p["msg"]} for p in problems]
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    if len(fields) > 5:
        detail += f"; and {len(fields) - 5} more"
    return ApiError(422, "validation_error", detail, fields=fields[:50])


def allowed_methods(request: Request) -> str:
    """The ``Allow`` header of a 405: the methods of every route on the request's path.

    Starlette's own names only the first route it tried, so on a path served by two routes
    (``PUT`` and ``DELETE /admin/traffic``) it left methods out (RFC 9110: list them all)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON ``{error, detail}``; never a 500 for bad input."""

    async def api_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return error.response()

    async def request_validation(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return validation_error(list(error.errors())).response()

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        detail = error.detail if isinstance(error.detail, str) else json.dumps(error.detail)
        if error.status_code == 404 and detail == "Not Found":
            detail = f"path: no route {request.method} {request.url.path} (see /docs)"
        headers = getattr(error, "headers", None)
        if error.status_code == 405:
            detail = f"method: {request.method} is not allowed on {request.url.path}"
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        fallback = "error" if error.status_code >= 500 else "bad_request"
        code = STATUS_CODES.get(error.status_code, fallback)
        return JSONResponse(
            error_body(code, detail), status_code=error.status_code, headers=headers
        )

    async def store_unavailable(request: Request, error: Exception) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, error)  # the cause: here only
        detail = (
            f"the interaction store is unavailable; retry after {STORE_RETRY_AFTER_SECONDS} "
            "seconds (a retried event is stored once, however often it is sent)"
        )
        return JSONResponse(
            error_body("store_unavailable", detail),
            status_code=503,
            headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
        )

    async def registry_unavailable(request: Request, error: Exception) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, error)  # the cause: here only
        detail = (
            "model: the model registry cannot be reached to resolve this reference; retry "
            f"after {REGISTRY_RETRY_AFTER_SECONDS} seconds (requests without `model` are served)"
        )
        return JSONResponse(
            error_body("registry_unavailable", detail),
            status_code=503,
            headers={"Retry-After": str(REGISTRY_RETRY_AFTER_SECONDS)},
        )

    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        detail = "internal error: the server logged it; report the time and the X-Request-ID"
        return JSONResponse(error_body("internal_error", detail), status_code=500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StoreUnavailableError, store_unavailable)
    app.add_exception_handler(RegistryUnavailableError, registry_unavailable)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
