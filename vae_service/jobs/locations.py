"""Where a job's run directory goes, and what a job is made of. Light on purpose: the queue's dispatcher finds a job's
outcome.json through it without importing Ray, torch or MLflow."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from vae_service import storage


def run_name(name: str, job_id: Optional[str] = None) -> str:
    """`<name>-<UTC time>`, or `<name>-<job id>` for a queued job (the queue finds it by that)."""
    return f"{name}-{job_id or datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def storage_uri(job) -> str:
    """The storage a job's run directory goes under: a train spec's own, a sweep's base spec's,
    a comparison's VAE spec's."""
    if job.kind == "sweep":
        return job.train.storage.uri
    if job.kind == "compare":
        return job.specs["vae"].storage.uri
    return job.storage.uri


def train_specs(job) -> list:
    """The train specs a job is made of: its own, a sweep's base, a comparison's three."""
    if job.kind == "sweep":
        return [job.train]
    if job.kind == "compare":
        return list(job.specs.values())
    return [job]


def with_queue_defaults(job, uri: Optional[str], max_failures: int):
    """The job with the queue's defaults where its spec leaves the field unset: `storage.uri`
    (when `uri`: a queue on a cluster keeps runs where every node reaches them, e.g. a bucket)
    and `storage.max_failures` (a cluster can lose a node mid-run: the run goes on from its
    latest checkpoint instead of failing). A spec's own value wins."""
    if job.kind == "sweep":
        return job.model_copy(update={"train": with_queue_defaults(job.train, uri, max_failures)})
    if job.kind == "compare":
        return job
    chosen = job.storage.model_fields_set
    defaults = {"uri": uri} if uri and "uri" not in chosen else {}
    if "max_failures" not in chosen:
        defaults["max_failures"] = max_failures
    return job.model_copy(update={"storage": job.storage.model_copy(update=defaults)})


def queued_run_dir(job, job_id: str) -> storage.Location:
    """Where `execute(job, job_id=…)` puts its run (and outcome.json): the queue reads it there."""
    return storage.resolve(storage_uri(job)).join(run_name(job.name, job_id))
