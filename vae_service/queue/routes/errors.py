"""The API's error bodies, how each is documented in the OpenAPI document, and the handlers
that turn the queue's exceptions into them.

    {"detail": "why"}                                           401, 403, 404, 409, 413, 503
    {"detail": [{"loc": [...], "path": "a.b", "msg": "why", "line": N or null}, ...]}   422

Every 422 has the second shape: a spec's problems (`path` a field of the spec, `line` where it
is in the YAML) and FastAPI's own request validation alike (`loc` starts with where the bad
value was: query, header, path; `path` names the parameter).
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from vae_service.core.errors import one_line
from vae_service.queue.ray_jobs import RayUnavailable
from vae_service.queue.states import IllegalTransition
from vae_service.queue.store import UnknownJob

log = logging.getLogger("vae_service.queue.api")

REQUEST_PARTS = {"query", "header", "path", "cookie", "body"}


class Message(BaseModel):
    """Why a request failed, in one line."""

    detail: str


class Problem(BaseModel):
    """One thing wrong with the request: where (`loc`, `path`), what (`msg`), at which line of
    the spec's YAML (`line`, when it is in the spec)."""

    loc: list[Union[str, int]]
    path: str
    msg: str
    line: Optional[int]


class Problems(BaseModel):
    """Everything wrong with the request (422)."""

    detail: list[Problem]


def problem_response(problems: Iterable[tuple[str, str, Optional[int]]]) -> JSONResponse:
    """422 for (path, reason, line) triples; a path's `loc` is its dotted parts."""
    detail = [{"loc": path.split(".") if path else [], "path": path, "msg": msg, "line": line}
              for path, msg, line in problems]
    return JSONResponse({"detail": detail}, status_code=422)


def _described(model, description: str, **extra) -> dict:
    return {"model": model, "description": description, **extra}


# The documentation of each error answer, for routes' and routers' `responses=`.
UNAUTHORIZED = {401: _described(Message, "No valid bearer token.", headers={
    "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}})}
NOT_FOUND = {404: _described(Message, "No such job, or one the caller may not see (the same answer for both).")}
CONFLICT = {409: _described(Message, "The job has finished: its state cannot change any more.")}
INVALID = {422: _described(Problems, "The request's parameters or spec are invalid (each problem named).")}
STORE_DOWN = {503: _described(Message, "The job store is unavailable; retry (with the same Idempotency-Key).",
                              headers={"Retry-After": {"description": "Seconds", "schema": {"type": "string"}}})}


def forbidden(description: str) -> dict:
    return {403: _described(Message, description)}


async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for error in exc.errors():
        loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
        named = loc[1:] if loc and loc[0] in REQUEST_PARTS else loc
        problems.append({"loc": loc, "path": ".".join(map(str, named)), "msg": str(error.get("msg", "invalid")),
                         "line": None})
    return JSONResponse({"detail": problems}, status_code=422)


async def _store_down(request: Request, exc: DBAPIError) -> JSONResponse:
    # A connection lost mid-request (database restarted, pg_terminate_backend): the
    # transaction was rolled back or, at worst, committed unacknowledged; a client that
    # retries with its Idempotency-Key gets the same job either way.
    log.warning("job store error on %s %s: %s", request.method, request.url.path, one_line(exc.orig or exc, 200))
    return JSONResponse({"detail": "the job store is unavailable; retry (with the same Idempotency-Key)"},
                        status_code=503, headers={"Retry-After": "1"})


async def _http_error(request: Request, exc: StarletteHTTPException):
    """FastAPI's answer, except that a 405's Allow names the methods of every route at this
    path: Starlette names those of the first (OPTIONS /jobs said `Allow: POST`, not GET)."""
    if exc.status_code == 405:
        methods = {method for route in iter_route_contexts(request.app.routes) if route.methods
                   and route.matches(request.scope)[0] is not Match.NONE for method in route.methods}
        if methods:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_exception_handler(request, exc)


def _message(status: int):
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)
    return handler


def install_error_handlers(app: FastAPI) -> None:
    # async handlers: answered on the event loop, even when every thread of the pool is busy
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(UnknownJob, _message(404))
    app.add_exception_handler(IllegalTransition, _message(409))
    app.add_exception_handler(RayUnavailable, _message(503))
    app.add_exception_handler(DBAPIError, _store_down)
