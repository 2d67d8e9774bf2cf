"""A job's MLflow run, from the driver: begin → (rank 0 logs epochs) → publish → finish.

The job layer (vae_service.jobs.lifecycle) decides when: it begins the run before any worker
starts, so a job that dies early is still visible, and finishes it FINISHED, FAILED or KILLED.
Rank 0 logs per-epoch metrics while training; the driver publishes the figures and the model,
and registers it, only after training succeeded.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import requests
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from vae_service.core.data import ImageSplit
from vae_service.core.errors import one_line, redact
from vae_service.core.model import VAE
from vae_service.core.spec import TrainSpec
from vae_service.tracking.mlflow_run import client, finish_run, start_run, tracking_uri
from vae_service.tracking.registry import log_model, register
from vae_service.viz.run_figures import render_run_figures


class TrackingUnavailable(Exception):
    """The tracking server cannot be reached or refused the run (one line, for the user)."""


@dataclass
class Published:
    model_uri: str
    registered_name: Optional[str] = None
    registered_version: Optional[int] = None

    @property
    def registry_uri(self) -> Optional[str]:
        if self.registered_name is None:
            return None
        return f"models:/{self.registered_name}/{self.registered_version}"


@dataclass
class TrackedRun:
    run_id: str

    @classmethod
    def begin(cls, spec, run_name: str, previous_run_id: Optional[str] = None, tags: Optional[dict] = None,
              experiment: Optional[str] = None) -> "TrackedRun":
        """A new MLflow run in `experiment` (default: the spec's) with the spec as params, plus
        `tags`; or the previous one reopened when a run directory is resumed."""
        try:
            if previous_run_id:
                client().update_run(previous_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                return cls(previous_run_id)
            return cls(start_run(spec, run_name, experiment, extra_tags=tags))
        except (MlflowException, OSError, requests.RequestException) as exc:
            raise TrackingUnavailable(f"MLflow at {redact(tracking_uri())} is unavailable: {one_line(exc, 300, first_line=True)}") from None

    def publish(self, spec: TrainSpec, vae: VAE, model_dir: Path, kl_per_dim: Optional[list[float]],
                test: Optional[ImageSplit]) -> Published:
        """The article's figures (drawn from `test`; none without it: `tracking.figures: false`)
        and the pickle-free model on the run; registered when the spec asks for it."""
        if test is not None:
            with tempfile.TemporaryDirectory() as tmp:
                for path in render_run_figures(vae, test, Path(tmp), kl_per_dim=kl_per_dim):
                    client().log_artifact(self.run_id, str(path), "figures")
        published = Published(model_uri=log_model(self.run_id, model_dir, vae))
        if spec.tracking.register_as:
            published.registered_name = spec.tracking.register_as
            published.registered_version = register(published.model_uri, spec.tracking.register_as, spec.tracking.alias)
        return published

    def param(self, key: str, value: str) -> None:
        client().log_param(self.run_id, key, value)

    def tag(self, key: str, value: str) -> None:
        client().set_tag(self.run_id, key, value)

    def finish(self, status: str, error: Optional[str] = None) -> None:
        """status: finished | failed (with the reason) | killed (the user stopped it)."""
        finish_run(self.run_id, succeeded=status == "finished", error=error, killed=status == "killed")
