"""`vae run` as a user runs it: a subprocess, Ctrl-C, --resume and --json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vae_service.tracking.mlflow_run import client

pytestmark = pytest.mark.slow
VAE = [sys.executable, "-m", "vae_service.cli"]


def _write_spec(tmp_path: Path, epochs: int) -> Path:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        f"""
kind: train
name: cli-tiny
data: {{limit: 2000}}
model: {{hidden: [64], latent_dim: 4}}
optim: {{epochs: {epochs}, batch_size: 100, seed: 0}}
resources: {{num_workers: 1, cpus_per_worker: 1}}
storage: {{uri: {tmp_path / 'runs'}}}
tracking: {{figures: false}}
"""
    )
    return spec


def _checkpoint_epochs(runs: Path) -> list[int]:
    epochs = []
    for state in runs.glob("*/checkpoint_*/state.json"):
        try:
            epochs.append(json.loads(state.read_text())["epoch"])
        except (ValueError, KeyError):
            pass  # being written
    return sorted(epochs)


def test_ctrl_c_keeps_a_checkpoint_and_resume_finishes_with_json(tmp_path, ray_address):
    spec = _write_spec(tmp_path, epochs=200)
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_ADDRESS=ray_address)  # the session's cluster
    proc = subprocess.Popen(VAE + ["run", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not _checkpoint_epochs(tmp_path / "runs") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert _checkpoint_epochs(tmp_path / "runs"), "no checkpoint appeared"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "--resume" in err
    run_dir = next((tmp_path / "runs").iterdir())
    assert str(run_dir) in err.replace("\n", "")

    # The MLflow run is KILLED (stopped by the user), not FAILED; --resume reopens it.
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert client().get_run(run_id).info.status == "KILLED"

    reached = max(_checkpoint_epochs(tmp_path / "runs"))
    target = reached + 3  # two more epochs
    done = subprocess.run(
        VAE + ["run", str(spec), "--resume", str(run_dir), "--json", "--quiet", "--set", f"optim.epochs={target}"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr
    # Notes meant for library developers stay out of a user's terminal: MLflow's hints when the
    # model is logged (type hints, input example), its INFO lines, Ray's note on token auth.
    for noise in ("Warning", "INFO mlflow", "Token authentication", "\x1b[33m"):
        assert noise not in done.stderr, done.stderr
    result = json.loads(done.stdout)
    assert result["run_dir"] == str(run_dir)
    assert result["epochs_completed"] == target
    assert [row["epoch"] for row in result["history"]] == [reached + 1, reached + 2]
    for key in ("val_neg_elbo", "val_recon", "val_kl", "active_units", "images_per_s"):
        assert isinstance(result["metrics"][key], (int, float)), key
    assert result["metrics"]["val_neg_elbo"] == pytest.approx(result["metrics"]["val_recon"] + result["metrics"]["val_kl"])
    assert Path(result["model_dir"], "model.safetensors").is_file()
    assert result["mlflow_run_id"] == run_id and client().get_run(run_id).info.status == "FINISHED"


def test_an_encode_dataset_spec_runs_as_a_job_with_its_outcome_beside_its_output(tmp_path):
    """`vae run` takes every kind of job: an encode-dataset spec whose source is missing is bad
    input in one line (exit 2, no Ray started), its outcome in the run directory beside the output."""
    spec = tmp_path / "encode.yaml"
    spec.write_text(f"kind: encode-dataset\nmodel: {tmp_path / 'model'}\ndata: {{source: {tmp_path / 'nowhere'}, format: numpy}}\n"
                    f"output: {tmp_path / 'codes'}\n")
    done = subprocess.run(VAE + ["run", str(spec)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "data.source:" in done.stderr.strip().splitlines()[-1]
    outcome, = (tmp_path / "codes" / "_runs").glob("encode-*/outcome.json")
    assert json.loads(outcome.read_text())["error"]["kind"] == "bad_input"


def test_missing_data_is_a_clear_error_before_ray_starts(tmp_path):
    spec = _write_spec(tmp_path, epochs=1)
    env = dict(os.environ, VAE_DATA_DIR=str(tmp_path / "nowhere"), VAE_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run(VAE + ["run", str(spec), "--set", "data.download=false"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "VAE_DATA_DIR" in done.stderr


def test_a_ray_address_where_nothing_answers_is_bad_input_in_seconds_not_a_hang(tmp_path):
    """ray.init retries an unreachable RAY_ADDRESS for minutes; `vae run` says what is wrong at once."""
    from queue_support import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    spec = _write_spec(tmp_path, epochs=1)
    started = time.monotonic()
    done = subprocess.run(VAE + ["run", str(spec)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, RAY_ADDRESS=address))
    assert done.returncode == 2, done.stderr
    assert f"RAY_ADDRESS {address}: no Ray cluster answers there" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60
    (outcome,) = (tmp_path / "runs").glob("*/outcome.json")
    assert json.loads(outcome.read_text())["error"]["kind"] == "bad_input"


@pytest.mark.slow  # Ray tries for 20 s before it gives up on a refused token
def test_a_ray_address_whose_cluster_refuses_the_token_is_bad_input_naming_the_setting(ray_address, tmp_path):
    """The session's cluster uses token authentication: a `vae run` joining it without the token
    (RAY_AUTH_MODE disabled) is told which settings to give, with no traceback, and Ray's 20 s
    of retries are paid once (the job's start and its run both join)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(RAY_ADDRESS=ray_address, RAY_AUTH_MODE="disabled")
    spec = _write_spec(tmp_path, epochs=1)
    started = time.monotonic()
    done = subprocess.run(VAE + ["run", str(spec)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert f"RAY_ADDRESS {ray_address}: the Ray cluster there uses token authentication and refused" in done.stderr
    assert "RAY_AUTH_TOKEN_PATH" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert time.monotonic() - started < 40
    (outcome,) = (tmp_path / "runs").glob("*/outcome.json")
    assert json.loads(outcome.read_text())["error"]["kind"] == "bad_input"
