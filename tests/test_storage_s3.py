"""Run storage on a real S3 API (moto's HTTP server): the storage module, a training run whose
files land in the bucket, --resume from an s3:// run directory, and an unreachable endpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from artifact_checks import pickles_in_bytes

from vae_service import storage
from vae_service.storage import StorageError
from vae_service.training.checkpoints import checkpoint_from_uri


def _keys(s3_server, bucket: str, prefix: str = "") -> list[str]:
    pages = s3_server["client"].get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def _write_checkpoint(directory: Path, epoch: int) -> Path:
    directory.mkdir(parents=True)
    (directory / "state.json").write_text(json.dumps({"epoch": epoch}))
    (directory / "model.safetensors").write_bytes(b"weights %d" % epoch)
    return directory


# --- the storage module ------------------------------------------------------------------------


def test_resolve_local_and_s3_uris(s3_server, tmp_path):
    local = storage.resolve(str(tmp_path / "runs" / ".." / "runs"))
    assert local.is_local and isinstance(local.filesystem, pafs.LocalFileSystem)
    assert local.uri == local.path == str((tmp_path / "runs").resolve())

    remote = storage.resolve("s3://bucket/some/prefix/")
    fs, path = remote
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/some/prefix"
    assert remote.uri == "s3://bucket/some/prefix" and remote.bucket == "bucket"
    assert remote.endpoint == s3_server["endpoint_url"]
    assert remote.join("run-1", "checkpoint_0").uri == "s3://bucket/some/prefix/run-1/checkpoint_0"
    assert remote.join("run-1").parent.uri == remote.uri and remote.join("run-1").name == "run-1"
    # What pathlib.Path makes of an s3:// URI still means S3.
    assert storage.resolve(str(Path("s3://bucket/x"))).uri == "s3://bucket/x"
    with pytest.raises(StorageError, match="unsupported storage scheme gs://"):
        storage.resolve("gs://bucket/x")
    with pytest.raises(StorageError, match="no bucket"):
        storage.resolve("s3://")


def test_write_read_list_copy_through_moto(s3_server, tmp_path):
    from vae_service.training.runner import latest_checkpoint

    bucket = s3_server["make_bucket"]()
    run_dir = storage.resolve(f"s3://{bucket}/runs/run-1")
    storage.check_reachable(run_dir)
    storage.make_dirs(run_dir)
    storage.write_text(run_dir.join("spec.yaml"), "name: tiny\n")
    assert storage.read_text(run_dir.join("spec.yaml")) == "name: tiny\n"
    assert storage.is_dir(run_dir) and storage.exists(run_dir.join("spec.yaml"))
    assert not storage.exists(run_dir.join("metrics.json"))

    # Names sort one way, epochs the other: the latest is found by reading state.json.
    storage.upload_dir(_write_checkpoint(tmp_path / "a", epoch=3), run_dir.join("checkpoint_000000"))
    storage.upload_dir(_write_checkpoint(tmp_path / "b", epoch=1), run_dir.join("checkpoint_000001"))
    storage.make_dirs(run_dir.join("not_a_checkpoint"))
    assert [c.name for c in storage.list_checkpoints(run_dir)] == ["checkpoint_000000", "checkpoint_000001"]
    assert latest_checkpoint(run_dir).uri == f"s3://{bucket}/runs/run-1/checkpoint_000000"
    assert storage.list_checkpoints(run_dir.join("missing")) == []

    # They are plain objects in the bucket, as any S3 client sees them.
    keys = _keys(s3_server, bucket)
    assert "runs/run-1/spec.yaml" in keys
    assert {"runs/run-1/checkpoint_000000/state.json", "runs/run-1/checkpoint_000000/model.safetensors"} <= set(keys)

    with storage.local_copy(run_dir.join("checkpoint_000001")) as local:
        assert json.loads((local / "state.json").read_text()) == {"epoch": 1}
        assert (local / "model.safetensors").read_bytes() == b"weights 1"
    assert not local.exists()  # the temporary download is gone

    with storage.writing_dir(run_dir.join("model")) as staging:
        (staging / "config.json").write_text("{}")
    assert "runs/run-1/model/config.json" in _keys(s3_server, bucket)

    checkpoint = checkpoint_from_uri(f"s3://{bucket}/runs/run-1/checkpoint_000000")
    assert isinstance(checkpoint.filesystem, pafs.S3FileSystem)
    with checkpoint.as_directory() as directory:
        assert json.loads((Path(directory) / "state.json").read_text()) == {"epoch": 3}
    assert checkpoint_from_uri(f"s3://{bucket}/runs/run-1/checkpoint_999999") is None


def test_missing_bucket_is_a_clear_error(s3_server):
    with pytest.raises(StorageError, match=r"^s3://vae-no-such-bucket: no such bucket at http://127\.0\.0\.1:\d+"):
        storage.check_reachable(storage.resolve("s3://vae-no-such-bucket/runs"))


# --- where the endpoint and the region come from (README: Storage) --------------------------------

MOTO, CLOSED = "moto", "closed"


@pytest.mark.parametrize("settings", [
    {"VAE_S3_ENDPOINT_URL": MOTO},
    {"VAE_S3_ENDPOINT_URL": MOTO, "AWS_ENDPOINT_URL_S3": CLOSED, "AWS_ENDPOINT_URL": CLOSED},
    {"AWS_ENDPOINT_URL_S3": MOTO, "AWS_ENDPOINT_URL": CLOSED},
    {"AWS_ENDPOINT_URL": MOTO},
], ids=["vae-only", "vae-wins", "aws-s3-wins", "aws-generic"])
def test_the_endpoint_is_the_first_of_the_three_variables_set(s3_server, monkeypatch, settings):
    """VAE_S3_ENDPOINT_URL, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL: files written and
    read through the chosen one reach moto; choosing a later variable would hit a closed port."""
    closed = f"http://127.0.0.1:{_closed_port()}"
    for name in storage.ENDPOINT_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, which in settings.items():
        monkeypatch.setenv(name, s3_server["endpoint_url"] if which == MOTO else closed)
    bucket = s3_server["make_bucket"]()
    location = storage.resolve(f"s3://{bucket}/runs/probe.txt")
    assert location.endpoint == s3_server["endpoint_url"]
    storage.write_text(location, "through the chosen endpoint")
    assert storage.read_text(location) == "through the chosen endpoint"
    assert _keys(s3_server, bucket) == ["runs/probe.txt"]  # in moto, as any S3 client sees it


def test_no_endpoint_variable_means_aws(s3_server, monkeypatch):
    """None of the three set: AWS itself (no endpoint override), said so in messages."""
    for name in storage.ENDPOINT_VARS:
        monkeypatch.delenv(name, raising=False)
    assert storage.s3_endpoint() is None
    assert storage.resolve("s3://bucket/runs").endpoint == "AWS S3"


@pytest.mark.parametrize("settings, expected", [
    ({"AWS_REGION": "eu-west-2", "AWS_DEFAULT_REGION": "ap-south-1"}, "eu-west-2"),
    ({"AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),
    ({}, storage.DEFAULT_REGION),
], ids=["aws-region", "aws-default-region", "default"])
def test_the_region_is_aws_region_then_aws_default_region_then_us_east_1(s3_server, monkeypatch, settings, expected):
    """The S3 filesystem every read and write goes through is configured with that region, and
    still reaches the store with it."""
    for name in storage.REGION_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    assert storage.DEFAULT_REGION == "us-east-1"  # README's default
    bucket = s3_server["make_bucket"]()
    location = storage.resolve(f"s3://{bucket}/probe.txt")
    assert location.filesystem.region == expected
    storage.write_text(location, expected)
    assert storage.read_text(location) == expected


# --- training on S3 ----------------------------------------------------------------------------


@pytest.mark.slow
def test_training_run_lands_in_the_bucket_and_resumes_from_it(ray_cluster, s3_server, tiny_spec, tmp_path, run_job):
    from vae_service.core.checkpoint import load_model, read_state
    from vae_service.environment import forwarded_env

    bucket = s3_server["make_bucket"]()
    first = run_job(tiny_spec(storage__uri=f"s3://{bucket}/runs"))
    assert first.run_dir.startswith(f"s3://{bucket}/runs/tiny-")
    assert first.model_dir == first.run_dir + "/model"
    assert first.checkpoint.startswith(first.run_dir + "/checkpoint_")
    assert first.epochs_completed == 1
    assert not (tmp_path / "runs").exists()  # nothing of the run is written locally

    run_key = first.run_dir.removeprefix(f"s3://{bucket}/")
    keys = _keys(s3_server, bucket, run_key + "/")
    names = {key.removeprefix(run_key + "/") for key in keys}
    assert {"spec.yaml", "metrics.json", "model/model.safetensors", "model/config.json"} <= names
    checkpoint_key = first.checkpoint.removeprefix(f"s3://{bucket}/")
    for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
        assert f"{checkpoint_key}/{name}" in keys
    # Pickle-free by content: no object in the bucket is a pickle or a zip holding one.
    objects = {key: s3_server["client"].get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}
    assert [found for key, data in objects.items() for found in pickles_in_bytes(key, data)] == []
    metrics = json.loads(s3_server["client"].get_object(Bucket=bucket, Key=f"{run_key}/metrics.json")["Body"].read())
    assert metrics["run_dir"] == first.run_dir and metrics["epochs_completed"] == 1
    with storage.local_copy(storage.resolve(first.model_dir)) as model_dir:
        assert load_model(model_dir).config.latent_dim == 4

    # What a worker does with the `resume_from` URI, in a Ray process with the workers' env.
    import ray

    @ray.remote(num_cpus=0)
    def epoch_of(uri: str) -> int:
        checkpoint = checkpoint_from_uri(uri)
        with checkpoint.as_directory() as directory:
            return read_state(directory)["epoch"]

    assert ray.get(epoch_of.options(runtime_env={"env_vars": forwarded_env()}).remote(first.checkpoint)) == 0

    resumed = run_job(tiny_spec(storage__uri=f"s3://{bucket}/runs", optim__epochs=2), resume=first.run_dir)
    assert resumed.run_dir == first.run_dir
    assert [row["epoch"] for row in resumed.history] == [1]
    assert resumed.epochs_completed == 2
    metrics = json.loads(s3_server["client"].get_object(Bucket=bucket, Key=f"{run_key}/metrics.json")["Body"].read())
    assert metrics["epochs_completed"] == 2


# --- S3 out of reach ---------------------------------------------------------------------------


def test_unreachable_endpoint_fails_fast_with_a_clear_error(s3_server, tiny_spec, tmp_path, monkeypatch):
    from vae_service.jobs.execute import execute
    from vae_service.jobs.reporter import Reporter

    monkeypatch.setenv("VAE_S3_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    spec = tiny_spec(storage__uri="s3://vae-nowhere/runs")
    started = time.monotonic()
    outcome = execute(spec, reporter=Reporter.quiet())
    took = time.monotonic() - started
    assert (outcome.exit_code, outcome.error.kind, outcome.run_dir) == (1, "job_failed", None)
    message = outcome.error.message
    assert message.startswith("s3://vae-nowhere: unreachable at http://127.0.0.1:"), message
    assert "after 4 attempts: " in message and "\n" not in message
    assert "testing" not in message  # no credentials in what the user sees
    assert 2 < took < 30, took  # retried with backoff, but bounded
    assert not (tmp_path / "runs").exists()
    assert not list(tmp_path.rglob("spec.yaml"))
    assert not Path("s3:").exists() and not Path("vae-nowhere").exists()


@pytest.mark.slow  # a real `vae run` that retries the storage with backoff
def test_cli_prints_the_storage_error_as_one_line_and_exits_1(s3_server, tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text("kind: train\nname: cli-s3\ndata: {limit: 2000}\nstorage: {uri: 's3://vae-nowhere/runs'}\n")
    env = dict(os.environ, VAE_S3_ENDPOINT_URL=f"http://127.0.0.1:{_closed_port()}")
    proc = subprocess.run([sys.executable, "-m", "vae_service.cli", "run", str(spec), "--quiet"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "unreachable" in line]
    assert len(error_lines) == 1 and error_lines[0].startswith("error: s3://vae-nowhere: unreachable at http://127.0.0.1:")
    assert "after 4 attempts" in error_lines[0]
    assert not (tmp_path / "runs").exists()
