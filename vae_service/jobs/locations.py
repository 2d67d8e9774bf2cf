"""Where a job's run directory goes. Light on purpose: the queue's API decides a queued job's
directory through it without importing Ray, torch or MLflow."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from vae_service import storage
from vae_service.core.job import Job


def run_name(name: str, job_id: Optional[str] = None) -> str:
    """`<name>-<UTC time>`, or `<name>-<job id>` for a queued job (the queue finds it by that)."""
    return f"{name}-{job_id or datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def queued_run_dir(job: Job, job_id: str) -> storage.Location:
    """Where a queued job's run (and its outcome.json) goes, decided when the queue stores the
    job: the queue keeps it with the job, hands it to the job's entrypoint and reads the outcome there."""
    return storage.resolve(job.storage_uri).join(run_name(job.name, job_id))
