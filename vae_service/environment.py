"""The settings a process hands on to the processes it starts elsewhere — Ray Train workers,
sweep trials, queued jobs — which run in other directories, maybe on other machines: data and
cache locations (made absolute), the MLflow store and its credentials, the S3 endpoint, keys
and region. Values come from this process's environment and are never logged."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from vae_service import storage

FORWARDED = (
    "VAE_DATA_DIR", "VAE_CACHE_DIR", "VAE_MNIST_MIRROR",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_S3_ENDPOINT_URL",
) + storage.ENV_VARS
ABSOLUTE_PATHS = ("VAE_DATA_DIR", "VAE_CACHE_DIR")


def forwarded_env() -> dict[str, str]:
    """FORWARDED variables and MLflow's process defaults (mlflow_run.MLFLOW_PROCESS_DEFAULTS, as
    this process's entry point applied them) that are set, paths made absolute, plus
    MLFLOW_TRACKING_URI (the default ./mlflow.db made absolute, so every process logs to the same
    store)."""
    from vae_service.tracking.mlflow_run import MLFLOW_PROCESS_DEFAULTS, tracking_uri

    env = {name: os.environ[name] for name in (*FORWARDED, *MLFLOW_PROCESS_DEFAULTS) if os.environ.get(name)}
    for name in ABSOLUTE_PATHS:
        if name in env:
            env[name] = str(Path(env[name]).expanduser().resolve())
    env["MLFLOW_TRACKING_URI"] = tracking_uri()
    return env


@contextlib.contextmanager
def applied(env: dict[str, str]) -> Iterator[None]:
    """This process's environment with `env` laid over it for the block, restored afterwards
    (a sweep trial takes on its driver's settings only while it runs)."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
