"""The job store on SQLite and PostgreSQL (the same tests on both): migrations, jobs, the
transition table, cancel requests, ordering, metrics numbers, the dispatcher lock; and the
admission policy (pure)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
import sqlalchemy
from queue_support import BACKENDS, temporary_database

from vae_service.queue import scheduling
from vae_service.queue.db import current_revision, make_engine, upgrade
from vae_service.queue.leader import leadership_for
from vae_service.queue.models import Base
from vae_service.queue.states import TRANSITIONS, IllegalTransition, State, check
from vae_service.queue.store import NewJob, Store, UnknownJob


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    with temporary_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    yield Store(engine)
    engine.dispose()


def new(name="job", priority=0, key=None, cpus=1.0) -> NewJob:
    return NewJob(name=name, kind="train", priority=priority, submitted_by="tester", spec_submitted=f"name: {name}\n",
                  spec_normalised=f"name: {name}\nkind: train\n", resources={"CPU": cpus, "GPU": 0.0}, idempotency_key=key)


def test_migrations_build_the_models_schema_and_can_run_again(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    upgrade(engine)  # a restarted server migrates again: nothing to do, no error
    assert current_revision(engine) == "0002"
    inspector = sqlalchemy.inspect(engine)
    columns = {c["name"]: c["nullable"] for c in inspector.get_columns("jobs")}
    model = {c.name: c.nullable for c in Base.metadata.tables["jobs"].columns}
    assert columns == model
    assert any(set(u["column_names"]) == {"idempotency_key"} for u in inspector.get_unique_constraints("jobs")) or \
        any(i["unique"] and i["column_names"] == ["idempotency_key"] for i in inspector.get_indexes("jobs"))
    engine.dispose()


def test_add_get_list_filter_and_page(store):
    ids = [store.add(new(f"j{i}", priority=i))[0].id for i in range(5)]
    job = store.get(ids[2])
    assert (job.name, job.state, job.priority, job.attempts, job.submitted_by) == ("j2", "queued", 2, 0, "tester")
    assert job.resource_request == {"CPU": 1.0, "GPU": 0.0}
    assert job.created_at.tzinfo is not None
    page, total = store.list(limit=2, offset=1)
    assert total == 5 and [j.name for j in page] == ["j3", "j2"]  # newest first
    store.request_cancel(ids[0])
    cancelled, total = store.list(state="cancelled")
    assert total == 1 and cancelled[0].id == ids[0]
    with pytest.raises(UnknownJob):
        store.get("nope")


def test_idempotency_key_gives_one_job(store):
    first, created = store.add(new("a", key="k-1"))
    again, created_again = store.add(new("b", key="k-1"))
    assert created and not created_again and again.id == first.id and again.name == "a"
    assert store.list()[1] == 1
    # The database itself refuses a duplicate key (two API processes racing).
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        with store.session() as session:
            from vae_service.queue.models import Job

            clone = store.get(first.id)
            session.add(Job(**{c.name: getattr(clone, c.name) for c in Job.__table__.columns} | {"id": "other"}))


def test_transition_table_is_enforced_in_one_place():
    legal = {(old, new) for old, targets in TRANSITIONS.items() for new in targets}
    for old in State:
        for new in State:
            if (old, new) in legal:
                check("j", old, new)
            else:
                with pytest.raises(IllegalTransition):
                    check("j", old, new)
    assert ("queued", "running") not in {(a.value, b.value) for a, b in legal}  # must pass through submitted


def test_transitions_set_timestamps_and_refuse_illegal_moves(store):
    job, _ = store.add(new())
    with pytest.raises(IllegalTransition):
        store.transition(job.id, State.RUNNING)  # queued cannot skip submitted
    assert store.get(job.id).state == "queued"
    submitted = store.transition(job.id, State.SUBMITTED, ray_submission_id=job.id)
    assert submitted.submitted_at is not None and submitted.dispatch_latency_s >= 0
    running = store.transition(job.id, State.RUNNING)
    assert running.started_at is not None
    with pytest.raises(IllegalTransition):  # stale view: the caller thought it was still submitted
        store.transition(job.id, State.FAILED, only_from=[State.SUBMITTED])
    done = store.transition(job.id, State.SUCCEEDED, mlflow_run_id="abc")
    assert done.finished_at is not None and done.mlflow_run_id == "abc"
    for target in State:
        with pytest.raises(IllegalTransition):
            store.transition(job.id, target)
    assert store.get(job.id).state == "succeeded"


def test_cancel_requests(store):
    queued, _ = store.add(new("q"))
    assert store.request_cancel(queued.id).state == "cancelled"
    running, _ = store.add(new("r"))
    store.transition(running.id, State.SUBMITTED)
    store.transition(running.id, State.RUNNING)
    assert store.request_cancel(running.id).state == "cancelling"
    assert store.request_cancel(running.id).state == "cancelling"  # asking twice is fine
    store.transition(running.id, State.CANCELLED)
    with pytest.raises(IllegalTransition, match="cancelled: it cannot become cancelling"):
        store.request_cancel(running.id)


def test_concurrent_outcomes_one_wins(store):
    """The API's cancel and the dispatcher's outcome race for one job: exactly one applies."""
    job, _ = store.add(new())
    store.transition(job.id, State.SUBMITTED)
    store.transition(job.id, State.RUNNING)
    results, barrier = [], threading.Barrier(2)

    def attempt(target):
        barrier.wait()
        try:
            store.transition(job.id, target, only_from=[State.RUNNING])
            results.append(target)
        except IllegalTransition:
            results.append(None)

    threads = [threading.Thread(target=attempt, args=(t,)) for t in (State.SUCCEEDED, State.CANCELLING)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and store.get(job.id).state == winners[0].value


def test_queue_order_is_priority_then_age(store):
    a = store.add(new("a", priority=1))[0]
    time.sleep(0.01)
    b = store.add(new("b", priority=10))[0]
    time.sleep(0.01)
    c = store.add(new("c", priority=1))[0]
    time.sleep(0.01)
    d = store.add(new("d", priority=5))[0]
    assert [j.name for j in store.queued_in_order()] == ["b", "d", "a", "c"]
    assert [store.position(j) for j in (b, d, a, c)] == [0, 1, 2, 3]


def test_counts_latency_and_admitted_resources(store):
    jobs = [store.add(new(f"j{i}", cpus=i + 1))[0] for i in range(3)]
    store.transition(jobs[0].id, State.SUBMITTED)
    store.transition(jobs[1].id, State.SUBMITTED)
    store.transition(jobs[1].id, State.RUNNING)
    counts = store.counts()
    assert counts["queued"] == 1 and counts["submitted"] == 1 and counts["running"] == 1 and counts["failed"] == 0
    buckets, count, total = store.latency_histogram()
    assert count == 2 and total >= 0 and buckets[-1][1] == 2
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)  # cumulative
    assert store.admitted_resources() == {"CPU": 3.0, "GPU": 0.0}


LOCK_HOLDER = """
import sys, time
from vae_service.queue.db import make_engine
from vae_service.queue.leader import leadership_for
lead = leadership_for(make_engine(sys.argv[1]))
assert lead.acquire(timeout=10)
print("held", flush=True)
time.sleep(120)
"""


def test_one_dispatcher_at_a_time_and_a_killed_holder_frees_the_lock(db_url):
    engine = make_engine(db_url)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, db_url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = leadership_for(engine)
        started = time.monotonic()
        assert not second.acquire(timeout=1.0)  # a second dispatcher waits…
        assert time.monotonic() - started >= 0.9
        holder.kill()  # SIGKILL: no clean-up code runs
        holder.wait()
        assert second.acquire(timeout=10)  # …and takes over when the holder dies
        assert second.alive()
        third = leadership_for(engine)
        assert not third.acquire(timeout=0.3)
        second.release()
        assert third.acquire(timeout=5)
        third.release()
    finally:
        holder.kill()
        holder.wait()
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# admission policy (no database)


@dataclass
class Fake:
    id: str
    cpus: float
    gpus: float = 0.0
    resource_request: dict = field(init=False)

    def __post_init__(self):
        self.resource_request = {"CPU": self.cpus, "GPU": self.gpus}


def ids(jobs):
    return [j.id for j in jobs]


def test_admit_in_order_while_there_is_room():
    queue = [Fake("a", 1), Fake("b", 1), Fake("c", 1)]
    chosen, reserved = scheduling.admit(queue, {"CPU": 2, "GPU": 0}, {"CPU": 0})
    assert ids(chosen) == ["a", "b"] and reserved.id == "c"
    chosen, _ = scheduling.admit(queue, {"CPU": 2, "GPU": 0}, {"CPU": 2})
    assert chosen == []


def test_a_large_job_reserves_room_small_ones_cannot_overtake_it():
    queue = [Fake("big", 4), Fake("small", 1)]
    chosen, reserved = scheduling.admit(queue, {"CPU": 4, "GPU": 0}, {"CPU": 2})  # 2 free
    assert chosen == [] and reserved.id == "big"
    chosen, reserved = scheduling.admit(queue, {"CPU": 4, "GPU": 0}, {"CPU": 0})
    assert ids(chosen) == ["big"] and reserved.id == "small"


def test_backfill_uses_only_what_the_reservation_does_not_need():
    queue = [Fake("gpu", 1, gpus=1), Fake("cpu", 1)]  # the GPU is busy; CPUs are free
    chosen, reserved = scheduling.admit(queue, {"CPU": 4, "GPU": 1}, {"CPU": 1, "GPU": 1})
    assert ids(chosen) == ["cpu"] and reserved.id == "gpu"


def test_a_job_larger_than_the_cluster_blocks_nobody():
    queue = [Fake("huge", 64), Fake("small", 1)]
    chosen, reserved = scheduling.admit(queue, {"CPU": 2, "GPU": 0}, {})
    assert ids(chosen) == ["small"] and reserved is None
