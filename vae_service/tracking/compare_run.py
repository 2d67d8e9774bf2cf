"""A comparison's parent MLflow run (`vae compare`): its three training runs nest under it, it
names each (a tag per role) and keeps their specs, and it holds the comparison's figures and
metrics. The sweep's parent run is its sibling, `sweep_run.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from vae_service.tracking.mlflow_run import client
from vae_service.tracking.sweep_run import PARENT_TAG

ROLE_TAG = "vae.compare.role"  # on each nested run: autoencoder, kl_only or vae


def member_tags(parent_run_id: str, role: str) -> dict[str, str]:
    """The tags of a training run that belongs to the comparison, in `role`."""
    return {PARENT_TAG: parent_run_id, ROLE_TAG: role}


def record_member(parent_run_id: str, role: str, run_id: str, spec_text: str) -> None:
    """The parent names the run that trained `role` and keeps its spec as specs/<role>.yaml."""
    mlflow = client()
    mlflow.set_tag(parent_run_id, f"vae.compare.{role}_run_id", run_id)
    mlflow.log_text(parent_run_id, spec_text, f"specs/{role}.yaml")


def log_comparison(parent_run_id: str, files: Iterable[Path], metrics: Mapping[str, Mapping[str, float]]) -> None:
    """The comparison's figures (under comparison/) and each role's metrics as `<role>.<key>`."""
    mlflow = client()
    for path in files:
        mlflow.log_artifact(parent_run_id, str(path), "comparison")
    for role, row in metrics.items():
        for key, value in row.items():
            mlflow.log_metric(parent_run_id, f"{role}.{key}", float(value))
