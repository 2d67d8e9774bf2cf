"""The job routes: submit (POST /jobs), list (GET /jobs), read one (GET /jobs/{id}), cancel
(POST /jobs/{id}/cancel). Who may see what: queue/policy.py; a job the caller may not see is
answered 404, as one that does not exist."""

from __future__ import annotations

from typing import List, Optional

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from vae_service.core.resources import larger_than_any_node, preemptible, requested_bundles, requested_resources
from vae_service.core.spec_loading import MAX_SPEC_BYTES, SpecError, dump_spec, load_spec_text
from vae_service.jobs.locations import queued_run_dir
from vae_service.queue.auth import Identity
from vae_service.queue.routes.errors import (CONFLICT, INVALID, NOT_FOUND, STORE_DOWN, UNAUTHORIZED, Message,
                                             forbidden, problem_response)
from vae_service.queue.routes.schemas import JOB_LINKS, LOCATION, Job, JobDetail, JobPage
from vae_service.queue.routes.service import Service, identity, service
from vae_service.queue.states import State
from vae_service.queue.store import NewJob, new_job_id
from vae_service.queue.ui import job_links

MAX_BODY_BYTES = MAX_SPEC_BYTES  # 1 MiB
MAX_OFFSET = 10**9  # GET /jobs paging: beyond any real queue, and within every database's integers
PRIORITY = Query(0, ge=-1_000_000, le=1_000_000, description="Higher runs first.")
# A spec that the server accepts, for the document (and the tools that call what it describes)
EXAMPLE_SPEC = {"name": "tiny", "data": {"limit": 256}, "model": {"hidden": [32], "latent_dim": 2},
                "optim": {"epochs": 1, "batch_size": 64, "seed": 0}, "resources": {"num_workers": 1, "cpus_per_worker": 1}}

# 422 on every route: FastAPI documents its own (HTTPValidationError) on any route with a
# parameter unless it is; the shape the API answers is errors.Problems.
router = APIRouter(tags=["jobs"], responses={**UNAUTHORIZED, **INVALID, **STORE_DOWN})


class BodyTooLarge(Exception):
    pass


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


@router.post(
    "/jobs", status_code=201, summary="Queue a job", operation_id="submitJob",
    responses={
        201: {"model": Job, "description": "Queued.", "headers": LOCATION, "links": JOB_LINKS},
        200: {"model": Job, "description": "The job this user already submitted with this Idempotency-Key.",
              "headers": LOCATION, "links": JOB_LINKS},
        **forbidden("A priority above the server's limit for non-admins."),
        413: {"model": Message, "description": f"The body is larger than {MAX_BODY_BYTES} bytes."},
        422: {**INVALID[422], "description": "The spec is invalid, or the server's policy or quota refuses it "
                                             "(each problem named by its field)."}},
    # Either media type holds one document, the spec (a mapping); its fields are checked by the
    # server (core/spec.py, then the policy): their problems are the 422s.
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/yaml": {"schema": {"type": "object"}, "example": EXAMPLE_SPEC},
        "application/json": {"schema": {"type": "object"}, "example": EXAMPLE_SPEC}}}})
async def submit(
    request: Request,
    caller: Identity = Depends(identity),
    server: Service = Depends(service),
    priority: int = PRIORITY,
    set_: List[str] = Query([], alias="set", description="Spec overrides a.b=c (value read as YAML)."),
    idempotency_key: Optional[str] = Header(None, max_length=200),
):
    refused = server.policy.priority_problem(caller, priority)
    if refused:
        return JSONResponse({"detail": refused}, status_code=403)
    try:
        body = await read_capped(request)
    except BodyTooLarge:
        return JSONResponse({"detail": f"request body is larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
    try:
        spec_text = body.decode("utf-8")
    except UnicodeDecodeError:
        return problem_response([("", "body is not UTF-8 text", None)])
    return await run_in_threadpool(_create, server, spec_text, priority, list(set_), caller, idempotency_key)


def _create(server: Service, spec_text: str, priority: int, overrides: list[str], caller: Identity, key: Optional[str]):
    try:
        spec = load_spec_text(spec_text, "<request>", overrides, max_grid_points=server.max_grid_points)
        spec = spec.with_queue_defaults(server.storage_uri, server.max_failures)
    except SpecError as exc:
        return problem_response((p.path, p.reason, p.line) for p in exc.problems)
    resources = requested_resources(spec)
    problems = server.policy.spec_problems(spec, caller)
    if problems:
        return problem_response((p.path, p.reason, p.line) for p in problems)
    too_large = server.quota.never_fits(resources)
    if too_large:
        return problem_response([("resources", too_large, None)])
    nodes = server.node_sizes()
    too_big = larger_than_any_node(spec.worker_resources(), nodes) if nodes else None
    if too_big:
        field, why = too_big
        return problem_response([(field, f"{why} (the Ray cluster has {len(nodes)} node(s))", None)])
    job_id = new_job_id()
    job, created = server.store.add(NewJob(
        id=job_id, run_dir=queued_run_dir(spec, job_id).uri, name=spec.name, kind=spec.kind, priority=priority, submitted_by=caller.name, spec_submitted=spec_text,
        spec_normalised=dump_spec(spec), resources=resources, bundles=requested_bundles(spec),
        overrides=tuple(overrides), idempotency_key=key, preemptible=preemptible(spec)))
    if created:
        server.wake.set()
    return JSONResponse(job.to_dict(), status_code=201 if created else 200, headers={"Location": f"/jobs/{job.id}"})


@router.get("/jobs", summary="List jobs, newest first (yours; an admin's: everyone's)", operation_id="listJobs",
            responses={200: {"model": JobPage},
                       **forbidden("?user= names another user and the caller is not an admin.")})
def list_jobs(caller: Identity = Depends(identity), server: Service = Depends(service), state: Optional[State] = None,
              limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_OFFSET),
              user: Optional[str] = Query(None, max_length=200, description="Only this user's jobs (admins).")):
    if not caller.admin and user not in (None, caller.name):
        return JSONResponse({"detail": "user: only admins may list another user's jobs"}, status_code=403)
    owner = user if caller.admin else caller.name
    rows, total = server.store.list(state.value if state else None, limit, offset, submitted_by=owner)
    return {"jobs": [job.to_dict() for job in rows], "total": total, "limit": limit, "offset": offset}


@router.get("/jobs/{job_id}", summary="One job, with its spec", operation_id="getJob",
            responses={200: {"model": JobDetail}, **NOT_FOUND})
def get_job(job_id: str, caller: Identity = Depends(identity), server: Service = Depends(service)):
    job = server.visible_job(job_id, caller)
    out = job.to_dict(with_spec=True)
    out["position"] = server.store.position(job) if job.state == State.QUEUED.value else None
    if out["position"] and not out["waiting_reason"]:  # behind the front of the queue the dispatcher looks at
        out["waiting_reason"] = f"in line: {out['position']} queued job(s) are ranked ahead of it"
    out["links"] = job_links(job, server.settings)
    return out


@router.post("/jobs/{job_id}/cancel", status_code=202, summary="Cancel a job", operation_id="cancelJob",
             responses={202: {"model": Job, "description": "Cancelled (queued), or being stopped on Ray (cancelling)."},
                        **NOT_FOUND, **CONFLICT})
def cancel(job_id: str, caller: Identity = Depends(identity), server: Service = Depends(service)):
    server.visible_job(job_id, caller)
    job = server.store.request_cancel(job_id)
    server.wake.set()
    return job.to_dict()
