"""Per-epoch metrics from rank 0 to the MLflow run the driver created."""

from __future__ import annotations

import time

from mlflow.entities import Metric

from vae_service.tracking.mlflow_run import client

LOGGED = ("train_loss", "train_neg_elbo", "train_recon", "train_kl", "val_neg_elbo", "val_recon", "val_kl",
          "active_units", "images_per_s", "test_neg_elbo", "test_recon", "test_kl")


def epoch_metrics(metrics: dict) -> list[Metric]:
    """The scalar metrics of one epoch, plus KL per latent dimension as val_kl_dim_01, …"""
    now, step = int(time.time() * 1000), int(metrics["epoch"])
    values = {k: float(metrics[k]) for k in LOGGED if k in metrics}
    width = len(str(len(metrics.get("val_kl_per_dim", []))))
    for j, kl in enumerate(metrics.get("val_kl_per_dim", []), start=1):
        values[f"val_kl_dim_{j:0{max(width, 2)}d}"] = float(kl)
    return [Metric(key, value, now, step) for key, value in values.items()]


class EpochLogger:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self.client = client()

    def log(self, metrics: dict) -> None:
        self.client.log_batch(self.run_id, metrics=epoch_metrics(metrics))
