"""Tracking against a real `mlflow server` process whose artifacts live in S3 (moto's server).

The server runs with --serve-artifacts --artifacts-destination s3://…, so clients (the driver
and Ray workers) never need S3 credentials for MLflow: everything goes through the server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from artifact_checks import pickles_in_bytes

from vae_service.core.checkpoint import save_model
from vae_service.core.model import VAE, ModelConfig
from vae_service.core.spec_loading import validate_data
from vae_service.tracking.mlflow_run import client, start_run
from vae_service.tracking.registry import log_model, register

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(backend_uri: str, s3: dict, bucket: str, log_path: Path):
    """Starts `mlflow server` on a free port; returns (process, url) once /health answers."""
    port = _free_port()
    env = dict(os.environ, MLFLOW_S3_ENDPOINT_URL=s3["endpoint_url"])
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
         "--serve-artifacts", "--artifacts-destination", f"s3://{bucket}/mlflow",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return process, url
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.5)
    process.kill()
    pytest.fail(f"mlflow server did not start: {log_path.read_text()[-2000:]}")


def stop(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def mlflow_server(s3_server, tmp_path_factory):
    """One SQLite-backed MLflow server with S3 artifacts for this module."""
    bucket = s3_server["make_bucket"]()
    tmp = tmp_path_factory.mktemp("mlflow-server")
    process, url = start_mlflow_server(f"sqlite:///{tmp / 'mlflow.db'}", s3_server, bucket, tmp / "server.log")
    yield {"url": url, "bucket": bucket}
    stop(process)


def _keys(s3: dict, bucket: str) -> list[str]:
    pages = s3["client"].get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.mark.slow
def test_training_run_lands_artifacts_and_checkpoints_in_the_bucket(ray_cluster, tiny_spec, s3_server, mlflow_server, monkeypatch, run_job):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server["url"])
    checkpoints = s3_server["make_bucket"]()
    spec = tiny_spec(storage__uri=f"s3://{checkpoints}/runs", tracking__register_as="served", tracking__experiment="served",
                     tracking__figures=True)
    result = run_job(spec)

    run = client().get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: no S3 keys in clients
    artifact_keys = _keys(s3_server, mlflow_server["bucket"])
    assert any(k.endswith("figures/latent_scatter.png") for k in artifact_keys)
    assert any(k.endswith("spec.yaml") for k in artifact_keys)
    assert any(k.endswith("model.safetensors") for k in artifact_keys)
    assert any(k.endswith("MLmodel") for k in artifact_keys)
    assert not any(k.endswith(".pkl") for k in artifact_keys)
    checkpoint_keys = _keys(s3_server, checkpoints)
    # Pickle-free, by content (tests/artifact_checks.py): every object of both buckets, read back.
    found = [hit for bucket, keys in ((mlflow_server["bucket"], artifact_keys), (checkpoints, checkpoint_keys))
             for key in keys
             for hit in pickles_in_bytes(f"s3://{bucket}/{key}",
                                         s3_server["client"].get_object(Bucket=bucket, Key=key)["Body"].read())]
    assert artifact_keys and checkpoint_keys and found == [], found
    for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
        assert any("/checkpoint_" in k and k.endswith(name) for k in checkpoint_keys), name
    assert client().get_model_version_by_alias("served", "candidate").run_id == result.mlflow_run_id


def _postgres_database() -> str:
    """A fresh database on the machine's PostgreSQL for the MLflow backend."""
    import sqlalchemy

    name = f"vae_mlflow_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return name


def _drop_database(name: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.mark.slow
def test_postgresql_backed_server_records_runs_and_registry(s3_server, tmp_path, monkeypatch):
    database = _postgres_database()
    bucket = s3_server["make_bucket"]()
    process, url = start_mlflow_server(f"postgresql://postgres@127.0.0.1:5432/{database}", s3_server, bucket, tmp_path / "pg.log")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        spec = validate_data({"name": "pg", "tracking": {"experiment": "pg"}})
        run_id = start_run(spec, "pg-run")
        vae = VAE(ModelConfig(latent_dim=2, hidden=(16,)))
        model_dir = save_model(tmp_path / "model", vae)
        version = register(log_model(run_id, model_dir, vae), "pg-model", "candidate")

        assert client().get_model_version_by_alias("pg-model", "candidate").version == str(version)
        assert any(k.endswith("model.safetensors") for k in _keys(s3_server, bucket))
        # The rows are really in PostgreSQL.
        import sqlalchemy

        engine = sqlalchemy.create_engine(f"postgresql://postgres@127.0.0.1:5432/{database}")
        with engine.connect() as connection:
            runs = connection.execute(sqlalchemy.text("SELECT run_uuid FROM runs")).scalars().all()
            models = connection.execute(sqlalchemy.text("SELECT name FROM registered_models")).scalars().all()
        engine.dispose()
        assert run_id in runs and "pg-model" in models
    finally:
        stop(process)
        _drop_database(database)


@pytest.mark.slow
def test_unreachable_artifact_store_fails_the_run_and_registers_nothing(s3_server, tmp_path, monkeypatch):
    """The server's S3 bucket is missing: uploads fail after bounded retries, the run is marked
    FAILED with the reason, and no model version exists."""
    from vae_service.tracking.tracked_run import TrackedRun, TrackingUnavailable

    process, url = start_mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", s3_server, "no-such-bucket", tmp_path / "srv.log")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        spec = validate_data({"name": "broken", "tracking": {"experiment": "broken", "register_as": "broken-model"}})
        started = time.monotonic()
        with pytest.raises(TrackingUnavailable, match="is unavailable"):
            TrackedRun.begin(spec, "broken-run")  # its first artifact (spec.yaml) cannot land
        assert time.monotonic() - started < 120  # bounded, not MLflow's minutes of back-off
        experiment = client().get_experiment_by_name("broken")
        runs = client().search_runs([experiment.experiment_id])
        assert [r.info.status for r in runs] == ["FAILED"]
        assert runs[0].data.tags["vae.error"].startswith("could not record the run")
        assert client().search_registered_models("name='broken-model'") == []
    finally:
        stop(process)
