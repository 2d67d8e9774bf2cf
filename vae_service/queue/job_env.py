"""What a job needs from the server's environment, passed as the Ray job's `env_vars`.

Spec transport: the normalised spec travels in VAE_JOB_SPEC (see queue.entry), not as a file
the server writes: the Ray head may be another machine or container with no view of the
server's disk, and the store stays the only copy that matters. Relative paths in the spec
(`storage.uri: runs`, `data.root`) mean "relative to where `vae server` runs", as they do for
`vae run`: the job starts in VAE_JOB_CWD (the server's working directory) when that directory
exists on the node. MLFLOW_TRACKING_URI and VAE_DATA_DIR/VAE_CACHE_DIR are made absolute.

The job's run directory, decided when it was stored, travels in VAE_JOB_RUN_DIR. A resumed
attempt (after a preemption) gets VAE_JOB_RESUME=1: the entrypoint continues that directory
from its latest checkpoint. RAY_JOB_STOP_SIGNAL / RAY_JOB_STOP_WAIT_TIME_S
are read by Ray's job supervisor, which runs with the job's environment: stopping the job sends
its driver SIGTERM (a graceful stop, core/interrupt.py) and SIGKILL after the grace period.

The env vars are visible to whoever can read the Ray job (the dashboard behind Ray's token) and
land in Ray's logs, so they hold no secret: the job's driver takes its credentials (S3 keys,
MLflow password) from its own node's environment, as every node of the compose cluster has them
(environment.runtime_env_vars).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from vae_service.environment import runtime_env_vars
from vae_service.queue.settings import PREEMPT_GRACE_S


def job_env(job_id: str, spec_yaml: str, run_dir: Optional[str], *, resume: bool = False,
            grace_s: int = PREEMPT_GRACE_S) -> dict[str, str]:
    env = runtime_env_vars()
    env["VAE_JOB_ID"] = job_id
    env["VAE_JOB_SPEC"] = spec_yaml
    if run_dir:  # (a job stored before run directories were: the entrypoint works it out)
        env["VAE_JOB_RUN_DIR"] = run_dir
    env["VAE_JOB_CWD"] = str(Path.cwd())
    if resume:
        env["VAE_JOB_RESUME"] = "1"
    env["RAY_JOB_STOP_SIGNAL"] = "SIGTERM"
    env["RAY_JOB_STOP_WAIT_TIME_S"] = str(int(grace_s))
    return env
