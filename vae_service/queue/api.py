"""The HTTP API (FastAPI). Every route but /healthz needs `Authorization: Bearer <token>`
(auth.py); the OpenAPI description is served at /docs and /openapi.json (no data there; the
"Authorize" button takes the token for trying the routes).

    POST /jobs                 body: a job spec, YAML or JSON (≤ 1 MiB); ?priority=N&set=a.b=c
                               Idempotency-Key header: the same key (from the same user) returns
                               the same job (200)
    GET  /jobs                 ?state=queued&limit=50&offset=0, newest first; the caller's own jobs
                               (admins: everyone's, or ?user=NAME)
    GET  /jobs/{id}            one job, with its spec (and its place in the queue, why it waits)
    GET  /jobs/{id}/logs       the last MiB of its output; ?offset=B&limit=N bytes from byte B (N ≤ 8 MiB;
                               headers X-Log-Offset, X-Log-Size), ?tail=N the last N lines,
                               ?follow=true streams until the job ends; 503 at once when Ray is
                               slow (4 log reads per server wait on Ray at most, each ≤ its timeout)
    POST /jobs/{id}/cancel     queued → cancelled; submitted/running → cancelling (then Ray stops it)
    POST /jobs/{id}/priority   ?priority=N: admins only (403 for others); a queued job moves in
                               line, a running one may now preempt or be preempted
    GET  /healthz              no token; 200 when the store answers
    GET  /metrics              Prometheus text
    GET  /ui                   a web page over these routes (ui.py; no token to load it, the page asks)

Who may do what (policy.py): a job is seen, cancelled and its logs read by its owner or an admin
(anyone else gets 404, as for a job that does not exist); a submission is checked against the
server's limits (priority: 403; protected alias, register names, storage and data locations, a
request larger than the user quota: 422 naming the field) before anything is stored. So is a
job one of whose workers no node of the Ray cluster could ever hold (422 naming the resources
field and the largest node): "no node" counts the nodes Ray remembers as dead, which may come
back; without an answer from Ray the job is queued unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, List, Optional

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from vae_service.core.errors import one_line
from vae_service.core.resources import larger_than_any_node, preemptible, requested_bundles, requested_resources
from vae_service.core.spec_loading import MAX_SPEC_BYTES, SpecError, dump_spec, load_spec_text
from vae_service.core.sweep_spec import MAX_GRID_POINTS
from vae_service.jobs.locations import queued_run_dir
from vae_service.queue import metrics
from vae_service.queue.auth import Identity, TokenSet
from vae_service.queue.policy import Policy
from vae_service.queue.quotas import Quota
from vae_service.queue.ray_jobs import RayJobs, RayUnavailable
from vae_service.queue.settings import QUEUED_MAX_FAILURES, Settings
from vae_service.queue.states import TERMINAL, IllegalTransition, State
from vae_service.queue.store import NewJob, Store, UnknownJob, new_job_id
from vae_service.queue.ui import job_links, mount_ui

log = logging.getLogger("vae_service.queue.api")

MAX_BODY_BYTES = MAX_SPEC_BYTES  # 1 MiB
MAX_OFFSET = 10**9  # GET /jobs paging: beyond any real queue, and within every database's integers
LOG_POLL_S = 0.5
DEFAULT_LOG_BYTES = 1024 * 1024  # GET /jobs/{id}/logs: the last MiB unless asked otherwise
MAX_LOG_BYTES = 8 * 1024 * 1024
MAX_TAIL_LINES = 100_000
NODES_TTL_S = 10.0  # how long a submission trusts the node sizes the last one read from Ray
RAY_CALLS = 4  # Ray log reads in flight at once, per server
_bearer = HTTPBearer(auto_error=False, description="An API token (VAE_API_TOKEN or the server's token file).")


class BodyTooLarge(Exception):
    pass


async def require_token(request: Request, credentials: Optional[HTTPAuthorizationCredentials] = Depends(_bearer)) -> Identity:
    # async: a few microseconds of hashing, not worth a hop to the thread pool on every request
    identity = request.app.state.tokens.identify(credentials.credentials if credentials else None)
    if identity is None:
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return identity


async def read_capped(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refusing more than `limit` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def log_page(data: bytes, offset: Optional[int], limit: int) -> Response:
    """Bytes [offset, offset + limit) of a log; without an offset, its last `limit` bytes.
    X-Log-Offset says where the page starts and X-Log-Size how long the whole log is, so a
    client can page through it (next offset = X-Log-Offset + the page's length)."""
    start = max(0, len(data) - limit) if offset is None else min(offset, len(data))
    return Response(data[start:start + limit], media_type="text/plain; charset=utf-8",
                    headers={"X-Log-Offset": str(start), "X-Log-Size": str(len(data))})


def problems_response(problems) -> JSONResponse:
    detail = [{"loc": p.path.split(".") if p.path else [], "path": p.path, "msg": p.reason, "line": p.line} for p in problems]
    return JSONResponse({"detail": detail}, status_code=422)


def create_app(store: Store, tokens: TokenSet, ray: Optional[RayJobs] = None, dispatcher=None,
               leadership=None, storage_uri: Optional[str] = None, policy: Optional[Policy] = None,
               max_grid_points: int = MAX_GRID_POINTS, quota: Optional[Quota] = None,
               max_failures: int = QUEUED_MAX_FAILURES) -> FastAPI:
    """The API over `store`. With a `dispatcher` (and its `leadership`), the app runs it in a
    thread for its lifetime; `ray` serves the logs; `storage_uri` is where jobs whose spec names
    no storage keep their runs, `max_failures` the worker failures they recover from when it sets
    none; `policy` who may do what (default: from the VAE_ settings)."""
    wake = dispatcher.wake if dispatcher is not None else threading.Event()
    policy = policy or Policy.from_settings(Settings())
    quota = quota or Quota.from_settings(Settings())

    nodes_read: dict = {"at": -NODES_TTL_S, "nodes": None}

    def node_sizes() -> Optional[list[dict[str, float]]]:
        """Every node Ray knows, alive or dead (a dead one may be restarting); None without Ray."""
        if ray is not None and time.monotonic() - nodes_read["at"] > NODES_TTL_S:
            try:
                nodes_read["nodes"] = ray.nodes(include_dead=True)
            except RayUnavailable:
                nodes_read["nodes"] = None  # queued unchecked: the dispatcher waits for Ray anyway
            nodes_read["at"] = time.monotonic()
        return nodes_read["nodes"]

    def visible_job(job_id: str, identity: Identity):
        """The job, if this identity may see it; else UnknownJob, as if it did not exist."""
        job = store.get(job_id)
        if not policy.may_see(identity, job.submitted_by):
            raise UnknownJob(job_id)
        return job

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        thread = None
        if dispatcher is not None:
            thread = threading.Thread(target=dispatcher.run_forever, args=(stop, leadership), name="dispatcher", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            wake.set()
            if thread is not None:
                await run_in_threadpool(thread.join, 15)

    app = FastAPI(title="vae-service job queue", version="1", lifespan=lifespan,
                  description="Queue VAE training jobs (YAML job specs) to run on a Ray cluster.")
    app.state.store, app.state.tokens, app.state.ray = store, tokens, ray
    authed = [Depends(require_token)]
    settings = Settings(ray_address=ray.address) if ray is not None else Settings()  # the Ray it really uses
    mount_ui(app, settings)

    @app.exception_handler(UnknownJob)
    async def _unknown(request: Request, exc: UnknownJob):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(IllegalTransition)
    async def _illegal(request: Request, exc: IllegalTransition):
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(DBAPIError)
    async def _store_down(request: Request, exc: DBAPIError):
        # A connection lost mid-request (database restarted, pg_terminate_backend): the
        # transaction was rolled back or, at worst, committed unacknowledged; a client that
        # retries with its Idempotency-Key gets the same job either way.
        log.warning("job store error on %s %s: %s", request.method, request.url.path, one_line(exc.orig or exc, 200))
        return JSONResponse({"detail": "the job store is unavailable; retry (with the same Idempotency-Key)"},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(RayUnavailable)
    async def _no_ray(request: Request, exc: RayUnavailable):
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.post("/jobs", status_code=201, summary="Queue a job",
              responses={403: {"description": "A priority above the server's limit for non-admins."}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/yaml": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}}}}})
    async def submit(
        request: Request,
        identity: Identity = Depends(require_token),
        priority: int = Query(0, ge=-1_000_000, le=1_000_000, description="Higher runs first."),
        set_: List[str] = Query([], alias="set", description="Spec overrides a.b=c (value read as YAML)."),
        idempotency_key: Optional[str] = Header(None, max_length=200),
    ):
        refused = policy.priority_problem(identity, priority)
        if refused:
            return JSONResponse({"detail": refused}, status_code=403)
        try:
            body = await read_capped(request)
        except BodyTooLarge:
            return JSONResponse({"detail": f"request body is larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            spec_text = body.decode("utf-8")
        except UnicodeDecodeError:
            return JSONResponse({"detail": [{"loc": [], "path": "", "msg": "body is not UTF-8 text", "line": None}]}, status_code=422)
        return await run_in_threadpool(_create, spec_text, priority, list(set_), identity, idempotency_key)

    def _create(spec_text: str, priority: int, overrides: list[str], identity: Identity, key: Optional[str]):
        try:
            spec = load_spec_text(spec_text, "<request>", overrides, max_grid_points=max_grid_points)
            spec = spec.with_queue_defaults(storage_uri, max_failures)
        except SpecError as exc:
            return problems_response(exc.problems)
        resources = requested_resources(spec)
        problems = policy.spec_problems(spec, identity)
        if problems:
            return problems_response(problems)
        too_large = quota.never_fits(resources)
        if too_large:
            return JSONResponse({"detail": [{"loc": ["resources"], "path": "resources", "msg": too_large, "line": None}]},
                                status_code=422)
        nodes = node_sizes()
        too_big = larger_than_any_node(spec.worker_resources(), nodes) if nodes else None
        if too_big:
            field, why = too_big
            return JSONResponse({"detail": [{"loc": field.split("."), "path": field, "line": None,
                                             "msg": f"{why} (the Ray cluster has {len(nodes)} node(s))"}]}, status_code=422)
        job_id = new_job_id()
        job, created = store.add(NewJob(
            id=job_id, run_dir=queued_run_dir(spec, job_id).uri, name=spec.name, kind=spec.kind, priority=priority, submitted_by=identity.name, spec_submitted=spec_text,
            spec_normalised=dump_spec(spec), resources=resources, bundles=requested_bundles(spec),
            overrides=tuple(overrides), idempotency_key=key,
            preemptible=preemptible(spec)))
        if created:
            wake.set()
        return JSONResponse(job.to_dict(), status_code=201 if created else 200, headers={"Location": f"/jobs/{job.id}"})

    @app.get("/jobs", summary="List jobs, newest first (yours; an admin's: everyone's)",
             responses={403: {"description": "?user= names another user and the caller is not an admin."}})
    def list_jobs(identity: Identity = Depends(require_token), state: Optional[State] = None,
                  limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                  user: Optional[str] = Query(None, max_length=200, description="Only this user's jobs (admins).")):
        if not identity.admin and user not in (None, identity.name):
            return JSONResponse({"detail": "user: only admins may list another user's jobs"}, status_code=403)
        owner = user if identity.admin else identity.name
        rows, total = store.list(state.value if state else None, limit, offset, submitted_by=owner)
        return {"jobs": [job.to_dict() for job in rows], "total": total, "limit": limit, "offset": offset}

    @app.get("/jobs/{job_id}", summary="One job, with its spec")
    def get_job(job_id: str, identity: Identity = Depends(require_token)):
        job = visible_job(job_id, identity)
        out = job.to_dict(with_spec=True)
        out["position"] = store.position(job) if job.state == State.QUEUED.value else None
        if out["position"] and not out["waiting_reason"]:  # behind the front of the queue the dispatcher looks at
            out["waiting_reason"] = f"in line: {out['position']} queued job(s) are ranked ahead of it"
        out["links"] = job_links(job, settings)
        return out

    @app.post("/jobs/{job_id}/cancel", status_code=202, summary="Cancel a job")
    def cancel(job_id: str, identity: Identity = Depends(require_token)):
        visible_job(job_id, identity)
        job = store.request_cancel(job_id)
        wake.set()
        return job.to_dict()

    @app.post("/jobs/{job_id}/priority", summary="Change a job's priority (admins)",
              responses={403: {"description": "The caller is not an admin."}})
    def change_priority(job_id: str, priority: int = Query(..., ge=-1_000_000, le=1_000_000),
                        identity: Identity = Depends(require_token)):
        visible_job(job_id, identity)
        if not identity.admin:
            return JSONResponse({"detail": "priority: only admins may change a job's priority"}, status_code=403)
        job = store.set_priority(job_id, priority)
        wake.set()
        return job.to_dict()

    # Ray calls from requests share RAY_CALLS slots: when Ray is slow, the rest are answered 503
    # at once instead of piling up in the thread pool that every route shares.
    ray_slots = asyncio.Semaphore(RAY_CALLS)

    @asynccontextmanager
    async def ray_slot():
        if ray_slots.locked():
            raise HTTPException(503, f"Ray is slow to answer: {RAY_CALLS} log reads are already waiting for it; "
                                     "try again later", headers={"Retry-After": "5"})
        async with ray_slots:
            yield

    @app.get("/jobs/{job_id}/logs", dependencies=authed, response_class=PlainTextResponse, summary="A job's output")
    async def logs(
        job_id: str,
        follow: bool = Query(False, description="Stream the output until the job ends."),
        tail: Optional[int] = Query(None, ge=1, le=MAX_TAIL_LINES, description="Only the last N lines."),
        offset: Optional[int] = Query(None, ge=0, description="First byte to return (default: the last `limit` bytes)."),
        limit: int = Query(DEFAULT_LOG_BYTES, ge=1, le=MAX_LOG_BYTES, description="At most this many bytes."),
        identity: Identity = Depends(require_token),
    ):
        job = await run_in_threadpool(visible_job, job_id, identity)
        if ray is None:
            raise HTTPException(503, "this server has no Ray address: logs are unavailable")
        if follow:
            return StreamingResponse(_follow(job_id), media_type="text/plain; charset=utf-8")
        text_ = ""
        if job.submitted_at is not None:
            attempt = job.ray_job_id  # the current attempt's: a resumed job is a new Ray job
            async with ray_slot():
                if tail is not None:
                    text_ = await run_in_threadpool(ray.tail_lines, attempt, tail)
                else:
                    text_ = await run_in_threadpool(ray.logs, attempt)
            if text_ is None:
                raise HTTPException(404, f"Ray has no logs for job {job_id}")
        if tail is not None:  # lines from the end: no byte offsets to page by
            return Response(text_.encode("utf-8")[-limit:], media_type="text/plain; charset=utf-8")
        return log_page(text_.encode("utf-8"), offset, limit)

    async def _follow(job_id: str) -> AsyncIterator[str]:
        # Wait until Ray has the job (or it ends without ever running), then stream its output
        # (the current attempt's: a job resumed after a preemption is a new Ray job).
        while True:
            job = await run_in_threadpool(store.get, job_id)
            attempt = job.ray_job_id
            if job.submitted_at is not None and not ray_slots.locked():
                try:
                    async with ray_slots:
                        if await run_in_threadpool(ray.info, attempt) is not None:
                            break
                except RayUnavailable:
                    pass
            if State(job.state) in TERMINAL:
                return
            await asyncio.sleep(LOG_POLL_S)
        try:
            async for chunk in ray.tail(attempt):
                yield chunk
        except Exception as exc:  # the head went away mid-stream: say so in the stream
            yield f"\n[log stream ended: {one_line(exc, 200)}]\n"

    @app.get("/healthz", summary="Liveness (no token)")
    def healthz():
        try:
            with store.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "db": exc.__class__.__name__}, status_code=503)
        return {"status": "ok"}

    registry = metrics.registry_for(store)

    @app.get("/metrics", dependencies=authed, summary="Prometheus metrics")
    def prometheus():
        return Response(metrics.render(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
