"""The HTTP API (FastAPI): `create_app` builds the server's parts (routes/service.py), runs the
dispatcher for the app's lifetime, and includes one router per resource (routes/: jobs, logs,
admin, fair share, metrics, health; ui.py for the page). Every route but /healthz needs
`Authorization: Bearer <token>` (auth.py); the OpenAPI description is served at /docs and
/openapi.json (no data there; the "Authorize" button takes the token for trying the routes).
Every status a route answers is in it, with its body (routes/errors.py, routes/schemas.py).

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
    GET  /fair-share           each user's weight, current, historic and effective share (quotas.FairShare);
                               the caller's own row (admins: everyone's)
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

import threading
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from vae_service.core.sweep_spec import MAX_GRID_POINTS
from vae_service.queue import metrics
from vae_service.queue.auth import TokenSet
from vae_service.queue.policy import Policy
from vae_service.queue.quotas import FairShare, Quota
from vae_service.queue.ray_jobs import RayJobs
from vae_service.queue.routes import admin, fair_share, health, jobs, logs
from vae_service.queue.routes import metrics as metrics_routes
from vae_service.queue.routes.errors import install_error_handlers
from vae_service.queue.routes.service import Service
from vae_service.queue.settings import QUEUED_MAX_FAILURES, Settings
from vae_service.queue.store import Store
from vae_service.queue.ui import ui_router


def create_app(store: Store, tokens: TokenSet, ray: Optional[RayJobs] = None, dispatcher=None,
               leadership=None, storage_uri: Optional[str] = None, policy: Optional[Policy] = None,
               max_grid_points: int = MAX_GRID_POINTS, quota: Optional[Quota] = None,
               max_failures: int = QUEUED_MAX_FAILURES, fair: Optional[FairShare] = None) -> FastAPI:
    """The API over `store`. With a `dispatcher` (and its `leadership`), the app runs it in a
    thread for its lifetime; `ray` serves the logs; `storage_uri` is where jobs whose spec names
    no storage keep their runs, `max_failures` the worker failures they recover from when it sets
    none; `policy` who may do what, `fair` fair share's weights and half-life (default: from the
    VAE_ settings)."""
    service = Service(
        store=store, tokens=tokens, ray=ray,
        policy=policy or Policy.from_settings(Settings()), quota=quota or Quota.from_settings(Settings()),
        settings=Settings(ray_address=ray.address) if ray is not None else Settings(),  # the Ray it really uses
        wake=dispatcher.wake if dispatcher is not None else threading.Event(),
        storage_uri=storage_uri, max_failures=max_failures, max_grid_points=max_grid_points,
        metrics=metrics.registry_for(store), fair_share=fair or FairShare.from_settings(Settings()))

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
            service.wake.set()
            if thread is not None:
                await run_in_threadpool(thread.join, 15)

    app = FastAPI(title="vae-service job queue", version="1", lifespan=lifespan,
                  description="Queue VAE training jobs (YAML job specs) to run on a Ray cluster.")
    app.state.service = service
    install_error_handlers(app)
    for router in (jobs.router, logs.router, admin.router, fair_share.router, health.router, metrics_routes.router,
                   ui_router()):
        app.include_router(router)
    return app
