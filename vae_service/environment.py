"""Where this process's settings point (the MLflow store, MLflow's process defaults), and the
settings it hands on to the processes it starts elsewhere — Ray Train workers,
sweep trials, queued jobs — which run in other directories, maybe on other machines: data and
cache locations (made absolute), the MLflow store and its credentials, the S3 endpoint, keys
and region. Values come from this process's environment and are never logged."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, MutableMapping, Optional

from vae_service import storage
from vae_service.core.errors import SECRET_VARIABLES, redact

if TYPE_CHECKING:
    import ray

FORWARDED = (
    "VAE_DATA_DIR", "VAE_CACHE_DIR", "VAE_MNIST_MIRROR", "VAE_FASHION_MNIST_MIRROR",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_S3_ENDPOINT_URL",
) + storage.ENV_VARS
ABSOLUTE_PATHS = ("VAE_DATA_DIR", "VAE_CACHE_DIR")


LOCAL_DB = "mlflow.db"  # the embedded MLflow store, in the directory the job starts from
MLFLOW_PROCESS_DEFAULTS = {
    # Bounded retries against a tracking server (MLflow's default backs off for minutes).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # No progress bars on stderr while a model is downloaded (`vae sample` & co. print one line).
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Artifacts always through the tracking server: a server may offer presigned S3 URLs for
    # multipart transfers, which name its S3 endpoint (e.g. http://s3:8333 inside the compose
    # network) and fail from anywhere else. Clients never need to reach S3 for MLflow.
    "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
    "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
    # MLflow's INFO lines ("Creating initial MLflow database tables…") are for its developers.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # MLflow tags a run with its git commit; where there is no git (the compose image) GitPython
    # explains so in three 15-line warnings per run. Without git a run simply has no commit tag.
    "GIT_PYTHON_REFRESH": "quiet",
}
# Loggers whose warnings are notes for developers, not for someone running a job.
# Ray Data logs each dataset's execution plan and progress at INFO, to stdout.
CHATTY_LOGGERS = ("ray._private.authentication", "ray.data")


def tracking_uri() -> str:
    """The MLflow tracking URI for this process and its workers (absolute for the local default)."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return f"sqlite:///{Path.cwd() / LOCAL_DB}"


def apply_process_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """MLFLOW_PROCESS_DEFAULTS, where the environment sets nothing else. MLflow reads these from
    the environment only, so they are process settings: applied once by a process entry point (the
    `vae` CLI's main, the queue job entrypoint) before any MLflow call; never by library code."""
    for name, value in MLFLOW_PROCESS_DEFAULTS.items():
        environ.setdefault(name, value)


def quiet_libraries(environ: MutableMapping[str, str] = os.environ) -> None:
    """Library warnings meant for developers (deprecations, MLflow's hints about type hints and
    input examples, Ray's note on token auth) stay out of a user's terminal; VAE_DEBUG=1 shows
    them. Applied by process entry points, like apply_process_defaults."""
    if environ.get("VAE_DEBUG"):
        return
    warnings.simplefilter("ignore")
    quiet_loggers(environ)


def quiet_loggers(environ: MutableMapping[str, str] = os.environ) -> None:
    """CHATTY_LOGGERS at ERROR (unless VAE_DEBUG); again after importing a library that sets up
    its own logging on import (Ray Data)."""
    if not environ.get("VAE_DEBUG"):
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


def forwarded_env() -> dict[str, str]:
    """FORWARDED variables and MLflow's process defaults (as this process's entry point applied
    them) that are set, paths made absolute, plus MLFLOW_TRACKING_URI (the default ./mlflow.db
    made absolute, so every process logs to the same store). Holds credentials: never put it in
    a Ray runtime environment whole (runtime_env_vars)."""
    env = {name: os.environ[name] for name in (*FORWARDED, *MLFLOW_PROCESS_DEFAULTS) if os.environ.get(name)}
    for name in ABSOLUTE_PATHS:
        if name in env:
            env[name] = str(Path(env[name]).expanduser().resolve())
    env["MLFLOW_TRACKING_URI"] = tracking_uri()
    return env


def runtime_env_vars() -> dict[str, str]:
    """forwarded_env() without its secrets: what may go into a Ray runtime environment. Ray's
    runtime-env agent logs every runtime environment it sets up, and its Jobs API lists each
    job's, so credentials travel otherwise: the workers of a run get them from sealed_secrets(),
    a queued job's driver from its own node's environment (a cluster's nodes hold them)."""
    return {name: value for name, value in forwarded_env().items() if not _secret(name, value)}


def sealed_secrets() -> ray.ObjectRef:
    """This process's secrets (those of forwarded_env()) in Ray's object store, for the workers of
    a run to apply with `applied(ray.get(ref))`: an object is never logged, and a reference names
    only its id. Needs Ray to be initialised."""
    import ray  # only the processes that start runs use Ray here

    return ray.put({name: value for name, value in forwarded_env().items() if _secret(name, value)})


def _secret(name: str, value: str) -> bool:
    """A secret's variable, or a value that carries credentials (a URL with a password in it)."""
    return name in SECRET_VARIABLES or redact(value) != value


@contextlib.contextmanager
def applied(env: dict[str, Optional[str]]) -> Iterator[None]:
    """This process's environment with `env` laid over it for the block (None: unset), restored
    afterwards (a sweep trial takes on its driver's settings only while it runs)."""
    saved = {name: os.environ.get(name) for name in env}
    try:
        _set(env)
        yield
    finally:
        _set(saved)


def _set(env: dict[str, Optional[str]]) -> None:
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
