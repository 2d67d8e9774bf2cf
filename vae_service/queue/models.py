"""The jobs table and the fair share's usage table (SQLAlchemy 2 declarative). The schema itself is created by the Alembic
migrations in `migrations/versions`; keep the two in step (test_queue_store checks it)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import Boolean, DateTime, Float, Index, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vae_service.core.placement import Bundles


class UTCDateTime(TypeDecorator):
    """Timestamps stored as naive UTC and read back as aware UTC on every backend
    (SQLite has no time zones; PostgreSQL would convert to the session's zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Optional[datetime], dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None else None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    submitted_by: Mapped[str] = mapped_column(String(200))
    spec_submitted: Mapped[str] = mapped_column(Text)  # the body as sent
    overrides: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of --set assignments
    spec_normalised: Mapped[str] = mapped_column(Text)  # every default filled in: what runs
    run_dir: Mapped[Optional[str]] = mapped_column(Text)  # where it runs and leaves outcome.json (jobs.locations.queued_run_dir)
    resources: Mapped[str] = mapped_column(Text)  # JSON {"CPU": x, "GPU": y}: what it asks of Ray
    bundles: Mapped[Optional[str]] = mapped_column(Text)  # JSON core/placement.Bundles: its workers, node by node
    idempotency_key: Mapped[Optional[str]] = mapped_column(String(200))  # unique per submitter
    ray_submission_id: Mapped[Optional[str]] = mapped_column(String(64))
    mlflow_run_id: Mapped[Optional[str]] = mapped_column(String(64))
    error: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    submitted_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    started_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    dispatch_latency_s: Mapped[Optional[float]] = mapped_column(Float)  # created → first submitted
    nodes: Mapped[Optional[str]] = mapped_column(Text)  # JSON list: the hosts its ranks ran on, by rank
    waiting_reason: Mapped[Optional[str]] = mapped_column(Text)  # why a queued job is not admitted yet, or a running one not placed
    preemptible: Mapped[bool] = mapped_column(Boolean, default=True)  # the spec's resources.preemptible
    preemptions: Mapped[int] = mapped_column(Integer, default=0)  # times it was stopped for another job
    running_since: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)  # this attempt's start (thrash guard)

    __table_args__ = (Index("ix_jobs_state_priority_created", "state", "priority", "created_at"),
                      Index("ix_jobs_state_priority_user_created", "state", "priority", "submitted_by", "created_at", "id"),
                      UniqueConstraint("submitted_by", "idempotency_key", name="uq_jobs_submitted_by_idempotency_key"))

    @property
    def resource_request(self) -> dict[str, float]:
        return json.loads(self.resources)

    @property
    def worker_bundles(self) -> Bundles:
        """Its workers as Ray places them; a job stored before bundles were recorded: one
        bundle of everything it asks for."""
        if self.bundles:
            return Bundles.from_json(self.bundles)
        return Bundles(self.resource_request)

    @property
    def ray_job_id(self) -> str:
        """The Ray submission id of its current (or last) attempt; the job id until one is set
        (dispatcher.submission_id names each attempt)."""
        return self.ray_submission_id or self.id

    def to_dict(self, with_spec: bool = False) -> dict:
        out = {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "priority": self.priority,
            "state": self.state,
            "attempts": self.attempts,
            "submitted_by": self.submitted_by,
            "resources": self.resource_request,
            "run_dir": self.run_dir,
            "idempotency_key": self.idempotency_key,
            "ray_submission_id": self.ray_submission_id,
            "mlflow_run_id": self.mlflow_run_id,
            "error": self.error,
            "dispatch_latency_s": self.dispatch_latency_s,
            "nodes": json.loads(self.nodes) if self.nodes else [],
            "waiting_reason": self.waiting_reason if self.state in ("queued", "running") else None,
            "preemptible": self.preemptible,
            "preemptions": self.preemptions,
        }
        for name in ("created_at", "updated_at", "submitted_at", "started_at", "running_since", "finished_at"):
            value = getattr(self, name)
            out[name] = value.isoformat() if value else None
        if with_spec:
            out["spec"] = self.spec_normalised
            out["spec_submitted"] = self.spec_submitted
            out["overrides"] = json.loads(self.overrides)
        return out


class UserUsage(Base):
    """One user's fair-share history (quotas.FairShare): decayed usage in share-seconds as of
    `updated_at`, and the dominant share they held then. One row per user, rewritten by the
    dispatcher every few seconds (Store.record_usage); read by the scheduler and GET /fair-share."""

    __tablename__ = "fair_share_usage"

    submitted_by: Mapped[str] = mapped_column(String(200), primary_key=True)  # as in jobs
    usage_s: Mapped[float] = mapped_column(Float)  # ∫ dominant share dt, decayed with the half-life
    current_share: Mapped[float] = mapped_column(Float)  # the dominant share held at updated_at
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
