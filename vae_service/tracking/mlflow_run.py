"""The MLflow run around a training job, as the driver sees it: create, tag, finish.

Embedded default: `sqlite:///<cwd>/mlflow.db` with artifacts under `<cwd>/mlartifacts`
(absolute, because Ray workers run in another working directory). With MLFLOW_TRACKING_URI
pointing at a server, the server decides where artifacts go (e.g. S3 with --serve-artifacts).

Every call names its store: client() is an MlflowClient for tracking_uri(), and MLflow's global
(fluent) state is touched only inside fluent_tracking. mlflow itself is imported inside the
functions: most `vae` commands never need MLflow, and it takes seconds to import.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

from vae_service.core.spec_loading import dump_spec
from vae_service.environment import tracking_uri

LOCAL_ARTIFACTS = "mlartifacts"
JOB_ID_TAG = "vae.job_id"  # a queued job's MLflow run: the queue's job id


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def prepare_local_store() -> None:
    """Creates the embedded SQLite store (its tables) now, when it is the tracking store: jobs
    that start together (a queue admits several at once) would otherwise race to create it."""
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        client().search_experiments(max_results=1)


def client() -> MlflowClient:
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def tracking_errors() -> tuple[type[Exception], ...]:
    """What MLflow raises when a store refuses a request or cannot be reached (for a caller that
    turns it into one line; importing MLflow is this module's business)."""
    from mlflow.exceptions import MlflowException

    return (MlflowException,)


def run_of_job(job_id: str) -> Optional[str]:
    """The id of the MLflow run tagged with the queue's job id `job_id`, in any experiment, or None."""
    from mlflow.entities import ViewType

    mlflow = client()
    experiments = [e.experiment_id for e in mlflow.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return None
    runs = mlflow.search_runs(experiments, filter_string=f"tags.\"{JOB_ID_TAG}\" = '{job_id}'", max_results=1)
    return runs[0].info.run_id if runs else None


@contextmanager
def fluent_tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API (mlflow.start_run, mlflow.pyfunc.log_model, …) pointed at `uri` for
    the block; the previous process-wide tracking URI, and $MLFLOW_TRACKING_URI, come back after.

    Only for the calls that take no tracking URI (everything else goes through client()), and not
    thread-safe: the URI is process-wide while the block runs. The only place in vae_service that
    touches MLflow internals: `_use_tracking_uri` is private (tests/test_registry.py fails if
    MLflow moves it).
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        # set_tracking_uri mirrors the URI into $MLFLOW_TRACKING_URI, and restoring "never set"
        # deletes the variable: put it back as it was.
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """{'model': {'latent_dim': 20}} → {'model.latent_dim': '20'} (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = json.dumps(value) if isinstance(value, (list, type(None))) else str(value)
    return flat


def spec_hash(spec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def git_revision() -> str:
    """The revision of the code that runs the job (the checkout of the installed package)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_id(mlflow: MlflowClient, name: str) -> str:
    """The experiment's id, created when it does not exist yet. Jobs that start at once may all
    find it missing: a create that loses that race uses the experiment the winner made."""
    from mlflow.exceptions import MlflowException

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=local_artifact_root(tracking_uri()))
    except MlflowException:
        existing = mlflow.get_experiment_by_name(name)
        if existing is None:  # not the race: the create failed for its own reason
            raise
        return existing.experiment_id


def local_artifact_root(uri: str) -> Optional[str]:
    """For a local store: `mlartifacts/` beside the SQLite file (absolute, for Ray workers).
    For a server: None, so the server's own artifact root (e.g. S3) applies."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / LOCAL_ARTIFACTS).resolve().as_uri()
    if is_local_store(uri):
        return (Path.cwd() / LOCAL_ARTIFACTS).resolve().as_uri()
    return None


def start_run(spec, run_name: str, experiment: Optional[str] = None, extra_tags: Optional[dict] = None) -> str:
    """Creates the run in `experiment` (default: the spec's own) with the spec as params and
    spec.yaml, and tags (plus `extra_tags`, e.g. a sweep's parent run or the queue's job id);
    returns its id."""
    mlflow = client()
    tags = {
        "mlflow.runName": run_name,
        "vae.spec_hash": spec_hash(spec),
        "mlflow.source.git.commit": git_revision(),
        "vae.kind": spec.kind,
    }
    tags.update(extra_tags or {})
    run = mlflow.create_run(experiment_id(mlflow, experiment or spec.tracking.experiment), run_name=run_name, tags=tags)
    run_id = run.info.run_id
    try:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten(spec.model_dump(mode="json")).items()]
        for start in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
            mlflow.log_batch(run_id, params=params[start : start + 100])
        mlflow.log_text(run_id, dump_spec(spec), "spec.yaml")  # the first artifact upload
    except Exception as exc:
        # E.g. the server's artifact store is down: never leave the run looking RUNNING.
        try:
            finish_run(run_id, succeeded=False, error=f"could not record the run: {exc}")
        except Exception:  # the server itself is gone; nothing more we can record
            pass
        raise
    return run_id


ERROR_TAG = "vae.error"  # why a run FAILED


def finish_run(run_id: str, succeeded: bool, error: Optional[str] = None, killed: bool = False) -> None:
    """FINISHED, FAILED with the reason in the tag vae.error, or KILLED (stopped by the user)."""
    from mlflow.entities import RunStatus, RunTag

    mlflow = client()
    if error:
        mlflow.log_batch(run_id, tags=[RunTag(ERROR_TAG, error[:5000])])
    status = RunStatus.to_string(RunStatus.FINISHED if succeeded else RunStatus.KILLED if killed else RunStatus.FAILED)
    mlflow.set_terminated(run_id, status=status)

