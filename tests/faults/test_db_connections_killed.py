"""PostgreSQL kills the API's connections (`pg_terminate_backend`) while clients submit, list
and read jobs: each request either succeeds or fails cleanly (503 with a one-line reason, which
the client may retry with its Idempotency-Key); never a 500, never a half-written row."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy
from queue_support import PG_ADMIN_URL, start_server, temporary_database, tiny_spec_text

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
TOKEN = "fault-suite-token"
SECONDS, CLIENTS = 12, 8


def test_killed_connections_fail_cleanly_or_are_retried_and_leave_no_half_rows(tmp_path):
    with temporary_database("postgresql", tmp_path) as db_url:
        database = db_url.rsplit("/", 1)[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(VAE_API_TOKEN=f"tester:{TOKEN}", VAE_HOME=str(tmp_path / ".vae"), VAE_DB_URL=db_url)
        server = start_server(tmp_path, env, "--no-dispatcher")
        statuses: Counter = Counter()
        acknowledged: dict[str, str] = {}
        bad: list[str] = []
        stop = threading.Event()
        lock = threading.Lock()
        killed = 0

        def terminate_connections() -> None:
            nonlocal killed
            admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                while not stop.is_set():
                    killed += len(connection.execute(sqlalchemy.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db"),
                        {"db": database}).all())
                    time.sleep(0.3)
            admin.dispose()

        def client(worker: int) -> None:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
                n = 0
                while not stop.is_set():
                    n += 1
                    key = f"pg-{worker}-{n}-{uuid.uuid4().hex[:6]}"
                    for attempt in range(20):  # a client that retries 503s with its key
                        response = http.post("/jobs", content=tiny_spec_text(name=f"pg-{worker}-{n}"),
                                             headers={"Idempotency-Key": key, "Content-Type": "application/yaml"})
                        with lock:
                            statuses[response.status_code] += 1
                        if response.status_code != 503:
                            break
                        time.sleep(0.1)
                    if response.status_code in (200, 201):
                        acknowledged[key] = response.json()["id"]
                    elif response.status_code != 503:
                        bad.append(f"POST {response.status_code}: {response.text[:300]}")
                    listing = http.get("/jobs", params={"limit": 20})
                    with lock:
                        statuses[listing.status_code] += 1
                    if listing.status_code not in (200, 503):
                        bad.append(f"GET {listing.status_code}: {listing.text[:300]}")

        killer = threading.Thread(target=terminate_connections, daemon=True)
        killer.start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, i) for i in range(CLIENTS)]
            time.sleep(SECONDS)
            stop.set()
            for future in futures:
                future.result()
        killer.join(timeout=10)
        log = server.log()
        server.stop()

        engine = sqlalchemy.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT id, idempotency_key, state, spec_normalised, resources FROM jobs")).all()
        engine.dispose()
        print(f"\nconnections terminated {killed}; responses {dict(statuses)}; acknowledged {len(acknowledged)}; rows {len(rows)}")
        assert killed > 10, "the test killed too few connections to prove anything"
        assert not bad, bad[:5]
        assert statuses[500] == 0 and "Traceback" not in log
        assert statuses[201] > 0
        by_key = {key: job_id for job_id, key, *_ in rows}
        assert all(by_key.get(key) == job_id for key, job_id in acknowledged.items()), "an acknowledged job is missing"
        assert len(by_key) == len(rows), "a key was stored twice"
        assert all(state == "queued" and "kind: train" in spec and "CPU" in resources
                   for _, _, state, spec, resources in rows), "a half-written row"
