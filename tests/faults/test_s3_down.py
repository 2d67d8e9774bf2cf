"""S3 stops while a run is checkpointing into it: the run fails within bounded time with a clear
error naming the storage (after the S3 client's own bounded retries), registers no model
version, and marks its MLflow run FAILED; with S3 back, the same spec run again succeeds.

Its own moto_server process (the session's shared one must stay up for other tests), killed
with SIGKILL as a crashed or unplugged S3 would be, then started again on the same port.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from queue_support import free_port, moto_server_executable

from vae_service.environment import applied
from vae_service.jobs.execute import execute
from vae_service.jobs.reporter import Reporter
from vae_service.tracking.mlflow_run import client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
BUCKET, MODEL = "fault-runs", "s3-fault-vae"


def start_moto(port: int, log_path: Path) -> subprocess.Popen:
    executable = moto_server_executable()
    process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log_path, "ab"),
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/data.json", timeout=2).close()
            return process
        except urllib.error.HTTPError:
            return process
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.2)


def checkpoints_in(s3, bucket: str) -> list[str]:
    try:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix="runs/")
    except Exception:
        return []
    return [o["Key"] for o in listing.get("Contents", []) if "/checkpoint_" in o["Key"]]


def test_s3_stopped_mid_run_fails_cleanly_registers_nothing_and_a_rerun_succeeds(ray_cluster, tiny_spec, tmp_path):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    settings = {"VAE_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1", "AWS_SESSION_TOKEN": None}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    moto = start_moto(port, tmp_path / "moto.log")
    try:
        with applied(settings):
            s3.create_bucket(Bucket=BUCKET)
            spec = tiny_spec(optim__epochs=40, storage__uri=f"s3://{BUCKET}/runs", tracking__register_as=MODEL,
                             tracking__experiment="s3-fault")
            done: dict = {}
            thread = threading.Thread(target=lambda: done.update(outcome=execute(spec, reporter=Reporter.quiet())))
            thread.start()
            deadline = time.monotonic() + 240
            while not checkpoints_in(s3, BUCKET) and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert checkpoints_in(s3, BUCKET), "no checkpoint reached S3 before the deadline"
            moto.kill()
            moto.wait()
            killed_at = time.monotonic()
            thread.join(timeout=300)
            failed_after = time.monotonic() - killed_at
            assert not thread.is_alive(), "the run did not give up on a dead S3"

            outcome = done["outcome"]
            print(f"\nS3 killed: the run failed {failed_after:.1f} s later: {outcome.error}")
            assert (outcome.state, outcome.exit_code) == ("failed", 1)
            message = outcome.error.message
            assert message.startswith(f"storage s3://{BUCKET}/runs/") and f"at http://127.0.0.1:{port} failed while checkpointing" in message
            assert "curlCode: 7" in message and "\n" not in message and "Traceback" not in message
            assert failed_after < 120, "the run kept waiting for S3 far beyond its retries"
            mlflow = client()
            assert not mlflow.search_registered_models(f"name='{MODEL}'"), "a model was registered from a failed run"
            experiment = mlflow.get_experiment_by_name("s3-fault").experiment_id
            assert [r.info.status for r in mlflow.search_runs([experiment])] == ["FAILED"]

            moto = start_moto(port, tmp_path / "moto.log")  # S3 is back (empty: moto keeps nothing)
            s3.create_bucket(Bucket=BUCKET)
            again = execute(tiny_spec(optim__epochs=2, storage__uri=f"s3://{BUCKET}/runs", tracking__register_as=MODEL,
                                      tracking__experiment="s3-fault"), reporter=Reporter.quiet())
            assert again.error is None, str(again.error)
            assert [str(v.version) for v in mlflow.search_model_versions(f"name='{MODEL}'")] == ["1"]
    finally:
        moto.kill()
        moto.wait()
