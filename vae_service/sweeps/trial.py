"""One sweep trial: a Tune function trainable that runs a whole training run.

Each trial is an ordinary train job (its own workers — Ray Train's, or for one worker a Ray task
whose process the next trial reuses —, its own nested MLflow run), run by the `train_trial`
function the job layer hands in; its per-epoch reports reach Tune (`reporter_for`), so ASHA and
Optuna see every epoch. Its directory
(`trials/<id>/` of the sweep) holds its checkpoints: a trial that is continued after an
interruption picks up from its latest one.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import ray
import ray.tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from vae_service import storage
from vae_service.core.resources import runs_as_one_task
from vae_service.core.spec import TrainSpec
from vae_service.core.sweep_spec import SweepSpec
from vae_service.environment import applied
from vae_service.sweeps.cleanup import ReportPlacementGroup
from vae_service.sweeps.records import trial_dir, trial_identity, write_trial
from vae_service.tracking.sweep_run import PARENT_TAG, TRIAL_TAG
from vae_service.training.runner import UserCallback


def run_trial(config: dict[str, Any], *, sweep: dict, parent_run_id: str, sweep_dir: str, env: dict[str, str], ledger,
              train_trial: Callable[..., None]) -> None:
    # The driver's settings (MLflow store, data, S3), absolute: Tune runs a trial in its own
    # directory, where a relative default such as ./mlflow.db would be another store.
    with applied(env):
        spec = SweepSpec.model_validate(sweep)
        tune_trial_id = ray.tune.get_context().get_trial_id()
        ledger.add_actor.remote(ray.get_runtime_context().current_actor)  # ended by the sweep (cleanup.py)
        trial_id, values = trial_identity(tune_trial_id, config)
        directory = trial_dir(storage.resolve(sweep_dir), trial_id)
        write_trial(directory, trial_id, values)
        trial_spec = spec.trial_spec(values, trial_name=f"{spec.name}-{trial_id}")
        train_trial(trial_spec, directory.uri, {PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id},
                    (reporter_for(trial_spec), ReportPlacementGroup(ledger, tune_trial_id)))


def reporter_for(spec: TrainSpec) -> UserCallback:
    """What hands a trial's reports to Tune: Ray's TuneReportCallback where Ray Train's controller
    (another actor) makes them; ReportInTheTrial where the trial's own thread does (one worker)."""
    return ReportInTheTrial() if runs_as_one_task(spec.resources) else TuneReportCallback()


class ReportInTheTrial(UserCallback):
    """A one-worker trial's reports, made in the trial's own thread (training/one_worker.py calls
    a run's callbacks there) as a function trainable reports: each waits until Tune has taken it.

    Not Ray's TuneReportCallback there: it hands reports to Tune's thread through a queue, and
    when the trial ended right after its last report (a run without figures), Tune's thread could
    block for ever putting that report where the trial's end had already put its own (a hung sweep)."""

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        result = metrics[0].copy()
        if checkpoint:
            result[CHECKPOINT_PATH_KEY] = checkpoint.path  # as Ray's callback: the checkpoint is already stored
        try:
            ray.tune.report(result)
        except SystemExit:
            # Tune stopped the trial (ASHA): the sweep ends the trial's actor (cleanup.end_trial_actors)
            # and closes its run as stopped (KILLED, tracking.sweep_run.close_stopped). Unwinding the
            # run here would mark it FAILED first; so wait, as a trial under Ray's callback trained on.
            threading.Event().wait()
