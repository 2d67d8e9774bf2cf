"""Sweeps end to end on the shared Ray cluster: Ray Tune + Optuna driving Ray Train trials,
nested MLflow runs, the Pareto front, errored trials, the best model in the registry."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from vae_service.cli import app
from vae_service.tracking.mlflow_run import client


def write_sweep(tmp_path, name: str, space: dict, objectives: list, samples=None, **train) -> str:
    base = {
        "data": {"limit": 600},
        "model": {"hidden": [32]},
        "optim": {"epochs": 1, "batch_size": 100, "seed": 0},
        "storage": {"uri": str(tmp_path / "runs")},
        "tracking": {"experiment": name, "register_as": name},
    }
    for section, values in train.items():
        base.setdefault(section, {}).update(values)
    spec = {"kind": "sweep", "name": name, "train": base,
            "sweep": {"space": space, "objectives": objectives, "max_concurrent": 4, "seed": 1}}
    if samples:
        spec["sweep"]["num_samples"] = samples
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def run_json(path: str) -> dict:
    result = CliRunner().invoke(app, ["run", path, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def children_of(parent_run_id: str):
    mlflow = client()
    parent = mlflow.get_run(parent_run_id)
    return mlflow.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def test_two_objective_sweep_nests_trials_and_registers_the_knee(ray_cluster, tmp_path):
    space = {"objective.beta": {"loguniform": [0.1, 10.0]}, "model.latent_dim": {"choice": [2, 4, 8]}}
    out = run_json(write_sweep(tmp_path, "rd-sweep", space, ["distortion", "rate"], samples=4))

    trials = out["trials"]
    assert len(trials) == 4 and {t["state"] for t in trials} == {"finished"}
    assert all(t["rate"] > 0 and t["distortion"] > 0 for t in trials)
    # The front: non-empty, made of trials, and no trial on it is dominated by any other.
    front = out["front"]
    assert front and {t["trial_id"] for t in front} <= {t["trial_id"] for t in trials}
    for member in front:
        assert not any(o["rate"] <= member["rate"] and o["distortion"] <= member["distortion"]
                       and (o["rate"], o["distortion"]) != (member["rate"], member["distortion"]) for o in trials)
    assert out["best"] in {t["trial_id"] for t in front}

    # One nested MLflow run per trial, each with its own trial's parameters (no collisions).
    mlflow = client()
    children = children_of(out["mlflow_run_id"])
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    by_trial = {c.data.tags["vae.trial_id"]: c for c in children}
    for trial in trials:
        child = by_trial[trial["trial_id"]]
        assert child.info.run_id == trial["mlflow_run_id"]
        assert float(child.data.params["objective.beta"]) == pytest.approx(trial["params"]["objective.beta"])
        assert int(child.data.params["model.latent_dim"]) == trial["params"]["model.latent_dim"]

    # The parent: finished, with the results table and both figures.
    parent = mlflow.get_run(out["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["vae.kind"] == "sweep"
    artifacts = {a.path for a in mlflow.list_artifacts(parent.info.run_id)}
    assert "trials.csv" in artifacts
    assert {a.path for a in mlflow.list_artifacts(parent.info.run_id, "figures")} == {"figures/pareto_front.png", "figures/active_units.png"}
    table = mlflow.download_artifacts(parent.info.run_id, "trials.csv", str(tmp_path))
    assert len(open(table).read().strip().splitlines()) == 1 + 4

    # The best trial's model is registered @candidate.
    assert out["model_uri"] == "models:/rd-sweep/1"
    version = mlflow.get_model_version_by_alias("rd-sweep", "candidate")
    assert version.run_id == by_trial[out["best"]].info.run_id


def test_a_failing_trial_is_errored_and_the_sweep_finishes_the_rest(ray_cluster, tmp_path):
    # lr 1e30 with a Gaussian decoder makes the loss non-finite in the first epoch.
    space = {"optim.lr": {"grid": [1.0e-3, 1.0e30]}}
    out = run_json(write_sweep(tmp_path, "nan-sweep", space, ["val_neg_elbo"], model={"likelihood": "gaussian"}))

    states = {t["params"]["optim.lr"]: t for t in out["trials"]}
    assert states[1.0e30]["state"] == "errored"
    assert states[1.0e30]["error"].startswith("non-finite loss at epoch 0")
    assert states[1.0e-3]["state"] == "finished"
    assert out["best"] == states[1.0e-3]["trial_id"]
    statuses = {c.data.tags["vae.trial_id"]: c.info.status for c in children_of(out["mlflow_run_id"])}
    assert statuses == {states[1.0e30]["trial_id"]: "FAILED", states[1.0e-3]["trial_id"]: "FINISHED"}


def test_an_interrupted_sweep_resumes_with_only_the_remaining_trials(tmp_path):
    """Ctrl-C (SIGINT) to a real `vae run` mid-sweep, then `--resume`: trials that ended are
    kept, a trial cut short continues in its own directory and MLflow run, the rest run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    space = {"objective.beta": {"grid": [0.5, 4.0]}}
    path = write_sweep(tmp_path, "resume-sweep", space, ["val_neg_elbo"], optim={"epochs": 8})
    spec = yaml.safe_load(Path(path).read_text())
    spec["sweep"]["max_concurrent"] = 1  # one trial at a time: the interruption finds one running
    Path(path).write_text(yaml.safe_dump(spec))
    vae = str(Path(sys.executable).with_name("vae"))
    first = subprocess.Popen([vae, "run", path, "--quiet"], stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=os.environ.copy())
    trials_dir = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:  # wait for the first checkpoint
        found = list((tmp_path / "runs").glob("resume-sweep-*/trials/*/checkpoint_*"))
        if found:
            trials_dir = found[0].parents[1]
            break
        time.sleep(0.2)
    assert trials_dir is not None, "no trial wrote a checkpoint"
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=180)
    assert first.returncode == 130, stderr
    sweep_dir = trials_dir.parent
    assert f"--resume {sweep_dir}" in stderr
    started = {d.name: (d / "mlflow_run_id").read_text() for d in trials_dir.iterdir() if (d / "mlflow_run_id").exists()}
    assert len(started) == 1

    result = CliRunner().invoke(app, ["run", path, "--json", "--quiet", "--resume", str(sweep_dir)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(out["trials"]) == 2 and {t["state"] for t in out["trials"]} == {"finished"}
    assert sorted(t["params"]["objective.beta"] for t in out["trials"]) == [0.5, 4.0]  # none twice
    by_id = {t["trial_id"]: t for t in out["trials"]}
    for trial_id, run_id in started.items():  # the first attempt's trials kept their runs
        assert by_id[trial_id]["mlflow_run_id"] == run_id
    assert out["mlflow_run_id"] == (sweep_dir / "mlflow_run_id").read_text().strip()
    children = children_of(out["mlflow_run_id"])
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
