"""Operations on the job store: the source of truth for every job.

Each method is one short transaction. A state change reads the row under a lock (SELECT … FOR
UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE locks the whole file), checks the transition
table (`states.check`) and writes, so the API (cancel) and the dispatcher (outcomes) never
overwrite each other's change.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Iterator, Mapping, Optional

from sqlalchemy import Engine, bindparam, case, func, select, tuple_
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from vae_service.core.placement import Bundles
from vae_service.queue.db import session_factory
from vae_service.queue.models import Job, UserUsage, utcnow
from vae_service.queue.quotas import FairShare
from vae_service.queue.states import TERMINAL, WAITING, IllegalTransition, State, check

MAX_ERROR_CHARS = 4000
# Buckets of the dispatch-latency histogram (seconds, created → handed to Ray).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# The dispatcher reads the front of the queue and every active job on every tick; their spec
# texts (up to 1 MiB each, twice) are not loaded there, and reading one from such a row raises
# instead of querying. The front (queue_head): each user's first HEAD_PER_USER jobs at each
# priority (HEAD_LIMIT in all, a safety cap). A user with more jobs that fit gets them over the
# next ticks; the rest of the queue costs a tick nothing.
HEAD_PER_USER = 4
HEAD_LIMIT = 5000
# A user whose decayed usage fell below this (share-seconds) and who holds nothing is forgotten.
FORGET_USAGE_S = 1.0
IDS_PER_QUERY = 500  # ids in one IN (…): well within every database's limit on parameters
WITHOUT_SPECS = (defer(Job.spec_submitted, raiseload=True), defer(Job.spec_normalised, raiseload=True))


class UnknownJob(Exception):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"no job {job_id!r}")


def in_batches(ids: list[str]) -> Iterator[list[str]]:
    """`ids` IDS_PER_QUERY at a time: one IN (…) each."""
    for at in range(0, len(ids), IDS_PER_QUERY):
        yield ids[at:at + IDS_PER_QUERY]


def new_job_id() -> str:
    """16 hex digits: short enough to type, random enough to share one Ray cluster."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class NewJob:
    name: str
    kind: str
    priority: int
    submitted_by: str
    spec_submitted: str
    spec_normalised: str
    resources: dict[str, float]
    bundles: Optional[Bundles] = None  # its workers, node by node (None: one bundle of `resources`)
    overrides: tuple[str, ...] = ()
    idempotency_key: Optional[str] = None
    preemptible: bool = True
    id: str = field(default_factory=new_job_id)
    run_dir: Optional[str] = None  # where it runs (jobs.locations.queued_run_dir of its id)


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = session_factory(engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    # ---- create and read ---------------------------------------------------------------------

    def add(self, new: NewJob) -> tuple[Job, bool]:
        """Stores a queued job; returns (job, created). With an idempotency key this submitter
        has already used, returns that job and False (the same request sent twice is one job).
        Keys are per submitter: another user's same key is another job. An empty key is no key
        (stored as one, a second empty key would break the unique constraint: a 503)."""
        if new.idempotency_key:
            existing = self.by_idempotency_key(new.submitted_by, new.idempotency_key)
            if existing is not None:
                return existing, False
        now = utcnow()
        job = Job(
            id=new.id, run_dir=new.run_dir, name=new.name, kind=new.kind, priority=new.priority, state=State.QUEUED.value,
            attempts=0, submitted_by=new.submitted_by, spec_submitted=new.spec_submitted,
            overrides=json.dumps(list(new.overrides)), spec_normalised=new.spec_normalised,
            resources=json.dumps(new.resources, sort_keys=True),
            bundles=new.bundles.to_json() if new.bundles is not None else None, idempotency_key=new.idempotency_key or None,
            preemptible=new.preemptible, preemptions=0, created_at=now, updated_at=now,
        )
        try:
            with self.session() as session:
                session.add(job)
        except IntegrityError:
            # Two requests with the same key raced; the other one won.
            existing = self.by_idempotency_key(new.submitted_by, new.idempotency_key) if new.idempotency_key else None
            if existing is None:
                raise
            return existing, False
        return job, True

    def get(self, job_id: str) -> Job:
        with self.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise UnknownJob(job_id)
            return job

    def by_idempotency_key(self, submitted_by: str, key: str) -> Optional[Job]:
        with self.session() as session:
            return session.scalars(select(Job).where(Job.submitted_by == submitted_by, Job.idempotency_key == key)).first()

    def list(self, state: Optional[str] = None, limit: int = 50, offset: int = 0,
             submitted_by: Optional[str] = None) -> tuple[list[Job], int]:
        """Newest first, without their spec texts (see WITHOUT_SPECS); returns (page, total
        matching). `submitted_by`: only that user's jobs."""
        query = select(Job).options(*WITHOUT_SPECS)
        count = select(func.count()).select_from(Job)
        if state:
            query, count = query.where(Job.state == state), count.where(Job.state == state)
        if submitted_by is not None:
            query, count = query.where(Job.submitted_by == submitted_by), count.where(Job.submitted_by == submitted_by)
        with self.session() as session:
            total = session.scalar(count)
            rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)).all()
        return list(rows), total

    def in_states(self, states: Iterable[State], ids: Optional[Iterable[str]] = None) -> list[Job]:
        """Without their spec texts (see WITHOUT_SPECS): `get` a job to read its spec. `ids`:
        only these jobs (looked up by key, IDS_PER_QUERY at a time): what the dispatcher's
        start-up asks of the queued jobs, where reading them all would cost it the queue's length."""
        query = select(Job).options(*WITHOUT_SPECS).where(Job.state.in_([s.value for s in states]))
        with self.session() as session:
            if ids is None:
                return list(session.scalars(query))
            return [job for batch in in_batches(sorted(set(ids))) for job in session.scalars(query.where(Job.id.in_(batch)))]

    def queue_tiers(self, per_user: int = HEAD_PER_USER, limit: int = HEAD_LIMIT) -> Iterator[list[Job]]:
        """The front of the queue, one priority at a time, highest first: each user's oldest
        `per_user` queued jobs at that priority, oldest first (at most `limit` in all). A tick
        admits or reserves only what the cluster can start at once, and fair share only compares
        users' next jobs, so this is all it needs; and a tier is read only once the dispatcher has
        handed the tiers above it to Ray, so an urgent job does not wait for the rest of the queue
        to be read. The cost does not grow with the queue: the index on (state, priority, user,
        created) is walked group by group (one seek to the next user's first jobs, one to the next
        priority), so the work is per (priority, user) group, not per queued job. Each tier is
        read in its own short transaction (the caller writes in between)."""
        queued = Job.state == State.QUEUED.value
        top = select(func.max(Job.priority)).where(queued)
        below = top.where(Job.priority < bindparam("priority"))
        # A group's first jobs: the next (priority, user) from a row value on, in the index's own
        # order (ascending: past a tier's last user come the tiers above, already read). Not
        # `priority = :p … ORDER BY user`: PostgreSQL without statistics on the table (a bulk
        # insert not yet analysed) served that from the (state, priority, created) index,
        # sorting the whole tier for each group. Built once and run once per group with that
        # group's values: building a statement costs SQLAlchemy more than the database takes.
        group = tuple_(Job.priority, Job.submitted_by)
        from_here = bindparam("priority"), bindparam("user")
        in_order = (select(Job).options(*WITHOUT_SPECS)
                    .order_by(Job.priority, Job.submitted_by, Job.created_at, Job.id).limit(per_user))
        first = in_order.where(queued, group >= tuple_(*from_here))  # the tier's first user's
        after = in_order.where(queued, group > tuple_(*from_here))  # the next user's
        priority = None
        while limit > 0:
            with self.session() as session:
                priority = session.scalar(top) if priority is None else session.scalar(below, {"priority": priority})
                if priority is None:
                    return
                tier: list[Job] = []
                rows = session.scalars(first, {"priority": priority, "user": ""}).all()
                while rows and rows[0].priority == priority:  # a user's first jobs, maybe the next one's (read again)
                    user = rows[0].submitted_by
                    tier += [job for job in rows if (job.priority, job.submitted_by) == (priority, user)]
                    rows = session.scalars(after, {"priority": priority, "user": user}).all()
            tier.sort(key=lambda job: (job.created_at, job.id))
            yield tier[:limit]
            limit -= len(tier)

    def queue_head(self, per_user: int = HEAD_PER_USER, limit: int = HEAD_LIMIT) -> list[Job]:
        """The front of the queue (queue_tiers) as one list, in queue order."""
        return [job for tier in self.queue_tiers(per_user, limit) for job in tier]

    def position(self, job: Job) -> int:
        """How many queued jobs are ahead of this one (0 = next): those of higher priority, and
        the older ones of its own. Two counts, each a range of the index on (state, priority,
        created): what they cost is the jobs ahead, not the queue's length (one count of the OR
        of the two, SQLite answers by reading every queued job's index entry)."""
        queued = Job.state == State.QUEUED.value
        with self.session() as session:
            higher = session.scalar(select(func.count()).select_from(Job).where(queued, Job.priority > job.priority))
            older = session.scalar(select(func.count()).select_from(Job).where(
                queued, Job.priority == job.priority, Job.created_at < job.created_at))
            return higher + older

    # ---- state changes -----------------------------------------------------------------------

    def transition(self, job_id: str, new: State, *, only_from: Optional[Iterable[State]] = None, **fields) -> Job:
        """Moves a job to `new` (refusing what the table forbids) and sets `fields`.

        `only_from`: the states the caller saw; if the job has moved on since, IllegalTransition
        is raised instead of acting on stale information. Timestamps and counts follow the
        state: submitted_at (first time), started_at (first time), running_since (each attempt),
        finished_at, preemptions (each time it is preempted).
        """
        new = State(new)
        with self.session() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                raise UnknownJob(job_id)
            if only_from is not None and State(job.state) not in set(only_from):
                raise IllegalTransition(job_id, State(job.state), new)
            check(job_id, job.state, new)
            now = utcnow()
            if new is State.SUBMITTED and job.submitted_at is None:
                job.submitted_at = now
                job.dispatch_latency_s = (now - job.created_at).total_seconds()
            if new is State.RUNNING:
                job.started_at = job.started_at or now
                job.running_since = now
            if new is State.PREEMPTED:
                job.preemptions += 1
            if new in TERMINAL:
                job.finished_at = now
            job.waiting_reason = None  # a reason belongs to one stay in a state: the dispatcher sets the new one
            if "error" in fields and fields["error"]:
                fields["error"] = fields["error"][-MAX_ERROR_CHARS:]
            for name, value in fields.items():
                setattr(job, name, value)
            job.state, job.updated_at = new.value, now
            return job

    def update(self, job_id: str, **fields) -> Job:
        """Sets fields that are not the state (attempts, ray_submission_id, mlflow_run_id …)."""
        assert "state" not in fields, "states change through transition()"
        with self.session() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                raise UnknownJob(job_id)
            for name, value in fields.items():
                setattr(job, name, value)
            job.updated_at = utcnow()
            return job

    def set_priority(self, job_id: str, priority: int) -> Job:
        """A new priority (admins, through the API); a finished job raises IllegalTransition."""
        with self.session() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                raise UnknownJob(job_id)
            if State(job.state) in TERMINAL:
                raise IllegalTransition(job_id, State(job.state), State(job.state))
            job.priority, job.updated_at = priority, utcnow()
            return job

    def set_waiting_reasons(self, reasons: dict[str, Optional[str]], state: State = State.QUEUED) -> None:
        """Why each job in `state` waits — a queued one for admission (scheduling.plan), a
        running one for Ray to place its workers — in one transaction; a job that has left
        `state` meanwhile is not touched. The dispatcher calls this only with what changed. One
        statement per distinct reason (many jobs wait for the same thing), not per job: a first
        tick over a long queue stores hundreds."""
        by_reason: dict[Optional[str], list[str]] = defaultdict(list)
        for job_id, reason in reasons.items():
            by_reason[reason].append(job_id)
        with self.session() as session:
            for reason, ids in by_reason.items():
                for batch in in_batches(ids):
                    session.execute(sql_update(Job).where(Job.id.in_(batch), Job.state == State(state).value)
                                    .values(waiting_reason=reason))

    def request_cancel(self, job_id: str) -> Job:
        """queued/preempted → cancelled at once; submitted/running/preempting → cancelling (the
        dispatcher stops it on Ray); cancelling stays as it is. A finished job raises
        IllegalTransition."""
        with self.session() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                raise UnknownJob(job_id)
            state = State(job.state)
            if state is State.CANCELLING:
                return job
            new = State.CANCELLED if state in WAITING else State.CANCELLING
            check(job_id, state, new)
            now = utcnow()
            job.state, job.updated_at = new.value, now
            if new is State.CANCELLED:
                job.finished_at = now
            return job

    # ---- fair share's history --------------------------------------------------------------

    def fair_share_usage(self) -> list[UserUsage]:
        """Every user's stored history (one row per user, not per job)."""
        with self.session() as session:
            return list(session.scalars(select(UserUsage).order_by(UserUsage.submitted_by)))

    def record_usage(self, shares: Mapping[str, float], fair: FairShare, now: Optional[datetime] = None) -> dict[str, float]:
        """Brings each user's usage up to `now` — the share stored last time is the one held
        since then — and stores `shares` (user → dominant share held now; missing: none) for
        the next time. One transaction, one row per user; returns {user: usage_s}. Users whose
        usage has decayed away and who hold nothing are dropped."""
        now = now or utcnow()
        out: dict[str, float] = {}
        with self.session() as session:
            rows = {row.submitted_by: row for row in session.scalars(select(UserUsage).with_for_update())}
            for user in shares.keys() - rows.keys():
                rows[user] = UserUsage(submitted_by=user, usage_s=0.0, current_share=0.0, updated_at=now)
                session.add(rows[user])
            for user, row in rows.items():
                row.usage_s = fair.decayed(row.usage_s, row.current_share, (now - row.updated_at).total_seconds())
                row.current_share, row.updated_at = shares.get(user, 0.0), now
                if row.current_share <= 0 and row.usage_s < FORGET_USAGE_S:
                    session.delete(row)
                else:
                    out[user] = row.usage_s
        return out

    # ---- numbers for /metrics ----------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        counts = {s.value: 0 for s in State}
        counts.update({state: n for state, n in rows})
        return counts

    def latency_histogram(self) -> tuple[list[tuple[float, int]], int, float]:
        """Cumulative bucket counts, count and sum of dispatch latencies (for Prometheus)."""
        latency = Job.dispatch_latency_s
        columns = [func.coalesce(func.sum(case((latency <= b, 1), else_=0)), 0) for b in LATENCY_BUCKETS]
        with self.session() as session:
            row = session.execute(select(*columns, func.count(latency), func.coalesce(func.sum(latency), 0.0))).one()
        buckets = list(zip(LATENCY_BUCKETS, (int(n) for n in row[: len(LATENCY_BUCKETS)])))
        return buckets, int(row[-2]), float(row[-1])

    def preemptions(self) -> int:
        """How many times jobs were preempted, in all (a counter for /metrics)."""
        with self.session() as session:
            return int(session.scalar(select(func.coalesce(func.sum(Job.preemptions), 0))))
