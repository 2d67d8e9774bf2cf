"""Filling a job store fast, shared by bench/queue_tick.py and bench/queue_load.py (a helper,
not a bench): rows inserted straight through the Store's session in bulk (5,000 a statement),
not submitted one by one through the API (100,000 submissions would take minutes).

The queued rows are what the benches put behind the job they measure: USERS users, priorities
0 to 2, 1 to 4 CPUs each (and `gpus` GPUs each: a CPU-only cluster never admits a job that asks
for one, and the plan never reserves room for it, so such rows stay queued without holding the
measured job up), created a millisecond apart in submission order.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy import insert

from vae_service.core.placement import Bundles
from vae_service.queue.models import Job
from vae_service.queue.states import State
from vae_service.queue.store import Store

USERS = 50
CHUNK = 5000


def job_row(i: int, state: str, priority: int, cpus: int, user: str, at: datetime, gpus: float = 0.0) -> dict:
    """A jobs-table row of id `i` (16 hex digits) in `state`: one bundle of `cpus` CPUs (and
    `gpus` GPUs) per worker, one worker; its spec texts are placeholders (a tick never reads them)."""
    bundles = Bundles({"CPU": 1.0, "GPU": gpus / cpus}, cpus)
    return {"id": f"{i:016x}", "name": f"j{i}", "kind": "train", "priority": priority, "state": state, "attempts": 0,
            "submitted_by": user, "spec_submitted": "name: j\n", "overrides": "[]", "spec_normalised": "name: j\n",
            "resources": json.dumps(bundles.total, sort_keys=True), "bundles": bundles.to_json(), "preemptible": True,
            "preemptions": 0, "created_at": at, "updated_at": at,
            "running_since": at if state == State.RUNNING.value else None}


def queued_rows(first_id: int, n: int, start: datetime, seed: int = 0, gpus: float = 0.0) -> list[dict]:
    """`n` queued rows with ids first_id … first_id + n - 1 (see the module's docstring)."""
    rng = random.Random(seed)
    return [job_row(first_id + i, State.QUEUED.value, rng.choice((0, 1, 2)), rng.randint(1, 4), f"user{rng.randrange(USERS)}",
                    start + timedelta(seconds=1 + i / 1000), gpus=gpus) for i in range(n)]


def insert_rows(store: Store, rows: Iterable[dict]) -> None:
    """The rows, in one transaction."""
    rows = list(rows)
    with store.session() as session:
        for chunk in range(0, len(rows), CHUNK):
            session.execute(insert(Job), rows[chunk:chunk + CHUNK])
