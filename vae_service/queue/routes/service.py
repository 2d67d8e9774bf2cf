"""What every route shares, as FastAPI dependencies: the server's parts (`Service`, built once
by create_app and kept on app.state) and the caller's identity from the bearer token."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from vae_service.queue.auth import Identity, TokenSet
from vae_service.queue.models import Job
from vae_service.queue.policy import Policy
from vae_service.queue.quotas import FairShare, Quota
from vae_service.queue.ray_jobs import RayJobs, RayUnavailable
from vae_service.queue.settings import Settings
from vae_service.queue.store import Store, UnknownJob

NODES_TTL_S = 10.0  # how long a submission trusts the node sizes the last one read from Ray
RAY_CALLS = 4  # Ray log reads in flight at once, per server

bearer = HTTPBearer(auto_error=False, description="An API token (VAE_API_TOKEN or the server's token file).")


@dataclass
class Service:
    """The server's parts the routes use. `wake` tells the dispatcher there is news (a new or
    cancelled job, a new priority); `settings` names the Ray the server really uses."""

    store: Store
    tokens: TokenSet
    ray: Optional[RayJobs]
    policy: Policy
    quota: Quota
    settings: Settings
    wake: threading.Event
    storage_uri: Optional[str]
    max_failures: int
    max_grid_points: int
    metrics: CollectorRegistry  # queue/metrics.py's, over `store`
    fair_share: FairShare = FairShare()  # the weights and half-life GET /fair-share reports with
    # Ray calls from requests share RAY_CALLS slots: when Ray is slow, the rest are answered 503
    # at once instead of piling up in the thread pool that every route shares.
    ray_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(RAY_CALLS))
    _nodes: Optional[list[dict[str, float]]] = None
    _nodes_at: float = -NODES_TTL_S

    def node_sizes(self) -> Optional[list[dict[str, float]]]:
        """Every node Ray knows, alive or dead (a dead one may be restarting); None without Ray."""
        if self.ray is not None and time.monotonic() - self._nodes_at > NODES_TTL_S:
            try:
                self._nodes = self.ray.nodes(include_dead=True)
            except RayUnavailable:
                self._nodes = None  # queued unchecked: the dispatcher waits for Ray anyway
            self._nodes_at = time.monotonic()
        return self._nodes

    def visible_job(self, job_id: str, identity: Identity) -> Job:
        """The job, if this identity may see it; else UnknownJob, as if it did not exist."""
        job = self.store.get(job_id)
        if not self.policy.may_see(identity, job.submitted_by):
            raise UnknownJob(job_id)
        return job


async def service(request: Request) -> Service:
    # async, as every dependency here: a sync one would take a thread of the pool the routes share
    return request.app.state.service


async def identity(request: Request, credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> Identity:
    """The caller, from its bearer token; 401 without a valid one. async: a few microseconds
    of hashing, not worth a hop to the thread pool on every request."""
    found = request.app.state.service.tokens.identify(credentials.credentials if credentials else None)
    if found is None:
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return found
