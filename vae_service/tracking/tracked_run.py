"""One training run's MLflow life, from the driver: begin → (rank 0 logs epochs) → complete | fail.

The driver creates the run before any worker starts, so a job that dies early is still visible
(and marked FAILED); rank 0 logs per-epoch metrics while training; the driver logs the figures
and the model and registers it only after training succeeded.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import requests
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from vae_service.core.data import load_mnist
from vae_service.core.model import VAE
from vae_service.core.spec import TrainSpec
from vae_service.tracking.mlflow_run import client, finish_run, start_run, tracking_uri
from vae_service.tracking.model_store import log_model, register
from vae_service.tracking.run_figures import render_run_figures

RUN_ID_FILE = "mlflow_run_id"


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
    def begin(cls, spec: TrainSpec, run_name: str, previous_run_id: Optional[str] = None, tags: Optional[dict] = None) -> "TrackedRun":
        """A new MLflow run (with extra `tags`), or the previous one reopened when a run
        directory is resumed."""
        try:
            if previous_run_id:
                client().update_run(previous_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                return cls(previous_run_id)
            return cls(start_run(spec, run_name, extra_tags=tags))
        except (MlflowException, OSError, requests.RequestException) as exc:
            reason = (str(getattr(exc, "message", exc)).splitlines() or [exc.__class__.__name__])[0]
            raise TrackingUnavailable(f"MLflow at {tracking_uri()} is unavailable: {reason[:300]}") from None

    def complete(self, spec: TrainSpec, vae: VAE, model_dir: Path, kl_per_dim: Optional[list[float]]) -> Published:
        with tempfile.TemporaryDirectory() as tmp:
            test = load_mnist(spec.data.root, download=spec.data.download, val_fraction=spec.data.val_fraction, limit=spec.data.limit).test
            for path in render_run_figures(vae, test, Path(tmp), kl_per_dim=kl_per_dim):
                client().log_artifact(self.run_id, str(path), "figures")
        published = Published(model_uri=log_model(self.run_id, model_dir, vae))
        if spec.tracking.register_as:
            published.registered_name = spec.tracking.register_as
            published.registered_version = register(published.model_uri, spec.tracking.register_as, spec.tracking.alias)
        finish_run(self.run_id, succeeded=True)
        return published

    def fail(self, error: str, killed: bool = False) -> None:
        finish_run(self.run_id, succeeded=False, error=error, killed=killed)

    @contextlib.contextmanager
    def failing_on_error(self, interrupted: type[BaseException]) -> Iterator[None]:
        """Marks the run FAILED, with the reason, when the block raises; KILLED when it raises
        `interrupted` (the user stopped it: `--resume` reopens the run)."""
        try:
            yield
        except interrupted:
            self.fail("interrupted by the user", killed=True)
            raise
        except BaseException as exc:
            self.fail(str(exc) or exc.__class__.__name__)
            raise
