"""One job's run, from start to end, written once for every kind of job.

  run directory   `<storage.uri>/<name>-<time>/` (local or s3://), or an existing one to resume;
                  it holds spec.yaml, the MLflow run id and, at the end, outcome.json
  MLflow run      opened before any work starts (a job that dies early is still visible),
                  reopened when the directory is resumed, and finished FINISHED, FAILED with
                  the reason, or KILLED when the user stopped it (--resume reopens it)
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from vae_service import storage
from vae_service.core.errors import BadInput, Interrupted, JobFailed, one_line
from vae_service.core.spec_loading import dump_spec
from vae_service.tracking.tracked_run import TrackedRun, TrackingUnavailable

RUN_ID_FILE = "mlflow_run_id"
SPEC_FILE = "spec.yaml"


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """An unreachable or unwritable store fails the job with one line (bounded retries are
    storage's own, so a bad S3 endpoint fails before Ray starts)."""
    try:
        yield
    except (storage.StorageError, OSError) as exc:
        raise JobFailed(one_line(exc)) from None


def new_run_dir(uri: str, name: Optional[str] = None) -> storage.Location:
    """The run directory `name` under the storage `uri` (without a name: `uri` itself), made."""
    with storage_errors():
        run_dir = storage.resolve(uri)
        storage.check_reachable(run_dir)  # (its bucket)
        run_dir = run_dir.join(name) if name is not None else run_dir
        storage.make_dirs(run_dir)
    return run_dir


def existing_run_dir(uri: str) -> storage.Location:
    """The directory to continue (--resume): it must hold the spec its job was started with."""
    with storage_errors():
        run_dir = storage.resolve(uri)
        storage.check_reachable(run_dir)
        if not storage.exists(run_dir.join(SPEC_FILE)):
            raise BadInput(f"--resume: {uri} is not a run directory (no {SPEC_FILE} in it)")
    return run_dir


def write_spec(run_dir: storage.Location, spec) -> None:
    with storage_errors():
        storage.write_text(run_dir.join(SPEC_FILE), dump_spec(spec))


@contextlib.contextmanager
def tracked_run(run_dir: storage.Location, spec, experiment: str, tags: Optional[dict] = None) -> Iterator[TrackedRun]:
    """The job's MLflow run around the block: new, or the directory's earlier run reopened.
    Finished when the block ends: FINISHED, KILLED on Interrupted, FAILED (with why) otherwise."""
    id_file = run_dir.join(RUN_ID_FILE)
    with storage_errors():
        previous = storage.read_text(id_file).strip() if storage.exists(id_file) else None
    try:
        run = TrackedRun.begin(spec, run_dir.name, previous, tags, experiment=experiment)
    except TrackingUnavailable as exc:
        raise JobFailed(str(exc)) from None
    with storage_errors():
        storage.write_text(id_file, run.run_id)
    try:
        yield run
    except Interrupted:
        run.finish("killed", "interrupted by the user")
        raise
    except BaseException as exc:
        run.finish("failed", one_line(exc))
        raise
    run.finish("finished")
