"""The Ray Jobs API, as the queue needs it: the only module that talks to Ray's dashboard.

It speaks Ray's Jobs REST API directly with httpx (Ray 2.60, ray/dashboard/modules/job/
job_head.py): POST /api/jobs/, GET /api/jobs/, GET /api/jobs/{id}, POST /api/jobs/{id}/stop,
GET /api/jobs/{id}/logs, the websocket /api/jobs/{id}/logs/tail, and the State API's
/api/v0/logs/file for the last lines of a job's log. Not JobSubmissionClient: it uses
`requests` with no timeout, so a dashboard that accepts connections and never answers hung its
callers (the dispatcher while it held the leadership lock, the API's thread pool) for ever.

Bounded: every request has a connect timeout and a read timeout, and the whole call a deadline
(`timeout_s`), so no call takes much longer than connect + timeout_s + one read; a response
over MAX_RESPONSE_BYTES is refused. Nothing is built or checked under a lock. A call that gets
no answer in time raises RayUnavailable, like a refused connection.

Every call is idempotent or read-only: a job's Ray submission_id is the queue's job id, so
submitting the same job twice is refused by Ray (and reported here as "already there"),
and stopping a stopped job does nothing.

Token auth (Ray 2.60, `ray start --head` with RAY_AUTH_MODE=token or a token in
~/.ray/auth_token): the dashboard refuses requests without `Authorization: Bearer <token>`.
The token is read like Ray reads it — RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else
~/.ray/auth_token — and sent explicitly on every request. It is never logged.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import httpx

from vae_service.core.errors import ShownError, one_line
from vae_service.core.placement import Cluster, Node

TIMEOUT_S = 10.0  # read timeout, and the deadline of a whole call
CONNECT_TIMEOUT_S = 3.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # a job's log beyond this: read its tail (tail_lines)
TAIL_HEARTBEAT_S = 30.0  # the log stream pings Ray; a dead peer ends the stream


class RayUnavailable(ShownError):
    """The Ray Jobs API did not answer in time (or refused our token); retry later."""


class RayRejected(ShownError):
    """Ray answered and refused the request for good (e.g. a bad runtime environment)."""


@dataclass(frozen=True)
class RayJob:
    submission_id: str
    status: str  # PENDING RUNNING STOPPED SUCCEEDED FAILED
    message: str = ""
    exit_code: Optional[int] = None
    driver_node_id: Optional[str] = None  # where its log file is (None until the driver starts)
    ray_job_id: Optional[str] = None  # Ray's own id of the driver ("02000000"): what its placement groups name


@dataclass(frozen=True)
class Unplaced:
    """Workers Ray has not placed: a placement group not placed (PENDING) or that lost part of
    itself (RESCHEDULING, a node died) — a Ray Train run's worker group waits in one until the
    cluster has room — or a task waiting for a node (a single-worker run is one task)."""
    bundles: tuple[dict[str, float], ...]
    scheduling_state: str  # Ray's word for why: NO_RESOURCES, INFEASIBLE, PENDING_NODE_ASSIGNMENT …


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


def _ray_error(body: bytes, status: int) -> str:
    """Ray answers errors with a traceback as text: its last line says what went wrong."""
    lines = [line.strip() for line in body.decode("utf-8", "replace").splitlines() if line.strip()]
    return one_line(lines[-1], 300) if lines else f"HTTP {status}"


def _job(details: dict[str, Any]) -> RayJob:
    return RayJob(details["submission_id"], str(details.get("status")), details.get("message") or "",
                  details.get("driver_exit_code"), details.get("driver_node_id"), details.get("job_id"))


def _resources(amounts: Optional[dict]) -> dict[str, float]:
    return {name: float(value) for name, value in (amounts or {}).items()}


def last_lines(text: str, lines: int) -> str:
    """The last `lines` lines of `text` (a final newline does not start a new line)."""
    kept = text.splitlines(keepends=True)[-lines:] if lines > 0 else []
    return "".join(kept)


class RayJobs:
    def __init__(self, address: str, token: Optional[str] = None, *, timeout_s: float = TIMEOUT_S,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self.address = address.rstrip("/")
        self.timeout_s = float(timeout_s)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = httpx.Timeout(self.timeout_s, connect=min(connect_timeout_s, self.timeout_s))
        # One client, its connection pool shared by the dispatcher and the API's threads.
        self._http = httpx.Client(base_url=self.address, headers=self._headers, timeout=self._timeout)

    def close(self) -> None:
        self._http.close()

    def _no_answer(self, what: str) -> RayUnavailable:
        return RayUnavailable(f"Ray Jobs API at {self.address}: no answer within {self.timeout_s:g} s "
                              f"while trying to {what}")

    def _cannot(self, what: str, exc: BaseException) -> RayUnavailable:
        return RayUnavailable(f"Ray Jobs API at {self.address}: cannot {what}: "
                              f"{exc.__class__.__name__}: {one_line(exc, 200)}")

    def _call(self, method: str, path: str, what: str, **kwargs) -> tuple[int, bytes]:
        """(status, body) of one bounded request; RayUnavailable when Ray does not answer in
        time, cannot be reached, or refuses the token."""
        deadline = time.monotonic() + self.timeout_s
        try:
            with self._http.stream(method, path, **kwargs) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise RayUnavailable(f"Ray at {self.address}: the answer to {what} is larger than "
                                             f"{MAX_RESPONSE_BYTES // 2**20} MiB")
                    if time.monotonic() > deadline:  # a dashboard that trickles bytes
                        raise httpx.ReadTimeout("deadline")
                status = response.status_code
        except httpx.TimeoutException:
            raise self._no_answer(what) from None
        except httpx.HTTPError as exc:
            raise self._cannot(what, exc) from None
        if status in (401, 403):
            raise RayUnavailable(f"Ray at {self.address} refused the token while trying to {what} "
                                 "(set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")
        return status, bytes(body)

    def _json(self, body: bytes, what: str) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise RayUnavailable(f"Ray at {self.address}: the answer to {what} is not JSON") from None

    def _fail(self, status: int, body: bytes, what: str) -> Exception:
        if 400 <= status < 500:
            return RayRejected(_ray_error(body, status))
        return RayUnavailable(f"Ray Jobs API at {self.address}: cannot {what}: HTTP {status}: {_ray_error(body, status)}")

    def submit(self, job_id: str, env_vars: dict[str, str], python: Optional[str] = None) -> bool:
        """Submits with submission_id = job_id. Returns False when Ray already has that job."""
        payload = {"entrypoint": entrypoint(python), "submission_id": job_id,
                   "runtime_env": {"env_vars": env_vars}, "metadata": {"vae.job_id": job_id}}
        status, body = self._call("POST", "/api/jobs/", f"submit job {job_id}", json=payload)
        if status == 200:
            return True
        if b"already exists" in body:  # Ray says so with a 500 and its traceback
            return False
        raise self._fail(status, body, f"submit job {job_id}")

    def info(self, job_id: str) -> Optional[RayJob]:
        """What Ray knows of the job, or None if it has no record of it."""
        status, body = self._call("GET", f"/api/jobs/{job_id}", f"read job {job_id}")
        if status == 404:
            return None
        if status != 200:
            raise self._fail(status, body, f"read job {job_id}")
        return _job(self._json(body, f"read job {job_id}"))

    def list(self) -> dict[str, RayJob]:
        """Every submitted job Ray remembers, by submission id (one request)."""
        status, body = self._call("GET", "/api/jobs/", "list jobs")
        if status != 200:
            raise self._fail(status, body, "list jobs")
        return {d["submission_id"]: _job(d) for d in self._json(body, "list jobs") if d.get("submission_id")}

    def stop(self, job_id: str) -> None:
        status, body = self._call("POST", f"/api/jobs/{job_id}/stop", f"stop job {job_id}")
        if status not in (200, 404):  # 404: Ray has no such job, nothing to stop
            raise self._fail(status, body, f"stop job {job_id}")

    def logs(self, job_id: str) -> Optional[str]:
        """All logs so far, or None when Ray has no record of the job."""
        status, body = self._call("GET", f"/api/jobs/{job_id}/logs", f"read the logs of job {job_id}")
        if status == 404:
            return None
        if status != 200:
            raise self._fail(status, body, f"read the logs of job {job_id}")
        return self._json(body, f"read the logs of job {job_id}").get("logs") or ""

    def tail_lines(self, job_id: str, lines: int) -> Optional[str]:
        """The last `lines` lines of the job's log, or None when Ray has no record of it.

        Ray's State API reads only the end of the file on the driver's node (GET
        /api/v0/logs/file?submission_id=…&node_id=…&lines=N); where that fails (no driver yet,
        an older or newer Ray), the whole log is read and its end kept."""
        info = self.info(job_id)
        if info is None:
            return None
        if info.driver_node_id:
            params = {"submission_id": job_id, "node_id": info.driver_node_id, "lines": lines,
                      "timeout": max(1, int(self.timeout_s))}
            status, body = self._call("GET", "/api/v0/logs/file", f"read the logs of job {job_id}", params=params)
            if status == 200:
                return body.decode("utf-8", "replace")
        text = self.logs(job_id)
        return None if text is None else last_lines(text, lines)

    async def tail(self, job_id: str) -> AsyncIterator[str]:
        """Log chunks as the job writes them; ends when the job ends. Connecting is bounded by
        the timeout; then the stream may be quiet for as long as the job is (pings find a dead
        peer)."""
        import aiohttp  # Ray's own dependency; only the log stream needs it

        async with aiohttp.ClientSession(headers=self._headers) as session:
            try:
                ws = await asyncio.wait_for(
                    session.ws_connect(f"{self.address}/api/jobs/{job_id}/logs/tail", heartbeat=TAIL_HEARTBEAT_S),
                    self.timeout_s)
            except asyncio.TimeoutError:
                raise self._no_answer(f"follow the logs of job {job_id}") from None
            except aiohttp.ClientError as exc:
                raise self._cannot(f"follow the logs of job {job_id}", exc) from None
            async with ws:
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        yield message.data
                    elif message.type == aiohttp.WSMsgType.ERROR:
                        raise RayUnavailable(f"log stream of job {job_id} broke: {one_line(ws.exception(), 200)}")
                if ws.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE:
                    raise RayUnavailable(f"log stream of job {job_id} closed abnormally")

    def _state(self, kind: str, what: str, **params) -> list[dict]:
        """One listing of Ray's State API (/api/v0/<kind>)."""
        status, body = self._call("GET", f"/api/v0/{kind}", what, params={"limit": 10000, **params})
        if status != 200:
            raise RayUnavailable(f"Ray at {self.address}: {kind}: HTTP {status}")
        return self._json(body, what)["data"]["result"]["result"]

    def nodes(self, include_dead: bool = False) -> list[dict[str, float]]:
        """Each live node's total CPU and GPU (Ray's State API); with `include_dead`, also those
        of the nodes Ray still remembers as dead (one may be restarting)."""
        return [{name: float((node.get("resources_total") or {}).get(name, 0.0)) for name in ("CPU", "GPU")}
                for node in self._state("nodes", "read the cluster's resources")
                if include_dead or node.get("state") == "ALIVE"]

    def totals(self) -> dict[str, float]:
        """The cluster's total CPU and GPU over its live nodes."""
        return self.cluster().totals()

    def cluster(self) -> Cluster:
        """The live nodes by Ray's node id, each with its total CPU and GPU (nothing placed)."""
        return Cluster([Node(node["node_id"], {name: float((node.get("resources_total") or {}).get(name, 0.0))
                                               for name in ("CPU", "GPU")})
                        for node in self._state("nodes", "read the cluster's resources") if node.get("state") == "ALIVE"])

    def placements(self) -> dict[str, list[str]]:
        """Where Ray has placed each Ray job's workers, by the Ray job id that asked: the node id
        of every bundle of its placed placement groups (a Ray Train worker group), and of every
        running task that holds resources outside a group (a single-worker run is one task)."""
        groups = self._state("placement_groups", "read the placement groups", detail="true",
                             filter_keys=["state"], filter_predicates=["="], filter_values=["CREATED"])
        tasks = self._state("tasks", "read the running tasks", filter_keys=["state"], filter_predicates=["="],
                            filter_values=["RUNNING"], detail="true")
        out: dict[str, list[str]] = {}
        for group in groups:
            for bundle in group.get("bundles") or ():
                if bundle.get("node_id") and any(v > 0 for v in _resources(bundle.get("unit_resources")).values()):
                    out.setdefault(group.get("creator_job_id", ""), []).append(bundle["node_id"])
        for task in tasks:
            if task.get("node_id") and not task.get("placement_group_id") and \
                    any(v > 0 for v in _resources(task.get("required_resources")).values()):
                out.setdefault(task.get("job_id", ""), []).append(task["node_id"])
        return out

    def unplaced(self) -> dict[str, list[Unplaced]]:
        """What waits for room now, by the Ray job id that asked (RayJob.ray_job_id): placement
        groups PENDING or RESCHEDULING, and tasks that ask for resources and have no node yet.
        Both are often pending for a moment; the caller decides how long is too long."""
        groups = self._state("placement_groups", "read the placement groups", detail="true",
                             filter_keys=["state", "state"], filter_predicates=["!=", "!="],
                             filter_values=["CREATED", "REMOVED"])
        tasks = self._state("tasks", "read the pending tasks", filter_keys=["state"], filter_predicates=["="],
                            filter_values=["PENDING_NODE_ASSIGNMENT"], detail="true")
        out: dict[str, list[Unplaced]] = {}
        for group in groups:
            bundles = tuple(_resources(b.get("unit_resources")) for b in group.get("bundles") or ())
            why = (group.get("stats") or {}).get("scheduling_state") or group.get("state", "")
            out.setdefault(group.get("creator_job_id", ""), []).append(Unplaced(bundles, str(why)))
        for task in tasks:
            asked = _resources(task.get("required_resources"))
            if any(amount > 0 for amount in asked.values()):
                out.setdefault(task.get("job_id", ""), []).append(Unplaced((asked,), str(task.get("state", ""))))
        return out
