"""One sweep trial: a Tune function trainable that runs a whole Ray Train run.

Each trial is an ordinary `run_training` (its own TorchTrainer and workers, its own nested
MLflow run) whose per-epoch reports reach Tune through `TuneReportCallback`, so ASHA and Optuna
see every epoch. A trial's directory is fixed by its Tune trial id: a restored sweep continues
an unfinished trial from its latest checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from rich.console import Console

from vae_service.core.sweep_spec import SweepSpec
from vae_service.sweeps.cleanup import ReportPlacementGroup
from vae_service.tracking.sweep_run import PARENT_TAG, TRIAL_TAG
from vae_service.training.runner import run_training

TRIALS_DIR = "trials"


def run_trial(config: dict[str, Any], *, sweep: dict, parent_run_id: str, sweep_dir: str, env: dict[str, str], ledger) -> None:
    # The driver's settings (MLflow store, data, S3), absolute: Tune runs a trial in its own
    # directory, where a relative default such as ./mlflow.db would be another store.
    os.environ.update(env)
    spec = SweepSpec.model_validate(sweep)
    trial_id = ray.tune.get_context().get_trial_id()
    train_spec = spec.trial_spec(config, trial_name=f"{spec.name}-{trial_id}")
    run_training(
        train_spec,
        run_dir=f"{sweep_dir.rstrip('/')}/{TRIALS_DIR}/{trial_id}",
        tags={PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id},
        callbacks=(TuneReportCallback(), ReportPlacementGroup(ledger, trial_id)),
        console=Console(stderr=True, quiet=True),  # trials run unseen; the sweep shows a table
        show_progress=False,
    )
