"""One sweep trial: a Tune function trainable that runs a whole training run.

Each trial is an ordinary train job (its own workers — Ray Train's, or for one worker a Ray task
whose process the next trial reuses —, its own nested MLflow run), run by the `train_trial`
function the job layer hands in; its per-epoch reports reach Tune through `TuneReportCallback`,
so ASHA and Optuna see every epoch. Its directory
(`trials/<id>/` of the sweep) holds its checkpoints: a trial that is continued after an
interruption picks up from its latest one.
"""

from __future__ import annotations

from typing import Any, Callable

import ray
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from vae_service import storage
from vae_service.core.sweep_spec import SweepSpec
from vae_service.environment import applied
from vae_service.sweeps.cleanup import ReportPlacementGroup
from vae_service.sweeps.records import trial_dir, trial_identity, write_trial
from vae_service.tracking.sweep_run import PARENT_TAG, TRIAL_TAG


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
        train_trial(
            spec.trial_spec(values, trial_name=f"{spec.name}-{trial_id}"),
            directory.uri,
            {PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id},
            (TuneReportCallback(), ReportPlacementGroup(ledger, tune_trial_id)),
        )
