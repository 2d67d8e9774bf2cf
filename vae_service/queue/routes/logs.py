"""GET /jobs/{id}/logs: a job's output, read from Ray (the current attempt's: a job resumed
after a preemption is a new Ray job). A page of bytes (X-Log-Offset, X-Log-Size), the last N
lines, or the stream until the job ends. At most RAY_CALLS reads per server wait on Ray; the
rest are answered 503 at once (service.py)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from vae_service.core.errors import one_line
from vae_service.queue.auth import Identity
from vae_service.queue.ray_jobs import RayUnavailable
from vae_service.queue.routes.errors import INVALID, NOT_FOUND, UNAUTHORIZED, Message
from vae_service.queue.routes.service import RAY_CALLS, Service, identity, service
from vae_service.queue.states import TERMINAL, State

LOG_POLL_S = 0.5
DEFAULT_LOG_BYTES = 1024 * 1024  # the last MiB unless asked otherwise
MAX_LOG_BYTES = 8 * 1024 * 1024
MAX_TAIL_LINES = 100_000
TEXT = "text/plain; charset=utf-8"
BYTES_HEADER = {"schema": {"type": "string", "pattern": "^[0-9]+$"}}

router = APIRouter(tags=["logs"], responses={**UNAUTHORIZED, **INVALID})


def log_page(data: bytes, offset: Optional[int], limit: int) -> Response:
    """Bytes [offset, offset + limit) of a log; without an offset, its last `limit` bytes.
    X-Log-Offset says where the page starts and X-Log-Size how long the whole log is, so a
    client can page through it (next offset = X-Log-Offset + the page's length)."""
    start = max(0, len(data) - limit) if offset is None else min(offset, len(data))
    return Response(data[start:start + limit], media_type=TEXT,
                    headers={"X-Log-Offset": str(start), "X-Log-Size": str(len(data))})


@asynccontextmanager
async def ray_slot(server: Service):
    if server.ray_slots.locked():
        raise HTTPException(503, f"Ray is slow to answer: {RAY_CALLS} log reads are already waiting for it; "
                                 "try again later", headers={"Retry-After": "5"})
    async with server.ray_slots:
        yield


@router.get(
    "/jobs/{job_id}/logs", response_class=Response, summary="A job's output", operation_id="getJobLogs",
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}},
              "description": "The output (a page of it, its last lines, or a stream until the job ends).",
              "headers": {"X-Log-Offset": {"description": "The page's first byte (not with ?tail or ?follow).", **BYTES_HEADER},
                          "X-Log-Size": {"description": "The whole log's length in bytes (idem).", **BYTES_HEADER}}},
        404: {**NOT_FOUND[404], "description": "No such job (or one the caller may not see), or Ray has no logs for it."},
        503: {"model": Message, "description": "No Ray to read from, Ray does not answer, or too many reads "
                                               "already wait for it; the job store is unavailable."}})
async def logs(
    job_id: str,
    follow: bool = Query(False, description="Stream the output until the job ends."),
    tail: Optional[int] = Query(None, ge=1, le=MAX_TAIL_LINES, description="Only the last N lines."),
    offset: Optional[int] = Query(None, ge=0, description="First byte to return (default: the last `limit` bytes)."),
    limit: int = Query(DEFAULT_LOG_BYTES, ge=1, le=MAX_LOG_BYTES, description="At most this many bytes."),
    caller: Identity = Depends(identity),
    server: Service = Depends(service),
):
    job = await run_in_threadpool(server.visible_job, job_id, caller)
    if server.ray is None:
        raise HTTPException(503, "this server has no Ray address: logs are unavailable")
    if follow:
        return StreamingResponse(_follow(server, job_id), media_type=TEXT)
    text = ""
    if job.submitted_at is not None:
        attempt = job.ray_job_id  # the current attempt's: a resumed job is a new Ray job
        async with ray_slot(server):
            if tail is not None:
                text = await run_in_threadpool(server.ray.tail_lines, attempt, tail)
            else:
                text = await run_in_threadpool(server.ray.logs, attempt)
        if text is None:
            raise HTTPException(404, f"Ray has no logs for job {job_id}")
    if tail is not None:  # lines from the end: no byte offsets to page by
        return Response(text.encode("utf-8")[-limit:], media_type=TEXT)
    return log_page(text.encode("utf-8"), offset, limit)


async def _follow(server: Service, job_id: str) -> AsyncIterator[str]:
    # Wait until Ray has the job (or it ends without ever running), then stream its output.
    while True:
        job = await run_in_threadpool(server.store.get, job_id)
        attempt = job.ray_job_id
        if job.submitted_at is not None and not server.ray_slots.locked():
            try:
                async with server.ray_slots:
                    if await run_in_threadpool(server.ray.info, attempt) is not None:
                        break
            except RayUnavailable:
                pass
        if State(job.state) in TERMINAL:
            return
        await asyncio.sleep(LOG_POLL_S)
    try:
        async for chunk in server.ray.tail(attempt):
            yield chunk
    except Exception as exc:  # the head went away mid-stream: say so in the stream
        yield f"\n[log stream ended: {one_line(exc, 200)}]\n"
