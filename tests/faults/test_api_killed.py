"""The API SIGKILLed three times while 200 submissions arrive from 16 clients that retry with
an Idempotency-Key: every acknowledged job exists exactly once, under the id its client got.

Real `vae server` processes (API only: no Ray here, so nothing runs) on SQLite and PostgreSQL.
That no job *runs* twice follows from this and from Ray's side: a job's Ray submission id is
its row id, and Ray refuses a second submission with the same id (tests/test_queue_ray.py).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy
from queue_support import BACKENDS, free_port, start_server, temporary_database, tiny_spec_text

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TOKEN = "fault-suite-token"
SUBMISSIONS, CLIENTS, KILL_AFTER = 200, 16, (40, 90, 140)  # kill once this many were acknowledged


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_acknowledged_job_exists_exactly_once_after_three_kills(backend, tmp_path):
    with temporary_database(backend, tmp_path) as db_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(VAE_API_TOKEN=f"tester:{TOKEN}", VAE_HOME=str(tmp_path / ".vae"), VAE_DB_URL=db_url)
        port = free_port()
        server = start_server(tmp_path, env, "--no-dispatcher", port=port)
        url = server.url
        acknowledged: dict[str, str] = {}  # idempotency key → job id the client was given
        lock = threading.Lock()
        counts = {"retries": 0, "found_on_retry": 0, "kills": 0}

        def submit(i: int) -> None:
            key = f"fault-{uuid.uuid4().hex}"
            body = tiny_spec_text(name=f"kill-{i}")
            headers = {"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": key, "Content-Type": "application/yaml"}
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    response = httpx.post(f"{url}/jobs", content=body, headers=headers, timeout=10)
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code in (200, 201):
                    with lock:
                        acknowledged[key] = response.json()["id"]
                        counts["found_on_retry"] += response.status_code == 200
                    return
                assert response is None or response.status_code >= 500, response.text  # never a client error
                with lock:
                    counts["retries"] += 1
                time.sleep(0.2)
            raise AssertionError(f"submission {i} was never acknowledged")

        def killer() -> None:
            nonlocal server
            for threshold in KILL_AFTER:
                while len(acknowledged) < threshold:
                    time.sleep(0.01)
                server.kill()
                counts["kills"] += 1
                server = start_server(tmp_path, env, "--no-dispatcher", port=port, name=f"server-{threshold}")

        kills = threading.Thread(target=killer, daemon=True)
        kills.start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(submit, range(SUBMISSIONS)))
        kills.join(timeout=60)
        server.stop()

        engine = sqlalchemy.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text("SELECT id, idempotency_key, state, spec_normalised FROM jobs")).all()
        engine.dispose()
        stored = {key: job_id for job_id, key, _, _ in rows}
        print(f"\n[{backend}] acknowledged {len(acknowledged)}, rows {len(rows)}, kills {counts['kills']}, "
              f"retries {counts['retries']}, acknowledged on a retry as already stored {counts['found_on_retry']}")
        assert counts["kills"] == 3
        assert len(acknowledged) == SUBMISSIONS
        assert len(rows) == SUBMISSIONS, "a retried submission was stored twice (or one was lost)"
        assert stored == acknowledged  # each key once, under the id its client was given
        assert all(state == "queued" and "kind: train" in spec for _, _, state, spec in rows)  # no half-written row
        assert counts["retries"] > 0, "no request met a dead server: the kills proved nothing"
