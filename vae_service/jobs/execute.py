"""`execute(spec) -> Outcome`: the one way any job runs — `vae run`, `vae compare`, a queued job.

  1. the run directory: new under the spec's storage, or the one given to continue (--resume)
  2. the inputs checked before any run starts: the data can be found, the cluster can hold
     the workers (else Ray Train would wait for them forever)
  3. the job kind runs under one handler for Ctrl-C and SIGTERM (core.interrupt: how the queue
     stops a job it cancels or preempts): train, sweep or compare
  4. however it ends, the Outcome is returned and written beside the run as outcome.json

Job errors never escape as exceptions: they become the Outcome's error (bad input, job failed,
interrupted) with the exit code the CLI uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Union

from vae_service import storage
from vae_service.core import from_spec
from vae_service.core.data import DataError
from vae_service.core.errors import BadInput, JobError, JobFailed, one_line
from vae_service.core.interrupt import Interrupt
from vae_service.jobs.lifecycle import RUN_ID_FILE, existing_run_dir, new_run_dir
from vae_service.jobs.locations import run_name, storage_uri, train_specs
from vae_service.jobs.outcome import Outcome, clear_outcome, write_outcome
from vae_service.jobs.reporter import Reporter
from vae_service.sources.check import inspect
from vae_service.tracking.mlflow_run import JOB_ID_TAG

if TYPE_CHECKING:
    from vae_service.core.spec import TrainSpec
    from vae_service.core.sweep_spec import SweepSpec
    from vae_service.jobs.compare import CompareJob

Job = Union["TrainSpec", "SweepSpec", "CompareJob"]


def execute(job: Job, *, resume: Optional[str] = None, reporter: Optional[Reporter] = None,
            job_id: Optional[str] = None) -> Outcome:
    """Runs `job`, or continues the run directory `resume`. `job_id` (a queued job's) names the
    run directory `<name>-<job id>` and tags the MLflow run with it."""
    reporter = reporter or Reporter()
    run_dir, error = None, None
    try:
        if resume:
            run_dir = existing_run_dir(resume, "sweep" if job.kind == "sweep" else "run")
            clear_outcome(run_dir)
        else:
            run_dir = new_run_dir(storage_uri(job), run_name(job.name, job_id))
        check_data(job)
        check_fits(job)
        tags = {JOB_ID_TAG: job_id} if job_id else None
        with Interrupt().catching_stop_signals() as interrupt:
            outcome = job_function(job.kind)(_absolute_paths(job), run_dir, resume=bool(resume), reporter=reporter,
                                             interrupt=interrupt, tags=tags)
    except JobError as exc:
        error = exc
    except Exception as exc:  # a bug, not the user's mistake: its traceback, and still an outcome
        reporter.console.print_exception()
        error = JobFailed(f"internal error: {exc.__class__.__name__}: {one_line(exc, 500)}")
    if error is not None:
        outcome = Outcome.failed(job.kind, error, run_dir=run_dir.uri if run_dir else None, mlflow_run_id=_recorded_run_id(run_dir))
    if run_dir is not None:
        try:
            write_outcome(run_dir, outcome)
        except (storage.StorageError, OSError) as exc:
            reporter.console.print(f"[yellow]could not write the outcome beside the run: {one_line(exc)}")
    return outcome


def job_function(kind: str) -> Callable[..., Outcome]:
    """The kind's job, imported when it runs: a train job never loads Tune or the comparison."""
    if kind == "sweep":
        from vae_service.jobs.sweep import sweep_job

        return sweep_job
    if kind == "compare":
        from vae_service.jobs.compare import compare_job

        return compare_job
    from vae_service.jobs.train import train_job

    return train_job


def check_data(job: Job) -> None:
    """Fails fast, before Ray starts, when the data cannot be found (or fetched)."""
    try:
        for spec in train_specs(job):
            if spec.data.own:
                inspect(spec)  # reads a sample: the files decode, the model fits their shape
            else:
                from_spec.check_data(spec)
    except DataError as exc:
        message = str(exc)
        raise BadInput(message if message.startswith("data.") else f"data: {message}") from None


def check_fits(job: Job) -> None:
    """Fails fast when the cluster (or this machine) can never hold a run's workers at once."""
    from vae_service.training.runner import check_fits as check_resources  # loads Ray: only when running

    for spec in train_specs(job):
        check_resources(spec.resources)


def _absolute_paths(job: Job) -> Job:
    """A relative data.root means relative to where the job was started, not to a worker."""
    if job.kind == "sweep":
        return job.model_copy(update={"train": job.train.with_absolute_data_root()})
    if job.kind == "compare":
        return job.model_copy(update={"specs": {kind: spec.with_absolute_data_root() for kind, spec in job.specs.items()}})
    return job.with_absolute_data_root()


def _recorded_run_id(run_dir: Optional[storage.Location]) -> Optional[str]:
    try:
        id_file = run_dir.join(RUN_ID_FILE) if run_dir else None
        return storage.read_text(id_file).strip() if id_file and storage.exists(id_file) else None
    except (storage.StorageError, OSError):
        return None
