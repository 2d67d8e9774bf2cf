"""One settings object for the queue service and its clients (environment prefix `VAE_`).

    VAE_HOME            state directory (default ./.vae): the SQLite file, the generated API token
    VAE_DB_URL          database URL (default sqlite:///<VAE_HOME>/queue.db; postgresql://… works)
    VAE_API_URL         where clients find the API (default http://127.0.0.1:8000)
    VAE_API_TOKEN       bearer tokens, comma-separated; an entry `name:token` names its owner
    VAE_API_TOKEN_FILE  a file with one token (or name:token) per line
    VAE_RAY_ADDRESS     the Ray dashboard / Jobs API URL (default http://127.0.0.1:8265)
    VAE_RAY_TIMEOUT_S   how long one call to Ray may wait for its answer (default 10); the
                        dispatcher gives up its lead after 3 times that without Ray
    VAE_JOB_PYTHON      the Python that runs jobs on the cluster (default: this interpreter)
    VAE_STORAGE_URI     where queued jobs keep their runs when their spec names no storage.uri
                        (default: the spec's own default, runs/ in the server's directory)
    VAE_MAX_FAILURES    worker failures (a lost node, a killed process) a queued run recovers from,
                        from its latest checkpoint, when its spec sets no storage.max_failures
                        (default 3)
    VAE_MAX_GRID_POINTS the most trials an all-grid sweep may make (default and ceiling 10,000)
    VAE_MLFLOW_UI_URL   the MLflow UI that the web page (/ui) links runs to (default:
                        MLFLOW_TRACKING_URI when that is an http(s) URL, else no links)
    VAE_RAY_UI_URL      the Ray dashboard that the web page links jobs to, as a browser reaches
                        it (default: VAE_RAY_ADDRESS, the same server)

Who may do what (queue/policy.py; the server reads these):

    VAE_ADMINS          names (from `name:token` entries, or a bare token's `token-1a2b3c4d`),
                        comma-separated: they see and cancel every job, submit at any priority,
                        and are not held to the lists below. Unset or empty: the only identity
                        is admin when the tokens name just one (the generated token of a local
                        `vae server`, a single VAE_API_TOKEN), else nobody is.
    VAE_MAX_USER_PRIORITY  the highest priority others may submit at (default 100)
    VAE_REGISTER_NAMES  glob patterns a spec's tracking.register_as must match, comma-separated;
                        `{user}` is the submitter's name, e.g. `{user}-*` (default `*`)
    VAE_ALLOWED_STORAGE where queued jobs may write runs: comma-separated local directories or
                        s3://bucket/prefix (default: VAE_STORAGE_URI, else runs/ in the server's
                        directory)
    VAE_ALLOWED_DATA    where a spec's data.root may point, the same way (default: VAE_DATA_DIR
                        and the download cache, VAE_CACHE_DIR or ~/.cache/vae-service)

The team queue (queue/scheduling.py; unset quotas: no limit):

    VAE_QUOTA_CPUS      the most CPUs one user's admitted jobs may hold at once (everyone, admins too)
    VAE_QUOTA_GPUS      the same for GPUs
    VAE_QUOTA_JOBS      the most jobs one user may have on the cluster at once
    VAE_PREEMPT_MIN_RUN_S  a running job is not preempted before it has run this long in its
                        current attempt (default 120: the thrash guard)
    VAE_PREEMPT_GRACE_S how long a stopped job (preempted or cancelled) has to checkpoint and end
                        before Ray kills it (default 30)
    VAE_FAIR_SHARE_WEIGHTS  each user's weight in the fair share, `name=weight` comma-separated,
                        e.g. `alice=2,bob=1` (a team's share; unlisted users weigh 1)
    VAE_FAIR_SHARE_HALF_LIFE_S  how fast past usage is forgotten (default 604800, 7 days); 0: no
                        history, only what users hold now counts (quotas.FairShare)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vae_service.core.sweep_spec import MAX_GRID_POINTS

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_RAY_ADDRESS = "http://127.0.0.1:8265"
TOKEN_FILE_NAME = "api_token"
PREEMPT_MIN_RUN_S = 120.0  # the thrash guard
PREEMPT_GRACE_S = 30  # from SIGTERM to SIGKILL when Ray stops a job
FAIR_SHARE_HALF_LIFE_S = 7 * 24 * 3600.0  # a week's heavy use is half forgotten a week later
QUEUED_MAX_FAILURES = 3  # a queued run's storage.max_failures unless its spec says


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAE_", extra="ignore")

    home: Path = Path(".vae")
    db_url: Optional[str] = None
    api_url: str = DEFAULT_API_URL
    api_token: Optional[SecretStr] = None
    api_token_file: Optional[Path] = None
    ray_address: str = DEFAULT_RAY_ADDRESS
    ray_timeout_s: float = Field(10.0, gt=0, le=600)
    job_python: Optional[str] = None
    storage_uri: Optional[str] = None
    max_failures: int = Field(QUEUED_MAX_FAILURES, ge=-1)
    admins: Optional[str] = None
    max_user_priority: int = 100
    register_names: str = "*"
    allowed_storage: Optional[str] = None
    allowed_data: Optional[str] = None
    max_grid_points: int = Field(MAX_GRID_POINTS, ge=1, le=MAX_GRID_POINTS)
    quota_cpus: Optional[float] = Field(None, gt=0)
    quota_gpus: Optional[float] = Field(None, ge=0)
    quota_jobs: Optional[int] = Field(None, ge=1)
    preempt_min_run_s: float = Field(PREEMPT_MIN_RUN_S, ge=0)
    preempt_grace_s: int = Field(PREEMPT_GRACE_S, ge=1, le=3600)
    fair_share_weights: Optional[str] = None
    fair_share_half_life_s: float = Field(FAIR_SHARE_HALF_LIFE_S, ge=0)
    mlflow_ui_url: Optional[str] = Field(default_factory=lambda: _http_url(os.environ.get("MLFLOW_TRACKING_URI")))
    ray_ui_url: Optional[str] = None

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.home_dir / 'queue.db'}"

    @property
    def admin_names(self) -> Optional[frozenset[str]]:
        """VAE_ADMINS as a set; None when unset or empty (then auth.py decides)."""
        return frozenset(split_list(self.admins)) or None

    @field_validator("fair_share_weights")
    @classmethod
    def _weights_parse(cls, value: Optional[str]) -> Optional[str]:
        parse_weights(value)  # at start-up, not at the first tick
        return value

    @property
    def weights(self) -> dict[str, float]:
        """VAE_FAIR_SHARE_WEIGHTS as {user: weight}."""
        return parse_weights(self.fair_share_weights)

    @property
    def token_file(self) -> Path:
        """The explicit token file, else the one `vae server` generates under VAE_HOME."""
        return (self.api_token_file or self.home_dir / TOKEN_FILE_NAME).expanduser()


def _http_url(value: Optional[str]) -> Optional[str]:
    """`value` when it is an http(s) URL (a tracking server, whose UI it also serves), else None."""
    return value if value and value.lower().startswith(("http://", "https://")) else None


def split_list(value: Optional[str]) -> list[str]:
    """A comma-separated setting as a list (blank entries dropped)."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def parse_weights(value: Optional[str]) -> dict[str, float]:
    """`alice=2,bob=0.5` as {"alice": 2.0, "bob": 0.5}; anything else is a ValueError that names
    the variable and the entry (a typo must not silently give a team weight 1)."""
    weights: dict[str, float] = {}
    for entry in split_list(value):
        name, _, number = (part.strip() for part in entry.partition("="))
        try:
            weight = float(number)
        except ValueError:
            weight = float("nan")
        if not name or not weight > 0 or weight == float("inf") or name in weights:
            why = "a user named twice" if name in weights else "want name=weight with a positive number"
            raise ValueError(f"VAE_FAIR_SHARE_WEIGHTS: {entry!r}: {why}, e.g. alice=2,bob=1")
        weights[name] = weight
    return weights
