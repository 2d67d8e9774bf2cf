"""docker-compose.yml cannot be started here (no Docker engine): check that it hangs together
with the code it starts — services and dependencies exist, the `vae server` flags are real, the
settings it passes are the ones the queue reads, and no secret is written into the file."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from vae_service.queue.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())  # merge keys (<<) resolved


def test_services_and_dependencies_exist():
    services = compose()["services"]
    assert {"postgres", "minio", "buckets", "mlflow", "ray-head", "queue"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    assert services["ray-head"]["environment"]["RAY_AUTH_MODE"] == "token"
    assert services["queue"]["environment"]["RAY_AUTH_TOKEN"] == services["ray-head"]["environment"]["RAY_AUTH_TOKEN"]


def test_the_queue_command_uses_real_flags_and_settings():
    from typer.main import get_command

    from vae_service.cli import app

    server = get_command(app).commands["server"]
    known = {opt for param in server.params for opt in param.opts}
    queue = compose()["services"]["queue"]
    flags = set(re.findall(r"--[a-z-]+", queue["command"]))
    assert flags and flags <= known, flags - known
    fields = {f"VAE_{name.upper()}" for name in Settings.model_fields}
    used = {name for name in queue["environment"] if name.startswith("VAE_") and name not in ("VAE_DATA_DIR", "VAE_S3_ENDPOINT_URL")}
    assert used <= fields, used - fields


def test_no_secret_is_written_into_the_file():
    text = (REPO / "docker-compose.yml").read_text()
    for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "RAY_AUTH_TOKEN", "VAE_API_TOKEN", "AWS_SECRET_ACCESS_KEY"):
        for value in re.findall(rf"{name}: (\S+)", text):
            assert value.startswith("${"), f"{name} is set literally"
    assert "torch==2.13.0" in (REPO / "infra" / "Dockerfile").read_text()
