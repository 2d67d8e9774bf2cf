"""The local cluster for tests/test_cluster.py, for real: a Docker engine, the images, the stack.

On a machine that reaches package registries but no container registry (CI's), everything is
built here: the base image with debootstrap (Debian's Python 3.11), the project image on it, and
the offline stand-ins of infra/compose.offline.yml. Each step is skipped when its result exists:
the base image is kept between runs by tag, and an image is rebuilt only when its build context
(the files its Dockerfile copies, the Dockerfile, the base image) changed — each image carries
the hash of its context as a label. The engine is stopped only if we started it. Every run is
its own compose project, so two runs (or a user's stack) never share containers or volumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from queue_support import free_ports

REPO = Path(__file__).resolve().parents[1]
PROJECT = f"vaeclustertest{uuid.uuid4().hex[:8]}"  # unique per run: `down -v` removes only ours
IMAGE_TAG = "cluster-test"
BASE_IMAGE = "vae-base:bookworm"
BUILD_EXTRA = REPO / "infra" / "build-extra"
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


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def ensure_base_image() -> None:
    """Debian bookworm with Python 3.11, from Debian's own packages (no registry needed)."""
    if image_exists(BASE_IMAGE):
        return
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing: install it (.ci/run does)")
    with tempfile.TemporaryDirectory(prefix="vae-base-") as root:
        sh("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm", root,
           "http://deb.debian.org/debian", timeout=900)
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        done = subprocess.run(["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        if done.returncode != 0:
            raise RuntimeError(f"docker import failed: {done.stderr}")


def prepare_build_extra() -> None:
    """torch from this machine's wheel store (the index would give the CUDA build), and pip's CA
    bundle for the build (TLS is intercepted here): infra/build-extra/, ignored by git."""
    wheels = BUILD_EXTRA / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("torch-*.whl")):
        sh(sys.executable, "-m", "pip", "download", "torch==2.13.0", "--no-deps", "-d", str(wheels), timeout=900)
    cert = os.environ.get("PIP_CERT") or sh(sys.executable, "-m", "pip", "config", "get", "global.cert", check=False).stdout.strip()
    if cert and Path(cert).is_file():
        shutil.copyfile(cert, BUILD_EXTRA / "ca.crt")


CONTEXT_LABEL = "vae.build-context"


def context_hash(dockerfile: str, *inputs: str) -> str:
    """A hash of what an image is built from: the Dockerfile, every file under `inputs` (paths
    relative to the repository; caches left out) and the base image's id."""
    digest = hashlib.sha256()
    base_id = sh("docker", "image", "inspect", "-f", "{{.Id}}", BASE_IMAGE).stdout.strip()
    digest.update(base_id.encode())
    for name in (dockerfile, *inputs):
        root = REPO / name
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_if_changed(tag: str, dockerfile: str, *inputs: str, timeout: float) -> bool:
    """Builds `tag` unless an image of that tag was built from the same context; True if built."""
    wanted = context_hash(dockerfile, *inputs)
    found = sh("docker", "image", "inspect", "-f", f'{{{{index .Config.Labels "{CONTEXT_LABEL}"}}}}', tag, check=False)
    if found.returncode == 0 and found.stdout.strip() == wanted:
        return False
    sh("docker", "build", "-f", dockerfile, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
       "--label", f"{CONTEXT_LABEL}={wanted}", "-t", tag, ".", timeout=timeout)
    return True


def build_images() -> list[str]:
    """The project image and the offline PostgreSQL image, each built only if its context
    changed; returns the tags that were built."""
    prepare_build_extra()
    built = []
    if build_if_changed(f"vae-service:{IMAGE_TAG}", "infra/Dockerfile", "infra/requirements.lock", "infra/build-extra",
                        "pyproject.toml", "README.md", "vae_service", timeout=1800):
        built.append(f"vae-service:{IMAGE_TAG}")
    if build_if_changed("vae-postgres:offline", "infra/offline/postgres.Dockerfile", "infra/offline", timeout=900):
        built.append("vae-postgres:offline")
    return built


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
                    "VAE_IMAGE_TAG": IMAGE_TAG, "VAE_DATA_DIR": str(self.data_dir), "RAY_WORKER_CPUS": "2"}
        return {**os.environ, **settings}

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return sh("docker-compose", "-p", PROJECT, *COMPOSE_FILES, *args, timeout=timeout, env=self.env, check=check)

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
