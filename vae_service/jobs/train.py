"""The train job: one spec trained on Ray Train into its run directory, its model published.

Everything a run leaves is under its run directory (a local path or s3://bucket/prefix/…):
  checkpoint_*/     Ray Train checkpoints (pickle-free, see core.checkpoint)
  model/            final weights (safetensors) + config.json
  spec.yaml         the normalised spec; metrics.json: per-epoch history and final metrics
  mlflow_run_id     the run's MLflow run (reopened by --resume); outcome.json: how it ended
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from vae_service import storage
from vae_service.core import metrics as M
from vae_service.core.checkpoint import save_model
from vae_service.core.data import DataError
from vae_service.core.errors import BadInput
from vae_service.core.interrupt import Interrupt
from vae_service.core.spec import TrainSpec
from vae_service.jobs.lifecycle import storage_errors, tracked_run, write_spec
from vae_service.jobs.outcome import Outcome
from vae_service.jobs.reporter import Reporter
from vae_service.sources.holdout import model_test_split
from vae_service.sources.prepare import PIPELINE_PARAM, Prepared, prepare
from vae_service.training.runner import fit

METRICS_FILE = "metrics.json"
NODES_TAG = "vae.nodes"  # MLflow tag: JSON list, the host of each rank


@dataclass
class RunResult:
    run_dir: str
    model_dir: str
    checkpoint: str
    epochs_completed: int
    metrics: dict
    history: list[dict] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # the host of each rank (several: a multi-node run)
    mlflow_run_id: str = ""
    model_uri: str = ""  # models:/name/N when registered, else the logged model's URI
    startup_s: float = 0.0  # the job started → first training step
    first_step_at: float = 0.0  # unix time of the first step (for process-level timings)
    wall_s: float = 0.0

    @property
    def summary(self) -> dict:
        return M.summary(self.metrics)

    def to_json(self) -> dict:
        return {**asdict(self), "metrics": self.summary, "all_metrics": self.metrics}


def train(spec: TrainSpec, run_dir: storage.Location, *, resume: bool, reporter: Reporter, interrupt: Interrupt,
          tags: Optional[dict] = None, callbacks: tuple = ()) -> RunResult:
    """Trains `spec` into `run_dir` under its own MLflow run; raises core.errors' JobErrors."""
    started, started_unix = time.perf_counter(), time.time()
    write_spec(run_dir, spec)
    data = prepared_data(spec)
    reporter.console.print(f"data: {data.description}", markup=False, highlight=False)
    with tracked_run(run_dir, spec, spec.tracking.experiment, tags) as run:
        run.param(PIPELINE_PARAM, data.pipeline)
        fitted = fit(spec, run_dir, run.run_id, data, interrupt=interrupt, resume=resume, console=reporter.console,
                     progress=reporter.progress, callbacks=callbacks)
        run.tag(NODES_TAG, json.dumps(fitted.nodes))
        model_dir = run_dir.join("model")
        # Written locally (a temporary directory for S3, uploaded when the block ends).
        with storage_errors(), storage.writing_dir(model_dir) as local_model_dir:
            save_model(local_model_dir, fitted.model, extra={"spec": spec.model_dump(mode="json"), "metrics": fitted.metrics,
                                                             "preprocessing": data.preprocessing.to_dict()})
            figures_from = model_test_split(spec, prepared=data) if spec.tracking.figures else None
            published = run.publish(spec, fitted.model, local_model_dir, fitted.metrics.get(M.VAL_KL_PER_DIM), figures_from)
    result = RunResult(
        run_dir=run_dir.uri,
        model_dir=model_dir.uri,
        checkpoint=fitted.checkpoint,
        epochs_completed=int(fitted.metrics.get(M.EPOCH, -1)) + 1,
        metrics=fitted.metrics,
        history=fitted.history,
        nodes=fitted.nodes,
        mlflow_run_id=run.run_id,
        model_uri=published.registry_uri or published.model_uri,
        first_step_at=fitted.first_step_at,
        wall_s=time.perf_counter() - started,
        startup_s=(fitted.first_step_at or started_unix) - started_unix,
    )
    with storage_errors():
        storage.write_text(run_dir.join(METRICS_FILE), json.dumps(result.to_json(), indent=2, default=str))
    return result


def prepared_data(spec: TrainSpec) -> Prepared:
    """The spec's data read (your own) or located (a named set), the path chosen; bad data is bad input."""
    try:
        return prepare(spec)
    except DataError as exc:
        raise BadInput(str(exc)) from None


def train_job(spec: TrainSpec, run_dir: storage.Location, *, resume: bool, reporter: Reporter, interrupt: Interrupt,
              tags: Optional[dict] = None) -> Outcome:
    result = train(spec, run_dir, resume=resume, reporter=reporter, interrupt=interrupt, tags=tags)
    return Outcome.succeeded("train", result, run_dir=result.run_dir, mlflow_run_id=result.mlflow_run_id,
                             model_uri=result.model_uri, metrics=result.summary, nodes=result.nodes)


def train_trial(spec: TrainSpec, run_dir: str, tags: dict, callbacks: tuple) -> None:
    """One sweep trial (called by the Tune adapter inside a trial): an ordinary train job in
    the trial's fixed directory, continued from its checkpoints when the trial is restarted."""
    with storage_errors():
        location = storage.resolve(run_dir)
        storage.make_dirs(location)
    train(spec, location, resume=True, reporter=Reporter.quiet(), interrupt=Interrupt(), tags=tags, callbacks=callbacks)
