"""The settings a process hands on to the processes it starts elsewhere — Ray Train workers,
sweep trials, queued jobs — which run in other directories, maybe on other machines: data and
cache locations (made absolute), the MLflow store and its credentials, the S3 endpoint, keys
and region. Values come from this process's environment and are never logged."""

from __future__ import annotations

import os
from pathlib import Path

from vae_service import storage

FORWARDED = (
    "VAE_DATA_DIR", "VAE_CACHE_DIR", "VAE_MNIST_MIRROR",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_S3_ENDPOINT_URL",
) + storage.ENV_VARS
ABSOLUTE_PATHS = ("VAE_DATA_DIR", "VAE_CACHE_DIR")


def forwarded_env() -> dict[str, str]:
    """FORWARDED variables that are set, paths made absolute, plus MLFLOW_TRACKING_URI (the
    default ./mlflow.db made absolute, so every process logs to the same store)."""
    from vae_service.tracking.mlflow_run import tracking_uri  # imports mlflow: only when asked

    env = {name: os.environ[name] for name in FORWARDED if os.environ.get(name)}
    for name in ABSOLUTE_PATHS:
        if name in env:
            env[name] = str(Path(env[name]).expanduser().resolve())
    env["MLFLOW_TRACKING_URI"] = tracking_uri()
    return env
