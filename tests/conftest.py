"""Shared fixtures: one real local Ray cluster per test session, MNIST from ../shared/data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("VAE_DATA_DIR", str(REPO.parent / "shared" / "data"))
# Runs log to a throw-away local MLflow store unless a test points them at a server.
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.mkdtemp(prefix='vae-tests-mlflow-')}/mlflow.db")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray local cluster, shared by every test that trains (starting one costs ~10 s)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_spec(tmp_path):
    """A spec factory: 2,000 MNIST images, 1 epoch, runs under tmp_path; `--set`-style overrides."""
    from vae_service.core.spec_loading import apply_overrides, validate_data

    def make(**overrides):
        base = {
            "name": "tiny",
            "data": {"limit": 2000},
            "model": {"hidden": [64], "latent_dim": 4},
            "optim": {"epochs": 1, "batch_size": 100, "seed": 0},
            "resources": {"num_workers": 1, "cpus_per_worker": 1},
            "storage": {"uri": str(tmp_path / "runs")},
        }
        assignments = [f"{key.replace('__', '.')}={value}" for key, value in overrides.items()]
        return validate_data(apply_overrides(base, assignments))

    return make
