"""What only admins may do: POST /jobs/{id}/priority (a queued job moves in line, a running
one may now preempt or be preempted). Anyone else gets 403 for a job they may see, 404 for
one they may not."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from vae_service.queue.auth import Identity
from vae_service.queue.routes.errors import CONFLICT, INVALID, NOT_FOUND, STORE_DOWN, UNAUTHORIZED, forbidden
from vae_service.queue.routes.schemas import Job
from vae_service.queue.routes.service import Service, identity, service

router = APIRouter(tags=["admin"], responses={**UNAUTHORIZED, **INVALID, **STORE_DOWN})


@router.post("/jobs/{job_id}/priority", summary="Change a job's priority (admins)", operation_id="setJobPriority",
             responses={200: {"model": Job}, **forbidden("The caller is not an admin."), **NOT_FOUND, **CONFLICT})
def change_priority(job_id: str, priority: int = Query(..., ge=-1_000_000, le=1_000_000),
                    caller: Identity = Depends(identity), server: Service = Depends(service)):
    server.visible_job(job_id, caller)
    if not caller.admin:
        return JSONResponse({"detail": "priority: only admins may change a job's priority"}, status_code=403)
    job = server.store.set_priority(job_id, priority)
    server.wake.set()
    return job.to_dict()
