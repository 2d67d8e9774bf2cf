"""What a job needs from the server's environment, passed as the Ray job's `env_vars`.

Spec transport: the normalised spec travels in VAE_JOB_SPEC (see queue.entry), not as a file
the server writes: the Ray head may be another machine or container with no view of the
server's disk, and the store stays the only copy that matters. Relative paths in the spec
(`storage.uri: runs`, `data.root`) mean "relative to where `vae server` runs", as they do for
`vae run`: the job starts in VAE_JOB_CWD (the server's working directory) when that directory
exists on the node. MLFLOW_TRACKING_URI and VAE_DATA_DIR/VAE_CACHE_DIR are made absolute.

The env vars are visible to whoever can read the Ray job (the dashboard behind Ray's token);
this service never logs them and never returns them from its API.
"""

from __future__ import annotations

import os
from pathlib import Path

from vae_service import storage

PASS_THROUGH = ("VAE_DATA_DIR", "VAE_CACHE_DIR", "VAE_MNIST_MIRROR", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_S3_ENDPOINT_URL") + storage.ENV_VARS
ABSOLUTE_PATHS = ("VAE_DATA_DIR", "VAE_CACHE_DIR")


def job_env(job_id: str, spec_yaml: str) -> dict[str, str]:
    from vae_service.tracking.mlflow_run import tracking_uri  # absolute sqlite:/// default

    env = {name: os.environ[name] for name in PASS_THROUGH if os.environ.get(name)}
    for name in ABSOLUTE_PATHS:
        if name in env:
            env[name] = str(Path(env[name]).expanduser().resolve())
    env["MLFLOW_TRACKING_URI"] = tracking_uri()
    env["VAE_JOB_ID"] = job_id
    env["VAE_JOB_SPEC"] = spec_yaml
    env["VAE_JOB_CWD"] = str(Path.cwd())
    return env
