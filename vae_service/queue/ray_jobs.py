"""The Ray Jobs API, as the queue needs it: the only module that knows JobSubmissionClient.

Every call is idempotent or read-only: a job's Ray submission_id is the queue's job id, so
submitting the same job twice is refused by Ray (and reported here as "already there"),
and stopping a stopped job does nothing.

Token auth (Ray 2.60, `ray start --head` with RAY_AUTH_MODE=token or a token in
~/.ray/auth_token): the dashboard refuses requests without `Authorization: Bearer <token>`.
The token is read like Ray reads it — RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else
~/.ray/auth_token — and sent explicitly on every request. It is never logged.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Optional

import httpx

from vae_service.core.errors import one_line

STATUS_CODE = re.compile(r"status code (\d{3})")
REQUEST_TIMEOUT_S = 10.0


class RayUnavailable(Exception):
    """The Ray Jobs API did not answer (or refused our token); retry later."""


class RayRejected(Exception):
    """Ray answered and refused the request for good (e.g. a bad runtime environment)."""


@dataclass(frozen=True)
class RayJob:
    submission_id: str
    status: str  # PENDING RUNNING STOPPED SUCCEEDED FAILED
    message: str = ""
    exit_code: Optional[int] = None


def ray_token() -> Optional[str]:
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def entrypoint(python: Optional[str] = None) -> str:
    """The job's command on the cluster: `vae run` on the spec it finds in its environment
    (see queue.entry). The interpreter defaults to this one (same install, same host)."""
    return f"{shlex.quote(python or sys.executable)} -m vae_service.queue.entry"


def _code(exc: BaseException) -> Optional[int]:
    match = STATUS_CODE.search(str(exc))
    return int(match.group(1)) if match else None


class RayJobs:
    def __init__(self, address: str, token: Optional[str] = None):
        self.address = address.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = None
        self._lock = threading.Lock()

    # JobSubmissionClient checks the connection when it is built: build it lazily, rebuild it
    # after a failure (the head may have restarted).
    def client(self):
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                try:
                    self._client = JobSubmissionClient(self.address, headers=dict(self._headers))
                except Exception as exc:
                    raise RayUnavailable(f"Ray Jobs API at {self.address}: {one_line(exc, 300)}") from None
            return self._client

    def _failed(self, exc: BaseException, what: str) -> Exception:
        code = _code(exc)
        if code in (401, 403) or "Authentication" in type(exc).__name__:
            return RayUnavailable(f"Ray at {self.address} refused the token while trying to {what} "
                                  "(set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")
        if code is not None and 400 <= code < 500:
            return RayRejected(one_line(exc, 300))
        with self._lock:
            self._client = None
        return RayUnavailable(f"Ray Jobs API at {self.address}: cannot {what}: {one_line(exc, 300)}")

    def submit(self, job_id: str, env_vars: dict[str, str], python: Optional[str] = None) -> bool:
        """Submits with submission_id = job_id. Returns False when Ray already has that job."""
        try:
            self.client().submit_job(entrypoint=entrypoint(python), submission_id=job_id,
                                     runtime_env={"env_vars": env_vars}, metadata={"vae.job_id": job_id})
            return True
        except RayUnavailable:
            raise
        except Exception as exc:
            if "already exists" in str(exc):
                return False
            raise self._failed(exc, f"submit job {job_id}") from None

    def info(self, job_id: str) -> Optional[RayJob]:
        """What Ray knows of the job, or None if it has no record of it."""
        try:
            details = self.client().get_job_info(job_id)
        except RayUnavailable:
            raise
        except Exception as exc:
            if _code(exc) == 404 or "does not exist" in str(exc):
                return None
            raise self._failed(exc, f"read job {job_id}") from None
        return RayJob(job_id, str(details.status), details.message or "", getattr(details, "driver_exit_code", None))

    def list(self) -> dict[str, RayJob]:
        """Every submitted job Ray remembers, by submission id."""
        try:
            jobs = self.client().list_jobs()
        except RayUnavailable:
            raise
        except Exception as exc:
            raise self._failed(exc, "list jobs") from None
        return {j.submission_id: RayJob(j.submission_id, str(j.status), j.message or "", getattr(j, "driver_exit_code", None))
                for j in jobs if j.submission_id}

    def stop(self, job_id: str) -> None:
        try:
            self.client().stop_job(job_id)
        except RayUnavailable:
            raise
        except Exception as exc:
            if _code(exc) == 404 or "does not exist" in str(exc):
                return
            raise self._failed(exc, f"stop job {job_id}") from None

    def logs(self, job_id: str) -> Optional[str]:
        """All logs so far, or None when Ray has no record of the job."""
        try:
            return self.client().get_job_logs(job_id)
        except RayUnavailable:
            raise
        except Exception as exc:
            if _code(exc) == 404 or "does not exist" in str(exc):
                return None
            raise self._failed(exc, f"read the logs of job {job_id}") from None

    async def tail(self, job_id: str) -> AsyncIterator[str]:
        """Log chunks as the job writes them; ends when the job ends."""
        async for chunk in self.client().tail_job_logs(job_id):
            yield chunk

    def totals(self) -> dict[str, float]:
        """The cluster's total CPU and GPU over its live nodes (Ray's State API)."""
        try:
            response = httpx.get(f"{self.address}/api/v0/nodes", params={"limit": 10000},
                                 headers=self._headers, timeout=REQUEST_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise RayUnavailable(f"Ray at {self.address}: cannot read the cluster's resources: {one_line(exc, 300)}") from None
        if response.status_code in (401, 403):
            raise RayUnavailable(f"Ray at {self.address} refused the token (HTTP {response.status_code})")
        if response.status_code != 200:
            raise RayUnavailable(f"Ray at {self.address}: nodes: HTTP {response.status_code}")
        nodes = response.json()["data"]["result"]["result"]
        totals = {"CPU": 0.0, "GPU": 0.0}
        for node in nodes:
            if node.get("state") == "ALIVE":
                for name in totals:
                    totals[name] += float((node.get("resources_total") or {}).get(name, 0.0))
        return totals
