"""GET /metrics: Prometheus text, read from the store at scrape time (queue/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from vae_service.queue import metrics
from vae_service.queue.routes.errors import STORE_DOWN, UNAUTHORIZED
from vae_service.queue.routes.service import Service, identity, service

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"  # the exposition format's own media type

router = APIRouter(tags=["metrics"])


@router.get("/metrics", dependencies=[Depends(identity)], summary="Prometheus metrics", operation_id="getMetrics",
            response_class=Response,  # no media type of its own: the error bodies stay documented as JSON
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "The Prometheus text exposition format (0.0.4)."},
                       **UNAUTHORIZED, **STORE_DOWN})
def prometheus(server: Service = Depends(service)):
    return Response(metrics.render(server.metrics), media_type=PROMETHEUS)
