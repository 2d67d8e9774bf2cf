"""The job store on SQLite and PostgreSQL (the same tests on both): migrations, jobs, the
transition table, cancel requests, ordering, metrics numbers, the dispatcher lock; and the
admission policy (pure)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import itertools
import random
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Optional

import pytest
import sqlalchemy

from vae_service.core.capacity import EPSILON, summed
from vae_service.core.placement import Bundles, Cluster, Node
from vae_service.queue import scheduling
from vae_service.queue.db import current_revision, make_engine, upgrade
from vae_service.queue.leader import leadership_for
from vae_service.queue.models import Base, Job
from vae_service.queue.quotas import Quota
from vae_service.queue.states import ACTIVE, TRANSITIONS, IllegalTransition, State, check
from vae_service.queue.store import NewJob, Store, UnknownJob




def new(name="job", priority=0, key=None, cpus=1.0, user="tester") -> NewJob:
    return NewJob(name=name, kind="train", priority=priority, submitted_by=user, spec_submitted=f"name: {name}\n",
                  spec_normalised=f"name: {name}\nkind: train\n", resources={"CPU": cpus, "GPU": 0.0}, idempotency_key=key)


def test_migrations_build_the_models_schema_and_can_run_again(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    upgrade(engine)  # a restarted server migrates again: nothing to do, no error
    assert current_revision(engine) == "0007"
    inspector = sqlalchemy.inspect(engine)
    for table in ("jobs", "fair_share_usage"):  # 0007: fair share's history
        columns = {c["name"]: c["nullable"] for c in inspector.get_columns(table)}
        model = {c.name: c.nullable for c in Base.metadata.tables[table].columns}
        assert columns == model, table
    # Idempotency keys are unique per submitter (0003), no longer across the server.
    unique = [set(u["column_names"]) for u in inspector.get_unique_constraints("jobs")] + \
        [set(i["column_names"]) for i in inspector.get_indexes("jobs") if i["unique"]]
    assert {"submitted_by", "idempotency_key"} in unique and {"idempotency_key"} not in unique
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


def test_a_preempted_job_goes_back_in_line_and_counts_its_preemptions(store):
    job, _ = store.add(new("long"))
    store.transition(job.id, State.SUBMITTED, ray_submission_id=job.id)
    first = store.transition(job.id, State.RUNNING)
    assert first.running_since == first.started_at and first.preemptions == 0 and first.preemptible
    store.transition(job.id, State.PREEMPTING, only_from=[State.RUNNING])
    preempted = store.transition(job.id, State.PREEMPTED)
    assert preempted.preemptions == 1 and preempted.finished_at is None  # not over: it will resume
    assert store.counts()["preempted"] == 1 and store.preemptions() == 1
    store.transition(job.id, State.QUEUED, only_from=[State.PREEMPTED])
    assert [j.id for j in store.queue_head()] == [job.id]
    store.transition(job.id, State.SUBMITTED, ray_submission_id=f"{job.id}-1")
    again = store.transition(job.id, State.RUNNING)
    assert again.started_at == first.started_at and again.running_since > first.running_since  # the thrash guard's clock
    with pytest.raises(IllegalTransition):
        store.transition(job.id, State.PREEMPTED)  # only a job asked to stop ends preempted
    # A cancel while it waits in the queue as preempted ends it at once; while it stops, it wins.
    store.transition(job.id, State.PREEMPTING)
    assert store.request_cancel(job.id).state == "cancelling"
    other, _ = store.add(new("other"))
    for state in (State.SUBMITTED, State.RUNNING, State.PREEMPTING, State.PREEMPTED):
        store.transition(other.id, state)
    assert store.request_cancel(other.id).state == "cancelled"


def test_priority_changes_and_not_after_the_end(store):
    job, _ = store.add(new("p", priority=1))
    assert store.set_priority(job.id, 7).priority == 7
    store.request_cancel(job.id)
    with pytest.raises(IllegalTransition):
        store.set_priority(job.id, 9)


def _waiting_for_a_lock(engine) -> bool:
    """PostgreSQL: some other session of this database waits on a lock right now (SQLite has no
    such view: there the caller waits a fixed time instead)."""
    with engine.connect() as connection:
        return bool(connection.scalar(sqlalchemy.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")))


@pytest.mark.parametrize("first, second", [(State.SUCCEEDED, State.CANCELLING), (State.CANCELLING, State.SUCCEEDED)],
                         ids=["outcome-first", "cancel-first"])
def test_concurrent_outcomes_one_wins(store, first, second):
    """The API's cancel and the dispatcher's outcome race for one job, forced in order: the
    first transition has read, checked and written the row but not committed when the second
    starts; the second must wait for it (the row lock), then see its result and refuse
    (IllegalTransition) instead of overwriting it. No timing decides who wins."""
    from sqlalchemy import event

    job, _ = store.add(new())
    store.transition(job.id, State.SUBMITTED)
    store.transition(job.id, State.RUNNING)
    written, release, trying = threading.Event(), threading.Event(), threading.Event()
    holder: list[threading.Thread] = []
    racers: list[threading.Thread] = []
    order: list[str] = []  # "first commits" / "second locked", in the order they happened

    def pause_before_commit(session, _context):  # the first transition's UPDATE is sent, uncommitted
        if threading.current_thread() in holder:
            written.set()
            assert release.wait(30), "the test never released the first transaction"
            order.append("first commits")  # its COMMIT comes next: nobody can lock before it

    # The second's first statement is the one that takes the lock (SQLite: BEGIN IMMEDIATE, on
    # the whole file; PostgreSQL: SELECT … FOR UPDATE, on the row): it must not return before
    # the first commits.
    def second_tries(conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread() in racers and not trying.is_set():
            trying.set()  # the second is about to ask for the lock

    def second_locked(conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread() in racers and "second locked" not in order:
            order.append("second locked")

    results: dict[State, object] = {}

    def attempt(target):
        try:
            results[target] = store.transition(job.id, target, only_from=[State.RUNNING]).state
        except IllegalTransition as exc:
            results[target] = exc

    event.listen(store._sessions, "after_flush", pause_before_commit)
    event.listen(store.engine, "before_cursor_execute", second_tries)
    event.listen(store.engine, "after_cursor_execute", second_locked)
    try:
        holder.append(threading.Thread(target=attempt, args=(first,)))
        holder[0].start()
        assert written.wait(30), "the first transition never wrote"
        racers.append(threading.Thread(target=attempt, args=(second,)))
        racer = racers[0]
        racer.start()
        # The second really is trying: it is about to send the statement that takes the lock.
        assert trying.wait(30), "the second transition never asked for the lock"
        # And it is blocked there by the first's lock: on PostgreSQL the server says it is
        # waiting for a lock; SQLite has no such view, so give it a second it would not need.
        if store.engine.dialect.name == "postgresql":
            deadline = time.monotonic() + 10
            while not _waiting_for_a_lock(store.engine):
                assert time.monotonic() < deadline, "the second transition never waited for the row lock"
                time.sleep(0.05)
        else:
            racer.join(1.0)
        assert racer.is_alive() and second not in results and order == [], \
            f"the second transition did not wait: {results} {order}"
        release.set()
        holder[0].join(30)
        racer.join(30)
        assert not holder[0].is_alive() and not racer.is_alive(), "a transition is still stuck after the commit"
    finally:
        release.set()
        event.remove(store._sessions, "after_flush", pause_before_commit)
        event.remove(store.engine, "before_cursor_execute", second_tries)
        event.remove(store.engine, "after_cursor_execute", second_locked)
    # The second got the lock only once the first was let go to commit.
    assert order == ["first commits", "second locked"], order
    assert results[first] == first.value  # the first one applied
    assert isinstance(results[second], IllegalTransition), results[second]  # the second saw it and refused
    assert (results[second].old, results[second].new) == (first, second)
    assert store.get(job.id).state == first.value


def test_queue_order_is_priority_then_age(store):
    a = store.add(new("a", priority=1))[0]
    time.sleep(0.01)
    b = store.add(new("b", priority=10))[0]
    time.sleep(0.01)
    c = store.add(new("c", priority=1))[0]
    time.sleep(0.01)
    d = store.add(new("d", priority=5))[0]
    assert [j.name for j in store.queue_head()] == ["b", "d", "a", "c"]
    assert [store.position(j) for j in (b, d, a, c)] == [0, 1, 2, 3]


def test_the_front_of_the_queue_is_each_users_first_jobs_at_each_priority(store):
    """What a tick reads (queue_head) is bounded however long the queue: each user's first
    jobs at each priority, so another user's job is never hidden behind one user's thousands."""
    many = [store.add(new(f"m{i}", user="many"))[0] for i in range(40)]
    few = store.add(new("f0", user="few"))[0]
    urgent = [store.add(new(f"u{i}", priority=5, user="many"))[0] for i in range(2)]
    head = store.queue_head(per_user=16)
    assert [j.id for j in head] == [j.id for j in urgent + many[:16] + [few]]
    assert [j.id for j in store.queue_head(per_user=16, limit=5)] == [j.id for j in urgent + many[:3]]
    store.transition(many[0].id, State.SUBMITTED)  # admitted: the next one moves up
    assert [j.id for j in store.queue_head(per_user=16)][2:18] == [j.id for j in many[1:17]]


def statements_of(store, call):
    """(result of call(), [(statement, parameters)] it sent to the database)."""
    sent = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        sent.append((statement, parameters))

    sqlalchemy.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        result = call()
    finally:
        sqlalchemy.event.remove(store.engine, "before_cursor_execute", seen)
    return result, [(statement, parameters) for statement, parameters in sent if statement.lstrip().upper().startswith("SELECT")]


def test_the_front_of_the_queue_is_one_query_per_group_and_the_position_a_count_of_the_jobs_ahead(store):
    """What a tick and GET /jobs/{id} cost depends on the front of the queue and the jobs ahead,
    not on the queue's length: queue_head sends one query per (priority, user) group, one per
    priority that finds no user of it after its last, and one per priority that finds the next
    one down (and none below the last); position counts two ranges of the index, which SQLite walks
    only over the jobs ahead (the OR of the two it answered by reading every queued job)."""
    jobs = {(priority, user): [store.add(new(f"{user}-{priority}-{i}", priority=priority, user=user))[0] for i in range(6)]
            for priority in (0, 3) for user in ("ann", "bob", "cy")}
    urgent = store.add(new("urgent", priority=9, user="dee"))[0]
    head, sent = statements_of(store, lambda: store.queue_head(per_user=2))
    assert len(sent) == (len(jobs) + 1) + 3 + (3 + 1), [s for s, _ in sent]  # 7 groups; 3 priorities, then none
    expected = [urgent] + [job for user in ("ann", "bob", "cy") for job in jobs[3, user][:2]]
    assert [j.id for j in head[:7]] == [j.id for j in expected]
    assert {j.id for j in head[7:]} == {job.id for user in ("ann", "bob", "cy") for job in jobs[0, user][:2]}
    last = jobs[0, "cy"][-1]
    assert [store.position(j) for j in (urgent, jobs[3, "ann"][0], jobs[3, "bob"][0], last)] == [0, 1, 7, 36]
    _, sent = statements_of(store, lambda: store.position(urgent))
    assert len(sent) == 2
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as connection:
            for statement, parameters in sent:
                plan = " ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
                assert "ix_jobs_state_priority" in plan and ("priority>?" in plan or "priority=?" in plan), plan


def test_each_group_is_read_through_the_index_in_its_order_even_before_the_table_is_analysed(store):
    """queue_head's per-group queries walk the (state, priority, user, created) index in its own
    order, with no sort, on a large table the database has no statistics for yet (a bulk insert
    not yet analysed). With `priority = :p … ORDER BY user` instead of the row value, PostgreSQL
    was seen (bench/queue_load.py, 10,000 jobs queued) choosing the (state, priority, created)
    index and sorting a whole priority tier for every group: 0.5 s a tick."""
    at = datetime.now(timezone.utc)
    rows = [{"id": f"{i:016x}", "name": "j", "kind": "train", "priority": i % 3, "state": "queued", "attempts": 0,
             "submitted_by": f"user{i % 20}", "spec_submitted": "", "overrides": "[]", "spec_normalised": "",
             "resources": '{"CPU": 1.0}', "preemptible": True, "preemptions": 0,
             "created_at": at + timedelta(milliseconds=i), "updated_at": at} for i in range(6000)]
    with store.session() as session:
        session.execute(sqlalchemy.insert(Job), rows)
    head, sent = statements_of(store, store.queue_head)
    assert len(head) == 3 * 20 * 4
    groups = [(statement, parameters) for statement, parameters in sent if "ORDER BY" in statement]
    assert len(groups) == 3 * 20 + 3  # each group, and past each tier's last one
    explain = "EXPLAIN QUERY PLAN" if store.engine.dialect.name == "sqlite" else "EXPLAIN"
    with store.engine.connect() as connection:
        for statement, parameters in groups:
            plan = "\n".join(str(row[-1]) for row in connection.exec_driver_sql(f"{explain} {statement}", parameters))
            assert "ix_jobs_state_priority_user_created" in plan and "Sort" not in plan and "TEMP B-TREE" not in plan, plan


def test_in_states_reads_only_the_given_ids(store):
    """The dispatcher's start-up looks up the queued jobs Ray knows by id, not the whole queue."""
    a, b, c = (store.add(new(name))[0] for name in "abc")
    store.transition(b.id, State.SUBMITTED)
    found = store.in_states([State.QUEUED], ids=[a.id, b.id, "not-a-job", a.id])
    assert [j.id for j in found] == [a.id]
    assert {j.id for j in store.in_states([State.QUEUED])} == {a.id, c.id}
    many = [f"{i:016x}" for i in range(1200)] + [c.id]  # more ids than one query takes
    assert [j.id for j in store.in_states([State.QUEUED], ids=many)] == [c.id]
    assert store.in_states([State.QUEUED], ids=[]) == []


def test_the_per_tick_queries_leave_the_spec_texts_in_the_database(store):
    """The dispatcher's every-tick reads (queued in order, admitted jobs) and the job list select no spec text;
    reading one from such a row raises instead of quietly querying; `get` has it."""
    job = store.add(NewJob(name="big", kind="train", priority=0, submitted_by="tester", spec_submitted="x" * 200_000,
                           spec_normalised="y" * 200_000, resources={"CPU": 1.0}))[0]
    statements, capturing = [], [True]

    def seen(conn, cursor, statement, parameters, context, executemany):
        if capturing[0]:
            statements.append(statement)

    sqlalchemy.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        queued = store.queue_head()
        capturing[0] = False  # (a transition reads the whole row)
        store.transition(job.id, State.SUBMITTED)
        capturing[0] = True
        active = store.in_states([State.SUBMITTED])
        listed, _ = store.list()  # GET /jobs, too, shows no spec
    finally:
        sqlalchemy.event.remove(store.engine, "before_cursor_execute", seen)
    assert [j.id for j in queued] == [j.id for j in active] == [j.id for j in listed] == [job.id]
    assert statements and not any("spec_submitted" in s or "spec_normalised" in s for s in statements), statements
    with pytest.raises(sqlalchemy.exc.SQLAlchemyError):  # not loaded, and no second query
        active[0].spec_normalised
    assert active[0].resource_request == {"CPU": 1.0}  # the rest is there
    assert store.get(job.id).spec_normalised == "y" * 200_000


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
    assert summed(store.in_states(ACTIVE)) == {"CPU": 3.0, "GPU": 0.0}


def test_idempotency_keys_are_unique_per_submitter(store):
    alice, created = store.add(replace(new("a", key="k-1"), submitted_by="alice"))
    bob, bob_created = store.add(replace(new("b", key="k-1"), submitted_by="bob"))
    again, again_created = store.add(replace(new("c", key="k-1"), submitted_by="bob"))
    assert created and bob_created and not again_created
    assert alice.id != bob.id == again.id and again.name == "b"
    assert store.by_idempotency_key("alice", "k-1").id == alice.id and store.by_idempotency_key("carol", "k-1") is None
    assert [j.id for j in store.list(submitted_by="bob")[0]] == [bob.id] and store.list()[1] == 2


def test_migration_0003_keeps_the_jobs_of_an_0002_store(db_url):
    """A server upgraded in place: its jobs survive, their keys become per submitter."""
    from alembic import command
    from alembic.config import Config

    from vae_service.queue.db import MIGRATIONS

    engine = make_engine(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(
            "INSERT INTO jobs (id, name, kind, priority, state, attempts, submitted_by, spec_submitted, overrides, "
            "spec_normalised, resources, idempotency_key, created_at, updated_at) VALUES ('old1', 'old', 'train', 3, "
            "'queued', 0, 'alice', 'name: old', '[]', 'name: old', '{\"CPU\": 1.0}', 'k-1', :now, :now)"),
            {"now": datetime(2026, 1, 1)})
    upgrade(engine)
    store = Store(engine)
    old = store.get("old1")
    assert (old.name, old.priority, old.submitted_by, old.idempotency_key, old.waiting_reason) == ("old", 3, "alice", "k-1", None)
    again, created = store.add(replace(new("x", key="k-1"), submitted_by="alice"))
    assert not created and again.id == "old1"
    assert store.add(replace(new("x", key="k-1"), submitted_by="bob"))[1]  # another submitter: a new job
    engine.dispose()


def test_waiting_reasons_are_written_only_to_queued_jobs(store):
    waiting, admitted = store.add(new("waiting"))[0], store.add(new("admitted"))[0]
    store.transition(admitted.id, State.SUBMITTED)
    store.set_waiting_reasons({waiting.id: "waiting for 2 CPUs to be free (2 of 2 CPUs in use)", admitted.id: "stale"})
    assert store.get(waiting.id).to_dict()["waiting_reason"] == "waiting for 2 CPUs to be free (2 of 2 CPUs in use)"
    assert store.get(admitted.id).waiting_reason is None
    store.set_waiting_reasons({waiting.id: None})
    assert store.get(waiting.id).waiting_reason is None


def test_many_waiting_reasons_are_one_statement_per_distinct_reason(store):
    """A first tick over a long queue stores hundreds of reasons, most of them the same."""
    jobs = [store.add(new(f"j{i}"))[0] for i in range(12)]
    reasons = {job.id: "asks for 1 GPU, the cluster has 0 GPUs" if i % 3 else f"waiting behind {i}" for i, job in enumerate(jobs)}
    updates = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        updates.append(statement) if statement.lstrip().upper().startswith("UPDATE") else None

    sqlalchemy.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        store.set_waiting_reasons(reasons)
    finally:
        sqlalchemy.event.remove(store.engine, "before_cursor_execute", seen)
    assert len(updates) == len(set(reasons.values())) == 5
    assert {job.id: store.get(job.id).waiting_reason for job in jobs} == reasons


def test_a_reason_belongs_to_one_state_and_a_transition_clears_it(store):
    job = store.add(new("placed-late"))[0]
    store.set_waiting_reasons({job.id: "waiting for 2 CPUs to be free (2 of 2 CPUs in use)"})
    store.transition(job.id, State.SUBMITTED)
    assert store.get(job.id).waiting_reason is None  # admitted: the queued reason is gone, not shown stale later
    store.transition(job.id, State.RUNNING)
    store.set_waiting_reasons({job.id: "stale"})  # only queued jobs by default
    assert store.get(job.id).waiting_reason is None
    store.set_waiting_reasons({job.id: "waiting for Ray to place its workers"}, State.RUNNING)
    assert store.get(job.id).to_dict()["waiting_reason"] == "waiting for Ray to place its workers"
    store.transition(job.id, State.SUCCEEDED)
    assert store.get(job.id).to_dict()["waiting_reason"] is None and store.get(job.id).waiting_reason is None


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


_created = itertools.count()
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


@dataclass
class Fake:
    """A job as scheduling sees one (queued, or admitted when `state` says so)."""

    id: str
    cpus: float
    gpus: float = 0.0
    priority: int = 0
    submitted_by: str = "u"
    state: str = "queued"
    preemptible: bool = True
    running_for_s: Optional[float] = None  # running: since NOW minus this
    workers: int = 1  # its bundles: `workers` equal shares of cpus and gpus
    strategy: str = "PACK"
    resource_request: dict = field(init=False)
    created_at: datetime = field(init=False)
    running_since: Optional[datetime] = field(init=False)

    def __post_init__(self):
        self.resource_request = {"CPU": self.cpus, "GPU": self.gpus}
        self.created_at = NOW - timedelta(hours=1) + timedelta(seconds=next(_created))
        self.running_since = NOW - timedelta(seconds=self.running_for_s) if self.running_for_s is not None else None

    @property
    def worker_bundles(self) -> Bundles:
        return Bundles({"CPU": self.cpus / self.workers, "GPU": self.gpus / self.workers}, self.workers, self.strategy)


def held(cpus: float = 0.0, gpus: float = 0.0) -> list[Fake]:
    """Admitted jobs holding that much (someone else's, at top priority: never preempted)."""
    return [Fake("held", cpus, gpus, priority=10**6, submitted_by="other", state="running", running_for_s=10**6)]


def ids(jobs):
    return [j.id for j in jobs]


def admit(queue, totals, active, **rules):
    """(jobs admitted now, the job the room is reserved for)."""
    plan = scheduling.plan(queue, totals, active, scheduling.Rules(**rules), now=NOW)
    return plan.chosen, plan.reserved_for


def test_planning_a_priority_tier_at_a_time_decides_as_planning_the_whole_front_at_once():
    """The dispatcher plans (and hands to Ray) one tier at a time, highest first: the same
    admissions, reservation, victims and reasons as one plan over every tier, on random queues
    over a busy two-node cluster (quotas, fair share, preemption, fragmentation all in play)."""
    rng = random.Random(7)
    for case in range(60):
        active = [running(f"r{i}", rng.choice((1, 2)), priority=rng.choice((0, 1, 2)), for_s=rng.choice((30, 900)),
                          user=rng.choice("ab")) for i in range(rng.randint(0, 3))]
        queue = [Fake(f"q{i}", rng.choice((1, 2, 3, 5)), priority=rng.choice((0, 1, 5, 9)), submitted_by=rng.choice("abcd"),
                      workers=rng.choice((1, 2)), strategy=rng.choice(("PACK", "SPREAD"))) for i in range(rng.randint(1, 12))]
        queue.sort(key=lambda job: (-job.priority, job.created_at))
        rules = scheduling.Rules(quota=Quota(cpus=4.0))
        whole = scheduling.plan(queue, two_nodes(3.0), active, rules, now=NOW)
        planner = scheduling.Planner(two_nodes(3.0), active, rules, now=NOW)
        chosen, preempt, reasons = [], [], {}
        for _, tier in itertools.groupby(queue, key=lambda job: job.priority):
            step = planner.consider(list(tier))
            chosen, preempt, reasons = chosen + step.chosen, preempt + step.preempt, reasons | step.reasons
        assert (ids(chosen), ids(preempt), reasons) == (ids(whole.chosen), ids(whole.preempt), whole.reasons), case
        assert planner.reserved_for is whole.reserved_for, case


def test_admit_in_order_while_there_is_room():
    queue = [Fake("a", 1), Fake("b", 1), Fake("c", 1)]
    chosen, reserved = admit(queue, {"CPU": 2, "GPU": 0}, held(cpus=0))
    assert ids(chosen) == ["a", "b"] and reserved.id == "c"
    chosen, _ = admit(queue, {"CPU": 2, "GPU": 0}, held(cpus=2))
    assert chosen == []


def test_a_large_job_reserves_room_small_ones_cannot_overtake_it():
    queue = [Fake("big", 4), Fake("small", 1)]
    chosen, reserved = admit(queue, {"CPU": 4, "GPU": 0}, held(cpus=2))  # 2 free
    assert chosen == [] and reserved.id == "big"
    chosen, reserved = admit(queue, {"CPU": 4, "GPU": 0}, held(cpus=0))
    assert ids(chosen) == ["big"] and reserved.id == "small"


def test_backfill_uses_only_what_the_reservation_does_not_need():
    queue = [Fake("gpu", 1, gpus=1), Fake("cpu", 1)]  # the GPU is busy; CPUs are free
    chosen, reserved = admit(queue, {"CPU": 4, "GPU": 1}, held(cpus=1, gpus=1))
    assert ids(chosen) == ["cpu"] and reserved.id == "gpu"


def test_a_job_larger_than_the_cluster_blocks_nobody():
    queue = [Fake("huge", 64), Fake("small", 1)]
    chosen, reserved = admit(queue, {"CPU": 2, "GPU": 0}, [])
    assert ids(chosen) == ["small"] and reserved is None


def test_why_a_job_waits_with_the_numbers():
    queue = [Fake("big", 4), Fake("mid", 2), Fake("huge", 64), Fake("gpu", 1, gpus=1), Fake("tiny", 0.5)]
    plan = scheduling.plan(queue, {"CPU": 4, "GPU": 0}, held(cpus=2))  # 2 of 4 in use
    assert ids(plan.chosen) == [] and plan.reserved_for.id == "big"
    assert plan.reasons == {
        "big": "waiting for 4 CPUs to be free (2 of 4 CPUs in use)",
        "mid": "waiting for 2 CPUs to be free (2 of 4 CPUs in use, the rest held for job big, ranked ahead)",
        "huge": "asks for 64 CPUs, the cluster has 4 CPUs: lower resources.cpus_per_worker or resources.num_workers",
        "gpu": "asks for 1 GPU, the cluster has 0 GPUs: lower resources.gpus_per_worker or resources.num_workers "
               "(or set resources.use_gpu: false)",
        "tiny": "waiting for 0.5 CPUs to be free (2 of 4 CPUs in use, the rest held for job big, ranked ahead)",
    }
    plan = scheduling.plan([Fake("a", 2), Fake("b", 1)], {"CPU": 2, "GPU": 0}, held(cpus=1))
    assert plan.reasons == {"a": "waiting for 2 CPUs to be free (1 of 2 CPUs in use)",
                            "b": "waiting for 1 CPU to be free (1 of 2 CPUs in use, the rest held for job a, ranked ahead)"}
    plan = scheduling.plan([Fake("a", 1), Fake("b", 1)], {"CPU": 2, "GPU": 0}, [])
    assert ids(plan.chosen) == ["a", "b"] and plan.reasons == {}  # admitted jobs have no reason


def test_a_running_job_ray_has_not_placed_is_told_with_its_bundles_and_the_live_nodes():
    reason = scheduling.unplaced_in_ray([{"CPU": 2.0}, {"CPU": 2.0, "GPU": 0.0}], "NO_RESOURCES",
                                        [{"CPU": 0.0, "GPU": 0.0}, {"CPU": 2.0, "GPU": 0.0}])
    assert reason.startswith("waiting for Ray to place its workers (2 × 2 CPUs; Ray: no resources); "
                             "live nodes: 1 × 0 CPUs, 1 × 2 CPUs. It goes on"), reason
    gpus = scheduling.unplaced_in_ray([{"CPU": 1.0, "GPU": 1.0}], "PENDING_NODE_ASSIGNMENT", [{"CPU": 8.0, "GPU": 1.0}] * 3)
    assert "(1 × 1 CPU + 1 GPU; Ray: pending node assignment); live nodes: 3 × 8 CPUs + 1 GPU." in gpus, gpus


def test_a_job_short_of_two_resources_names_both():
    reason = scheduling.too_large({"CPU": 8.0, "GPU": 2.0}, {"CPU": 4.0, "GPU": 1.0})
    assert reason == ("asks for 8 CPUs, the cluster has 4 CPUs: lower resources.cpus_per_worker or resources.num_workers; "
                      "asks for 2 GPUs, the cluster has 1 GPU: lower resources.gpus_per_worker or resources.num_workers "
                      "(or set resources.use_gpu: false)")
    assert scheduling.waiting_for_room({"CPU": 2.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 0.0}) == \
        "waiting for 2 CPUs and 1 GPU to be free (3 of 4 CPUs, 1 of 1 GPU in use)"


# ---- the team queue: preemption, quotas, fair share -------------------------------------------

CLUSTER = {"CPU": 4.0, "GPU": 0.0}


def running(name, cpus, priority=1, for_s=600.0, user="u", state="running", **fields):
    return Fake(name, cpus, priority=priority, submitted_by=user, state=state, running_for_s=for_s, **fields)


def test_an_urgent_job_preempts_the_fewest_lowest_priority_most_recent_jobs():
    active = [running("old-low", 2, priority=1, for_s=900), running("new-low", 2, priority=1, for_s=300),
              running("mid", 2, priority=5), running("one", 1, priority=1, for_s=130)]
    totals = {"CPU": 7.0, "GPU": 0.0}  # all 7 in use
    plan = scheduling.plan([Fake("urgent", 2, priority=10)], totals, active, now=NOW)
    # Two CPUs: one 2-CPU job is enough (not "one" + another); of the two at priority 1, the
    # one started last loses the least work.
    assert ids(plan.preempt) == ["new-low"] and plan.chosen == [] and plan.reserved_for.id == "urgent"
    assert plan.reasons["urgent"] == "waiting for preempted job new-low to checkpoint and stop"
    plan = scheduling.plan([Fake("urgent", 4, priority=10)], totals, active, now=NOW)
    assert ids(plan.preempt) == ["new-low", "old-low"]  # 4 CPUs: two jobs, both at the lowest priority
    plan = scheduling.plan([Fake("urgent", 5, priority=10)], totals, active, now=NOW)
    assert sorted(ids(plan.preempt)) == ["new-low", "old-low", "one"]  # never "mid" while lower ones do


def test_preemption_never_touches_equal_priority_protected_or_young_jobs():
    totals = {"CPU": 2.0, "GPU": 0.0}
    for blocker in (running("same", 2, priority=10), running("pinned", 2, preemptible=False),
                    running("young", 2, for_s=5), Fake("starting", 2, state="submitted")):
        plan = scheduling.plan([Fake("urgent", 2, priority=10)], totals, [blocker], now=NOW,
                               rules=scheduling.Rules(preempt_min_run_s=60))
        assert plan.preempt == [], blocker.id
        assert plan.reasons["urgent"] == "waiting for 2 CPUs to be free (2 of 2 CPUs in use)"
    # Not more than once: while the victim is stopping, no second victim is chosen for the same room.
    stopping = running("low", 2, state="preempting")
    plan = scheduling.plan([Fake("urgent", 2, priority=10)], {"CPU": 4.0, "GPU": 0.0}, [stopping, running("other", 2)], now=NOW)
    assert plan.preempt == [] and plan.reasons["urgent"] == "waiting for preempted job low to checkpoint and stop"


def test_the_room_freed_for_an_urgent_job_is_not_taken_by_others():
    queue = [Fake("urgent", 2, priority=10), Fake("small", 1, priority=1)]
    chosen, reserved = admit(queue, {"CPU": 3.0, "GPU": 0.0}, [running("low", 2)])
    assert chosen == [] and reserved.id == "urgent"  # 1 CPU free, but it is held for urgent


def test_exact_search_falls_back_to_greedy_on_many_candidates(monkeypatch):
    from vae_service.queue import preemption

    monkeypatch.setattr(preemption, "SEARCH_LIMIT", 3)
    active = [running(f"r{i}", 1, for_s=200 + i) for i in range(6)]
    plan = scheduling.plan([Fake("urgent", 3, priority=10)], {"CPU": 6.0, "GPU": 0.0}, active, now=NOW)
    assert ids(plan.preempt) == ["r0", "r1", "r2"]  # the three started last, no more


def two_nodes(cpus: float = 2.0) -> Cluster:
    return Cluster([Node("n1", {"CPU": cpus, "GPU": 0.0}), Node("n2", {"CPU": cpus, "GPU": 0.0})])


def test_a_job_waits_while_its_room_is_split_across_nodes_and_says_so():
    # The case: X (2 × 1 CPU, spread) runs one worker on each 2-CPU node; C (1 × 2 CPUs)
    # must wait although 2 CPUs are free in all, and runs once X has ended.
    x = running("X", 2, workers=2, strategy="SPREAD")
    for placed in ({"X": ["n1", "n2"]}, None):  # where Ray says X is; or, not yet known, where Ray would put it
        plan = scheduling.plan([Fake("C", 2)], two_nodes(), [x], now=NOW, placed=placed)
        assert plan.chosen == [] and plan.reserved_for.id == "C"
        assert plan.reasons["C"] == ("waiting for room on the nodes for 1 × 2 CPUs: 2 CPUs free in all, "
                                     "but no node has 2 CPUs free (1 CPU free on each of 2 nodes)")
    assert ids(scheduling.plan([Fake("C", 2)], two_nodes(), [], now=NOW).chosen) == ["C"]
    # Packed, X fills one node and C fits on the other.
    packed = running("X", 2, workers=2)
    assert ids(scheduling.plan([Fake("C", 2)], two_nodes(), [packed], now=NOW).chosen) == ["C"]
    # Ray's word wins over where the queue would have put it.
    assert scheduling.plan([Fake("C", 2)], two_nodes(), [packed], now=NOW, placed={"X": ["n1", "n2"]}).chosen == []


def test_a_job_no_node_could_ever_hold_waits_with_the_node_sizes():
    plan = scheduling.plan([Fake("big", 3), Fake("small", 1)], two_nodes(), [], now=NOW)
    assert ids(plan.chosen) == ["small"] and plan.reserved_for is None  # never reserved for: it would block all
    assert plan.reasons["big"] == ("its workers (1 × 3 CPUs) never fit on the cluster's nodes, even empty: "
                                   "no node has 3 CPUs (2 CPUs free on each of 2 nodes): lower "
                                   "resources.cpus_per_worker or resources.num_workers")


def test_preemption_frees_room_on_a_node_where_the_urgent_job_fits():
    # Two CPUs on one node are needed. The two most recently started jobs (p, r) free 2 CPUs
    # in all, but one on each node; the fewest victims that free one node are p and q.
    active = [running("p", 1, for_s=1000), running("q", 1, for_s=3000), running("r", 1, for_s=2000), running("s", 1, for_s=4000)]
    placed = {"p": ["n1"], "q": ["n1"], "r": ["n2"], "s": ["n2"]}
    plan = scheduling.plan([Fake("urgent", 2, priority=10)], two_nodes(), active, now=NOW, placed=placed)
    assert ids(plan.preempt) == ["p", "q"]
    one_node = scheduling.plan([Fake("urgent", 2, priority=10)], {"CPU": 4.0, "GPU": 0.0}, active, now=NOW)
    assert ids(one_node.preempt) == ["p", "r"]  # one pool: the two started last


def test_bundles_are_placed_as_ray_places_them():
    nodes = Cluster([Node("a", {"CPU": 4.0}), Node("b", {"CPU": 2.0}), Node("c", {"CPU": 1.0})])
    assert nodes.where(Bundles({"CPU": 1.0}, 3)) == ["a", "a", "a"]  # pack: the fewest nodes
    assert nodes.where(Bundles({"CPU": 1.0}, 3, "SPREAD")) == ["a", "b", "c"]  # spread: one per node
    assert nodes.where(Bundles({"CPU": 1.0}, 5, "SPREAD")) == ["a", "b", "c", "a", "b"]
    assert nodes.where(Bundles({"CPU": 2.0}, 4)) is None  # 6 CPUs free, room for three 2-CPU bundles
    nodes.take(Bundles({"CPU": 1.0}, 3, "SPREAD"))
    assert [node.free["CPU"] for node in nodes.nodes] == [3.0, 1.0, 0.0]
    # Ray reports one of a job's four bundles (a sweep between trials): the other three count where they would go.
    assert nodes.copy().take(Bundles({"CPU": 1.0}, 4), ["b"]) == ["b", "a", "a", "a"]
    assert nodes.short(Bundles({"CPU": 4.0})) == "no node has 4 CPUs free (3 CPUs free on 1 node, 1 CPU free on 1 node, 0 CPUs free on 1 node)"
    assert nodes.short(Bundles({"CPU": 1.0}, 5)) == ("the nodes have room for 4 of its 5 workers (3 CPUs free on 1 node, "
                                                     "1 CPU free on 1 node, 0 CPUs free on 1 node)")


def test_the_plans_view_of_the_nodes_answers_as_the_nodes_do():
    # scheduling.Placing remembers how many bundles of a kind the nodes can hold (a tick over
    # 1,000 nodes would otherwise walk them all for each queued job): as jobs are placed on it,
    # it must still answer exactly as Cluster does.
    rng = random.Random(0)
    for _ in range(200):
        nodes = Cluster([Node(f"n{i}", {"CPU": float(rng.choice((2, 4, 8))), "GPU": float(rng.choice((0, 1, 2)))})
                         for i in range(rng.randint(1, 5))])
        view = scheduling.Placing(nodes.copy())
        for _ in range(12):
            bundles = Bundles({"CPU": float(rng.choice((1, 2, 3))), "GPU": float(rng.choice((0, 1)))}, rng.randint(1, 4),
                              rng.choice(("PACK", "SPREAD")))
            expected = nodes.where(bundles)
            assert view.can_place(bundles) == (expected is not None)
            assert view.where(bundles) == expected
            assert view.short(bundles) == nodes.short(bundles)
            if expected is not None and rng.random() < 0.5:
                nodes.take(bundles, expected)
                view.take(bundles, expected)


def test_the_nodes_with_room_are_kept_as_jobs_come_and_go():
    # Cluster checks a bundle only against the nodes with anything free, a set it keeps as jobs
    # are placed and freed: after any sequence (oversubscribed nodes included) it must place as a
    # cluster built afresh from the same free room, which checks every node.
    rng = random.Random(1)
    for _ in range(200):
        nodes = Cluster([Node(f"n{i}", {"CPU": float(rng.choice((1, 2, 4))), "GPU": float(rng.choice((0, 1)))})
                         for i in range(rng.randint(1, 6))])
        held: list[tuple[Bundles, list[str]]] = []
        for _ in range(15):
            bundles = Bundles({"CPU": float(rng.choice((1, 2))), "GPU": float(rng.choice((0, 0, 1)))}, rng.randint(1, 3),
                              rng.choice(("PACK", "SPREAD")))
            if held and rng.random() < 0.4:
                gone, where = held.pop(rng.randrange(len(held)))
                nodes.give(gone.each, where)
            else:  # placed where it fits, else (Ray oversubscribed) on the roomiest nodes
                held.append((bundles, nodes.take(bundles)))
            afresh = Cluster([Node(n.id, dict(n.total), dict(n.free)) for n in nodes.nodes])
            full = {n.id for n in nodes.nodes if not any(v > EPSILON for v in n.free.values())}
            assert {n.id for n in nodes.candidates(bundles.each)} == {n.id for n in nodes.nodes} - full
            assert nodes.where(bundles) == afresh.where(bundles)


def test_a_job_over_its_users_quota_waits_with_the_reason_and_blocks_nobody():
    quota = Quota(gpus=2, cpus=8, jobs=3)
    totals = {"CPU": 16.0, "GPU": 4.0}
    active = [running("a1", 1, user="alice", gpus=2)]
    queue = [Fake("a2", 1, gpus=1, submitted_by="alice"), Fake("b1", 1, gpus=1, submitted_by="bob")]
    plan = scheduling.plan(queue, totals, active, scheduling.Rules(quota=quota), now=NOW)
    assert ids(plan.chosen) == ["b1"] and plan.reserved_for is None
    assert plan.reasons == {"a2": "user quota of 2 GPUs in use (2 held, this job asks for 1)"}
    jobs_quota = scheduling.Rules(quota=Quota(jobs=1))
    plan = scheduling.plan([Fake("a2", 1, submitted_by="alice")], totals, active, jobs_quota, now=NOW)
    assert plan.reasons == {"a2": "user quota of 1 running job in use"}
    # Counted as the pass admits: alice's third and fourth CPU job of 3 CPUs each pass 8 CPUs.
    queue = [Fake(f"c{i}", 3, submitted_by="carol") for i in range(3)]
    plan = scheduling.plan(queue, totals, [], scheduling.Rules(quota=quota), now=NOW)
    assert ids(plan.chosen) == ["c0", "c1"] and plan.reasons == {"c2": "user quota of 8 CPUs in use (6 held, this job asks for 3)"}
    assert quota.never_fits({"CPU": 1.0, "GPU": 3.0}) == "asks for 3 GPUs, more than the user quota of 2 GPUs"
    assert quota.never_fits({"CPU": 8.0, "GPU": 2.0}) is None


def test_fair_share_equal_priority_goes_to_the_user_holding_least():
    totals = {"CPU": 4.0, "GPU": 0.0}
    active = [running("a-running", 2, user="alice")]
    # alice's jobs are older, but she holds half the cluster and bob holds nothing.
    queue = [Fake("a1", 1, submitted_by="alice"), Fake("a2", 1, submitted_by="alice"), Fake("b1", 1, submitted_by="bob"),
             Fake("b2", 1, submitted_by="bob"), Fake("b3", 1, submitted_by="bob")]
    plan = scheduling.plan(queue, totals, active, now=NOW)
    assert ids(plan.chosen) == ["b1", "b2"]  # bob 0 → 1/4; still below alice's 2/4 → b2; then full
    # Priority still comes first: a higher-priority job of the bigger user goes before.
    queue = [Fake("a-high", 1, priority=5, submitted_by="alice"), Fake("b-low", 1, submitted_by="bob")]
    assert ids(scheduling.plan(queue, totals, active, now=NOW).chosen) == ["a-high", "b-low"]
    # Equal shares: the older job goes first; shares alternate between users as jobs are admitted.
    queue = [Fake("x1", 1, submitted_by="x"), Fake("x2", 1, submitted_by="x"), Fake("y1", 1, submitted_by="y"),
             Fake("y2", 1, submitted_by="y")]
    assert ids(scheduling.plan(queue, totals, [], now=NOW).chosen) == ["x1", "y1", "x2", "y2"]
