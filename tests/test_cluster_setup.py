"""The local cluster's first steps as README's "Run a local cluster" gives them, before any
container starts: `docker compose` is compose v2 and passes its exit code on, infra/make-env.sh
gives every secret its own value in a git-ignored .env, and that .env leaves the offline build
on its local base image. (The stack itself: tests/test_cluster.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from cluster_support import COMPOSE_FILES, REPO, Stack

SECRETS = ("POSTGRES_PASSWORD", "S3_SECRET_KEY", "RAY_AUTH_TOKEN", "VAE_API_TOKEN")
NO_ENGINE = "unix:///nonexistent/docker.sock"  # none of these commands may need a running engine


def settings(path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def make_env(target, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "infra/make-env.sh", str(target)], cwd=REPO, check=check, capture_output=True,
                          text=True, timeout=60)


def compose(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", *args], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**env, "DOCKER_HOST": NO_ENGINE})


def test_docker_compose_is_v2_and_its_exit_code_is_the_commands():
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and re.search(r"v2\.\d+", version.stdout), version.stdout + version.stderr
    missing = compose("-f", "no-such-compose-file.yml", "config", env=dict(os.environ))
    assert missing.returncode != 0, "docker compose hid a failure behind exit code 0"


def test_make_env_gives_each_secret_its_own_value_and_keeps_an_existing_file(tmp_path):
    target = tmp_path / ".env"
    make_env(target)
    values = settings(target)
    example = settings(REPO / ".env.example")
    assert sorted(key for key, value in example.items() if value == "change-me") == sorted(SECRETS)
    secrets = [values[key] for key in SECRETS]
    assert len(set(secrets)) == len(SECRETS), "two secrets share a value"
    assert all(re.fullmatch(r"[0-9a-f]{48}", value) for value in secrets)
    assert {k: v for k, v in values.items() if k not in SECRETS} == {k: v for k, v in example.items() if k not in SECRETS}
    assert target.stat().st_mode & 0o077 == 0, "a file of secrets readable by others"

    before = target.read_bytes()
    again = make_env(target, check=False)
    assert again.returncode == 0 and "kept" in again.stderr
    assert target.read_bytes() == before  # the stack's volumes were made with these secrets


def test_the_repositorys_env_file_is_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO, timeout=30)
    assert ignored.returncode == 0, ".env (the cluster's secrets) is not git-ignored"


def test_the_env_file_keeps_the_offline_build_on_its_local_base_image(tmp_path):
    make_env(tmp_path / ".env")
    env = {k: v for k, v in os.environ.items() if k != "BASE_IMAGE"}
    done = compose(*COMPOSE_FILES, "--env-file", str(tmp_path / ".env"), "config", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["services"]["postgres"]["build"]["args"]["BASE_IMAGE"] == "vae-base:bookworm"
    assert config["services"]["s3"]["image"] == config["services"]["mlflow"]["image"] == "vae-service:dev"


@pytest.mark.parametrize("secret", SECRETS)
def test_an_up_that_cannot_start_fails_naming_what_is_missing(tmp_path, monkeypatch, secret):
    """A failed `up` is a failed command: for a user typing it, and for the tests' own compose
    calls (tests/cluster_support.py), which raise instead of carrying on."""
    monkeypatch.delenv(secret, raising=False)
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    stack = Stack(data_dir=tmp_path)
    del stack.secrets[secret]
    done = compose("-p", "vaesetuptest", *COMPOSE_FILES, "up", "-d", "--no-build", env=stack.env)
    assert done.returncode != 0 and f"set {secret}" in done.stderr, done.stderr
    with pytest.raises(RuntimeError, match=f"set {secret}"):
        stack.compose("up", "-d", "--no-build")
