"""Per-epoch metrics from rank 0 to the MLflow run the driver created.

One continuous history per run: when workers restart from a checkpoint (a worker died, the job
was resumed), the epochs after that checkpoint are trained again, and some of them may already
be in the run. Those are not logged a second time: the history keeps one value per epoch.
"""

from __future__ import annotations

import math
import time

from mlflow.entities import Metric

from vae_service.core import metrics as M
from vae_service.tracking.mlflow_run import client

PROGRESS_METRIC = M.TRAIN_LOSS  # logged every epoch: its last step is the last epoch logged


def epoch_metrics(record: dict) -> list[Metric]:
    """The scalar metrics of one epoch record, plus KL per latent dimension as val_kl_dim_01, …"""
    now, step = int(time.time() * 1000), int(record[M.EPOCH])
    values = {k: float(record[k]) for k in M.LOGGED if k in record}
    # The evaluation's results, after the last epoch (NaN placeholders before it are not logged).
    values.update({k: float(v) for k, v in record.items() if k.startswith(M.EVAL_PREFIX) and math.isfinite(v)})
    kl_per_dim = record.get(M.VAL_KL_PER_DIM, [])
    values.update({name: float(kl) for name, kl in zip(M.kl_dim_names(len(kl_per_dim)), kl_per_dim)})
    return [Metric(key, value, now, step) for key, value in values.items()]


class EpochLogger:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self.client = client()
        history = self.client.get_metric_history(run_id, PROGRESS_METRIC)
        self.logged_through = max((m.step for m in history), default=-1)

    def log(self, record: dict) -> None:
        if int(record[M.EPOCH]) <= self.logged_through:
            return  # trained again after a restart: the run already has this epoch
        self.client.log_batch(self.run_id, metrics=epoch_metrics(record))
        self.logged_through = int(record[M.EPOCH])
