"""One settings object for the queue service and its clients (environment prefix `VAE_`).

    VAE_HOME            state directory (default ./.vae): the SQLite file, the generated API token
    VAE_DB_URL          database URL (default sqlite:///<VAE_HOME>/queue.db; postgresql://… works)
    VAE_API_URL         where clients find the API (default http://127.0.0.1:8000)
    VAE_API_TOKEN       bearer tokens, comma-separated; an entry `name:token` names its owner
    VAE_API_TOKEN_FILE  a file with one token (or name:token) per line
    VAE_RAY_ADDRESS     the Ray dashboard / Jobs API URL (default http://127.0.0.1:8265)
    VAE_JOB_PYTHON      the Python that runs jobs on the cluster (default: this interpreter)
    VAE_STORAGE_URI     where queued jobs keep their runs when their spec names no storage.uri
                        (default: the spec's own default, runs/ in the server's directory)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_RAY_ADDRESS = "http://127.0.0.1:8265"
TOKEN_FILE_NAME = "api_token"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAE_", extra="ignore")

    home: Path = Path(".vae")
    db_url: Optional[str] = None
    api_url: str = DEFAULT_API_URL
    api_token: Optional[SecretStr] = None
    api_token_file: Optional[Path] = None
    ray_address: str = DEFAULT_RAY_ADDRESS
    job_python: Optional[str] = None
    storage_uri: Optional[str] = None

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.home_dir / 'queue.db'}"

    @property
    def token_file(self) -> Path:
        """The explicit token file, else the one `vae server` generates under VAE_HOME."""
        return (self.api_token_file or self.home_dir / TOKEN_FILE_NAME).expanduser()
