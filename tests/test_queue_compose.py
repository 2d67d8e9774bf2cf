"""docker-compose.yml read as data: it hangs together with the code it starts. (tests/test_cluster.py
brings it up for real; these checks are fast and say which line is wrong.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from vae_service.queue.settings import Settings

REPO = Path(__file__).resolve().parents[1]
ONE_SHOT = {"buckets"}


def compose(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((REPO / name).read_text())  # merge keys (<<) resolved


def test_services_and_dependencies_exist():
    services = compose()["services"]
    assert {"postgres", "s3", "buckets", "mlflow", "ray-head", "ray-worker", "ray-worker-gpu", "api"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert how["condition"] in ("service_healthy", "service_completed_successfully"), name
        if name not in ONE_SHOT:
            assert "healthcheck" in service or "gpu" in service.get("profiles", []), f"{name} has no healthcheck"
    tokens = {services[name]["environment"]["RAY_AUTH_TOKEN"] for name in ("ray-head", "ray-worker", "api")}
    assert len(tokens) == 1 and all(services[n]["environment"]["RAY_AUTH_MODE"] == "token" for n in ("ray-head", "ray-worker"))
    assert "ray-head:6379" in services["ray-worker"]["command"]
    assert "container_name" not in services["ray-worker"] and "ports" not in services["ray-worker"]  # scalable
    gpu = services["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_api_command_uses_real_flags_and_settings():
    from typer.main import get_command

    from vae_service.cli import app

    server = get_command(app).commands["server"]
    known = {opt for param in server.params for opt in param.opts}
    api = compose()["services"]["api"]
    flags = {word for word in api["command"] if word.startswith("--")}
    assert flags and flags <= known, flags - known
    fields = {f"VAE_{name.upper()}" for name in Settings.model_fields}
    used = {name for name in api["environment"] if name.startswith("VAE_") and name not in ("VAE_DATA_DIR", "VAE_S3_ENDPOINT_URL")}
    assert used <= fields, used - fields
    assert api["environment"]["VAE_STORAGE_URI"].startswith("s3://")  # every node reaches the runs


def test_ports_are_published_on_localhost_only():
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_no_secret_is_written_into_the_files():
    for name in ("docker-compose.yml", "infra/compose.offline.yml"):
        text = (REPO / name).read_text()
        for secret in ("POSTGRES_PASSWORD", "S3_SECRET_KEY", "RAY_AUTH_TOKEN", "VAE_API_TOKEN", "AWS_SECRET_ACCESS_KEY"):
            for value in re.findall(rf"{secret}: (\S+)", text):
                assert value.startswith("${"), f"{name}: {secret} is set literally"
    assert "torch==${TORCH_VERSION}" in (REPO / "infra" / "Dockerfile").read_text()


def test_every_variable_is_documented_in_env_example():
    used = set()
    for name in ("docker-compose.yml", "infra/compose.offline.yml"):
        used |= set(re.findall(r"\$\{([A-Z0-9_]+)", (REPO / name).read_text()))
    # set, or shown commented out with its default (BASE_IMAGE: a value would override the offline base)
    documented = set(re.findall(r"^#?([A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.M))
    assert used <= documented, used - documented


def test_the_offline_override_replaces_only_what_cannot_be_pulled():
    override = compose("infra/compose.offline.yml")["services"]
    assert set(override) == {"postgres", "s3"}
    base = compose()["services"]
    pulled = {name for name, service in base.items() if "build" not in service and service.get("pull_policy") != "never"}
    assert pulled == {"postgres", "s3"}
    assert override["s3"]["pull_policy"] == "never"  # our image, built here


def test_the_project_image_is_built_by_one_service_and_shared_by_all():
    """`up --build` builds what has a build section, once per service: one service builds the
    image, every other service that runs it never pulls it (it is built before they start)."""
    services = compose()["services"]
    image = services["buckets"]["image"]
    builders = [name for name, service in services.items() if service.get("image") == image and "build" in service]
    assert builders == ["buckets"], builders
    users = [name for name, service in services.items() if service.get("image") == image]
    assert {"mlflow", "ray-head", "ray-worker", "api"} <= set(users)
    assert all(services[name]["pull_policy"] == "never" for name in users)
