"""Fault: a Ray dashboard that accepts connections and never answers (a real TCP socket that
accepts and reads, and never writes a byte). Every call towards it ends within its timeout, the
API stays responsive while /logs calls pile in, and the dispatcher gives up its leadership so a
standby server on the same database takes over."""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from queue_support import api, start_server, tiny_spec_text, wait_for

from vae_service.queue.db import make_engine
from vae_service.queue.ray_jobs import RayJobs, RayUnavailable
from vae_service.queue.states import State
from vae_service.queue.store import Store

pytestmark = pytest.mark.slow  # `vae server` processes waiting out timeouts
TOKEN = "hung-ray-api-token"
RAY_TOKEN = "ray-token-that-must-never-show"
RAY_TIMEOUT_S = 1.0
SERVER_RAY_TIMEOUT_S = 2.0  # → the dispatcher's leadership timeout is 6 s


class HungDashboard:
    """Listens on a free port; accepts every connection, reads what comes, never answers."""

    def __init__(self):
        self._server = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.address = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            self._connections.append(connection)
            threading.Thread(target=self._swallow, args=(connection,), daemon=True).start()

    @staticmethod
    def _swallow(connection: socket.socket) -> None:
        try:
            while connection.recv(65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._stopping.set()
        self._server.close()
        for connection in self._connections:
            connection.close()


@pytest.fixture
def hung():
    dashboard = HungDashboard()
    yield dashboard
    dashboard.close()


@pytest.mark.timeout(60)
def test_every_ray_call_ends_within_its_timeout(hung):
    ray = RayJobs(hung.address, RAY_TOKEN, timeout_s=RAY_TIMEOUT_S)
    calls = {"list": ray.list, "info": lambda: ray.info("0123456789abcdef"), "stop": lambda: ray.stop("0123456789abcdef"),
             "logs": lambda: ray.logs("0123456789abcdef"), "tail_lines": lambda: ray.tail_lines("0123456789abcdef", 10),
             "submit": lambda: ray.submit("0123456789abcdef", {"A": "b"}), "totals": ray.totals}
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(RayUnavailable, match=r"no answer within 1 s") as caught:
            call()
        took = time.monotonic() - started
        assert RAY_TIMEOUT_S * 0.9 < took < RAY_TIMEOUT_S + 1.5, (name, took)
        assert RAY_TOKEN not in str(caught.value)
    assert hung.accepted >= len(calls)  # they really reached the socket


@pytest.mark.timeout(120)
def test_api_stays_responsive_and_a_standby_takes_over(hung, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'queue.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    env.update(VAE_API_TOKEN=TOKEN, VAE_HOME=str(tmp_path / ".vae"), VAE_DB_URL=db_url, VAE_RAY_ADDRESS=hung.address,
               VAE_RAY_TIMEOUT_S=str(SERVER_RAY_TIMEOUT_S), RAY_AUTH_TOKEN=RAY_TOKEN)
    first = start_server(tmp_path, env, name="first")
    standby = None
    try:
        wait_for(lambda: "dispatcher: active" in first.log(), 20, "the first server to lead")
        standby = start_server(tmp_path, env, name="standby")
        wait_for(lambda: "dispatcher: waiting for the file lock" in standby.log(), 20, "the standby to wait")
        http = api(first, TOKEN)
        ids = [http.post("/jobs", content=tiny_spec_text(f"hung-{i}")).json()["id"] for i in range(3)]
        # As if a dispatcher had handed them to Ray before it hung: the logs route asks Ray.
        engine = make_engine(db_url)
        store = Store(engine)
        # The dispatcher cannot have moved them first: it asks Ray for its totals before it
        # admits anything, and Ray never answers. So each one is still queued and moves now.
        for job_id in ids:
            moved = store.transition(job_id, State.SUBMITTED, only_from=[State.QUEUED], ray_submission_id=job_id)
            assert (moved.state, moved.ray_submission_id) == ("submitted", job_id)
        engine.dispose()

        def timed(method: str, path: str) -> tuple[int, float, str]:
            started = time.monotonic()
            with api(first, TOKEN) as client:
                response = client.request(method, path)
            return response.status_code, time.monotonic() - started, response.text

        with ThreadPoolExecutor(max_workers=32) as pool:
            log_calls = [pool.submit(timed, "GET", f"/jobs/{ids[i % 3]}/logs") for i in range(24)]
            time.sleep(0.2)  # the log calls are in flight
            plain = [timed("GET", "/jobs") for _ in range(5)] + [timed("GET", "/healthz") for _ in range(5)]
            logs = [f.result(timeout=30) for f in log_calls]

        for status, took, text in plain:
            assert status == 200 and took < 2.0, (status, took, text)
        for status, took, text in logs:
            assert status == 503 and took < SERVER_RAY_TIMEOUT_S + 3.0, (status, took, text)
            assert RAY_TOKEN not in text
        assert any("slow to answer" in text for _, _, text in logs)  # the ones beyond the slots: at once
        assert any("no answer within" in text for _, _, text in logs)  # the ones that asked Ray
        # Those beyond the slots did not wait for Ray: each came back before any call that did
        # (an order, not a number of seconds: it holds on a machine busy with other tests too).
        waited = min(took for _, took, text in logs if "no answer within" in text)
        assert waited > SERVER_RAY_TIMEOUT_S * 0.9
        assert max(took for _, took, text in logs if "slow to answer" in text) < waited

        # The leader cannot reach Ray for its leadership timeout (6 s): it gives up its lock,
        # and the standby takes it.
        wait_for(lambda: "dispatcher: active" in standby.log(), 30, "the standby to take over")
        assert "giving up the file lock" in first.log()
        for server in (first, standby):
            assert RAY_TOKEN not in server.log()
            assert "Traceback" not in server.log()
        assert httpx.get(f"{standby.url}/healthz", timeout=2).status_code == 200
    finally:
        first.stop()
        if standby is not None:
            standby.stop()
