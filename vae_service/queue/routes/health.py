"""GET /healthz: liveness, no token: 200 while the job store answers, 503 when it does not."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text

from vae_service.queue.routes.schemas import Health
from vae_service.queue.routes.service import Service, service

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness (no token)", operation_id="getHealth",
            responses={200: {"model": Health}, 503: {"model": Health, "description": "The job store does not answer."}})
def healthz(server: Service = Depends(service)):
    try:
        with server.store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "db": exc.__class__.__name__}, status_code=503)
    return {"status": "ok"}
