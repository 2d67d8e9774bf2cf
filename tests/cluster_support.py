"""The local cluster for tests/test_cluster.py, for real: a Docker engine, the images, the stack.

On a machine that reaches package registries but no container registry (CI's), the images are
built here the way the README tells a user to: infra/offline-build.sh (the base image with
debootstrap, then the project image and the offline stand-ins of infra/compose.offline.yml, each
only when its build context changed). Compose is `docker compose` (the CLI plugin
infra/machine-setup.sh installs), whose exit code is the command's: a failed `up` fails. The
engine is stopped only if we started it. Every run is its own compose project, so two runs (or a
user's stack) never share containers or volumes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from queue_support import free_ports

REPO = Path(__file__).resolve().parents[1]
PROJECT = f"vaeclustertest{uuid.uuid4().hex[:8]}"  # unique per run: `down -v` removes only ours
IMAGE_TAG = "cluster-test"
PORT_NAMES = ("VAE_API_PORT", "MLFLOW_PORT", "RAY_DASHBOARD_PORT", "S3_PORT")
COMPOSE_FILES = ["-f", str(REPO / "docker-compose.yml"), "-f", str(REPO / "infra" / "compose.offline.yml")]


def sh(*cmd: str, timeout: float = 600, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} … exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def engine_answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@contextlib.contextmanager
def docker_engine(log_dir: Path) -> Iterator[None]:
    """A running Docker engine: the one there is, or a `dockerd` started (and stopped) here."""
    if engine_answers():
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise RuntimeError("no Docker engine and no dockerd: install docker.io (.ci/run does)")
    log = open(log_dir / "dockerd.log", "wb")
    process = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not engine_answers():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {log_dir / 'dockerd.log'}")
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def build_images() -> str:
    """The documented offline build, as a user runs it: infra/offline-build.sh (the base image once,
    then each image only when its build context changed); returns what it said."""
    done = sh("bash", "infra/offline-build.sh", timeout=2400, env={**os.environ, "VAE_IMAGE_TAG": IMAGE_TAG})
    return done.stderr


WORKER_GROUP_START_TIMEOUT_S = 20  # the stack's RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (Ray Train's default: 60)


@dataclass
class Stack:
    """The compose project: its settings (fresh secrets, free ports) and the commands on it."""

    data_dir: Path
    secrets: dict = field(default_factory=lambda: {
        "POSTGRES_PASSWORD": secrets.token_hex(16), "S3_SECRET_KEY": secrets.token_hex(16),
        "RAY_AUTH_TOKEN": secrets.token_hex(32), "VAE_API_TOKEN": secrets.token_hex(16)})
    ports: dict = field(default_factory=lambda: dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)))))

    @property
    def env(self) -> dict:
        settings = {**self.secrets, **{k: str(v) for k, v in self.ports.items()}, "S3_ACCESS_KEY": "vae",
                    "VAE_IMAGE_TAG": IMAGE_TAG, "VAE_DATA_DIR": str(self.data_dir), "RAY_WORKER_CPUS": "2",
                    # a worker group not placed is started again after 20 s, not 60: the killed-worker test sees it sooner
                    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(WORKER_GROUP_START_TIMEOUT_S)}
        return {**os.environ, **settings}

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return sh("docker", "compose", "-p", PROJECT, *COMPOSE_FILES, *args, timeout=timeout, env=self.env, check=check)

    def up(self, workers: int) -> None:
        self.compose("up", "-d", "--no-build", "--wait", "--wait-timeout", "600", "--scale", f"ray-worker={workers}", timeout=900)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300, check=False)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "200", check=False).stdout

    # ---- what a user on this machine points at ------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['VAE_API_PORT']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['MLFLOW_PORT']}"

    def client_env(self) -> dict:
        return {**os.environ, "VAE_API_URL": self.api_url, "VAE_API_TOKEN": self.secrets["VAE_API_TOKEN"],
                "MLFLOW_TRACKING_URI": self.mlflow_url, "COLUMNS": "200"}

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.ports['S3_PORT']}", region_name="us-east-1",
                            aws_access_key_id="vae", aws_secret_access_key=self.secrets["S3_SECRET_KEY"])

    def keys(self, bucket: str, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def job(self, job_id: str) -> dict:
        import httpx

        response = httpx.get(f"{self.api_url}/jobs/{job_id}", headers={"Authorization": f"Bearer {self.secrets['VAE_API_TOKEN']}"}, timeout=10)
        response.raise_for_status()
        return response.json()


def leftovers() -> dict[str, list[str]]:
    """Containers, networks and volumes of the test's compose project that still exist."""
    label = f"label=com.docker.compose.project={PROJECT}"
    return {kind: sh("docker", kind, "ls", "-q", "--filter", label, *(["-a"] if kind == "container" else [])).stdout.split()
            for kind in ("container", "network", "volume")}
