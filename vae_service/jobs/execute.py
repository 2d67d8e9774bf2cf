"""`execute(spec) -> Outcome`: the one way any job runs — `vae run`, `vae compare`, a queued job.

  1. the run directory: new under the job's storage, the one the queue decided when it stored
     the job, or the one given to continue (--resume)
  2. the inputs checked before any run starts: the data can be found, the cluster can hold
     the workers (else Ray Train would wait for them forever)
  3. the job's kind runs (EXECUTORS: train, sweep, compare, encode-dataset) under one handler
     for Ctrl-C and SIGTERM (core.interrupt: how the queue stops a job it cancels or preempts)
  4. however it ends, the Outcome is returned and written beside the run as outcome.json

Job errors never escape as exceptions: they become the Outcome's error (bad input, job failed,
interrupted) with the exit code the CLI uses.
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional

from vae_service import storage
from vae_service.core import from_spec
from vae_service.core.data import DataError
from vae_service.core.errors import BadInput, JobError, JobFailed, one_line
from vae_service.core.interrupt import Interrupt
from vae_service.core.job import Job
from vae_service.jobs.lifecycle import RUN_ID_FILE, existing_run_dir, new_run_dir
from vae_service.jobs.locations import run_name
from vae_service.jobs.outcome import Outcome, clear_outcome, write_outcome
from vae_service.jobs.reporter import Reporter
from vae_service.sources.check import inspect
from vae_service.tracking.mlflow_run import JOB_ID_TAG

# What executes each kind: imported when a job of it runs (a train job never loads Tune).
EXECUTORS = {
    "train": "vae_service.jobs.train:train_job",
    "sweep": "vae_service.jobs.sweep:sweep_job",
    "compare": "vae_service.jobs.compare:compare_job",
    "encode-dataset": "vae_service.jobs.encode_dataset:encode_dataset_job",
}


def execute(job: Job, *, resume: Optional[str] = None, run_dir: Optional[str] = None, reporter: Optional[Reporter] = None,
            job_id: Optional[str] = None) -> Outcome:
    """Runs `job` into a new run directory (`run_dir` when given: a queued job's, decided when
    it was stored), or continues the run directory `resume`. `job_id` (a queued job's) tags the
    MLflow run."""
    reporter = reporter or Reporter()
    location, error = None, None
    try:
        if resume:
            location = existing_run_dir(resume)
            clear_outcome(location)
        else:
            location = new_run_dir(run_dir) if run_dir else new_run_dir(job.storage_uri, run_name(job.name))
        check_data(job)
        check_fits(job)
        tags = {JOB_ID_TAG: job_id} if job_id else None
        with Interrupt().catching_stop_signals() as interrupt:
            outcome = executor(job.kind)(job.with_absolute_paths(), location, resume=bool(resume), reporter=reporter,
                                         interrupt=interrupt, tags=tags)
    except JobError as exc:
        error = exc
    except Exception as exc:  # a bug, not the user's mistake: its traceback, and still an outcome
        reporter.console.print_exception()
        error = JobFailed(f"internal error: {exc.__class__.__name__}: {one_line(exc, 500)}")
    if error is not None:
        outcome = Outcome.failed(job.kind, error, run_dir=location.uri if location else None, mlflow_run_id=_recorded_run_id(location))
    if location is not None:
        try:
            write_outcome(location, outcome)
        except (storage.StorageError, OSError) as exc:
            reporter.console.print(f"[yellow]could not write the outcome beside the run: {one_line(exc)}")
    return outcome


def executor(kind: str) -> Callable[..., Outcome]:
    module, function = EXECUTORS[kind].split(":")
    return getattr(importlib.import_module(module), function)


def check_data(job: Job) -> None:
    """Fails fast, before Ray starts, when the data cannot be found (or fetched)."""
    try:
        for spec in job.train_specs():
            if spec.data.own:
                inspect(spec)  # reads a sample: the files decode, the model fits their shape
            else:
                from_spec.check_data(spec)
    except DataError as exc:
        message = str(exc)
        raise BadInput(message if message.startswith("data.") else f"data: {message}") from None


def check_fits(job: Job) -> None:
    """Fails fast when the cluster (or this machine) can never hold a run's workers at once."""
    specs = job.train_specs()
    if not specs:
        return
    from vae_service.training.runner import check_fits as check_resources  # loads Ray: only when running

    for spec in specs:
        check_resources(spec.resources)


def _recorded_run_id(run_dir: Optional[storage.Location]) -> Optional[str]:
    try:
        id_file = run_dir.join(RUN_ID_FILE) if run_dir else None
        return storage.read_text(id_file).strip() if id_file and storage.exists(id_file) else None
    except (storage.StorageError, OSError):
        return None
