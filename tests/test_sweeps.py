"""Sweeps end to end on the shared Ray cluster: Ray Tune + Optuna driving Ray Train trials,
nested MLflow runs, the Pareto front, errored trials, the best model in the registry."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vae_service.cli import app
from vae_service.tracking.mlflow_run import client

pytestmark = pytest.mark.slow


def write_sweep(tmp_path, name: str, space: dict, objectives: list, samples=None, **train) -> str:
    base = {
        "data": {"limit": 600},
        "model": {"hidden": [32]},
        "optim": {"epochs": 1, "batch_size": 100, "seed": 0},
        "storage": {"uri": str(tmp_path / "runs")},
        # No figures on the trials (each would spend about 3 s on them): the two-objective sweep
        # below draws them and checks them; the figures themselves are the train path's.
        "tracking": {"experiment": name, "register_as": name, "figures": False},
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


def set_sweep(path: str, **fields) -> None:
    """Overrides fields of a written sweep spec's `sweep:` section."""
    spec = yaml.safe_load(Path(path).read_text())
    spec["sweep"].update(fields)
    Path(path).write_text(yaml.safe_dump(spec))


def knee_of(trials: list[dict]) -> set[str]:
    """Worked out here, not with core.pareto: the finished trials' (distortion, rate) front, each
    objective scaled to [0, 1] over the front; the ids nearest the ideal point (several on a tie)."""
    points = {t["trial_id"]: (t["distortion"], t["rate"]) for t in trials if t["state"] == "finished"}
    front = {i: p for i, p in points.items()
             if not any(q != p and q[0] <= p[0] and q[1] <= p[1] for q in points.values())}
    lo = [min(p[d] for p in front.values()) for d in (0, 1)]
    hi = [max(p[d] for p in front.values()) for d in (0, 1)]
    distance = {i: math.hypot(*((p[d] - lo[d]) / ((hi[d] - lo[d]) or 1.0) for d in (0, 1))) for i, p in front.items()}
    nearest = min(distance.values())
    return {i for i, d in distance.items() if d <= nearest + 1e-12}


def interrupt_sweep(path: str, cwd: Path, ready, ray_address: str, sig: int = signal.SIGINT) -> tuple[Path, str]:
    """Starts a real `vae run` of the sweep on the session's cluster, sends it Ctrl-C (SIGINT; or
    SIGTERM, how the queue stops a job it preempts) once `ready(trials_dir)` holds, and returns
    (the sweep directory, its stderr); the run must end with exit code 130."""
    vae = str(Path(sys.executable).with_name("vae"))
    first = subprocess.Popen([vae, "run", path, "--quiet"], stderr=subprocess.PIPE, text=True, cwd=cwd,
                             env=dict(os.environ, RAY_ADDRESS=ray_address))
    trials_dir = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        found = list((cwd / "runs").glob("*/trials"))
        if found and ready(found[0]):
            trials_dir = found[0]
            break
        time.sleep(0.2)
    if trials_dir is None:
        first.kill()
        pytest.fail(f"the sweep never got to the point of interruption: {first.communicate()[1][-2000:]}")
    first.send_signal(sig)
    _, stderr = first.communicate(timeout=180)
    assert first.returncode == 130, stderr
    return trials_dir.parent, stderr


def test_two_objective_sweep_nests_trials_and_registers_the_knee(ray_cluster, tmp_path):
    space = {"objective.beta": {"loguniform": [0.1, 10.0]}, "model.latent_dim": {"choice": [2, 4, 8]}}
    out = run_json(write_sweep(tmp_path, "rd-sweep", space, ["distortion", "rate"], samples=4, tracking={"figures": True}))

    trials = out["trials"]
    assert len(trials) == 4 and {t["state"] for t in trials} == {"finished"}
    assert all(t["rate"] > 0 and t["distortion"] > 0 for t in trials)
    # The front: non-empty, made of trials, and no trial on it is dominated by any other.
    front = out["front"]
    assert front and {t["trial_id"] for t in front} <= {t["trial_id"] for t in trials}
    for member in front:
        assert not any(o["rate"] <= member["rate"] and o["distortion"] <= member["distortion"]
                       and (o["rate"], o["distortion"]) != (member["rate"], member["distortion"]) for o in trials)
    # The best is the knee, worked out here from the trials' objective values.
    knee = knee_of(trials)
    assert {t["trial_id"] for t in front} >= knee and out["best"] in knee

    # One nested MLflow run per trial, each with its own trial's parameters (no collisions) and figures.
    mlflow = client()
    children = children_of(out["mlflow_run_id"])
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    by_trial = {c.data.tags["vae.trial_id"]: c for c in children}
    for trial in trials:
        child = by_trial[trial["trial_id"]]
        assert child.info.run_id == trial["mlflow_run_id"]
        assert float(child.data.params["objective.beta"]) == pytest.approx(trial["params"]["objective.beta"])
        assert int(child.data.params["model.latent_dim"]) == trial["params"]["model.latent_dim"]
        assert "figures/latent_scatter.png" in {a.path for a in mlflow.list_artifacts(child.info.run_id, "figures")}

    # The parent: finished, with the results table and both figures.
    parent = mlflow.get_run(out["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["vae.kind"] == "sweep"
    artifacts = {a.path for a in mlflow.list_artifacts(parent.info.run_id)}
    assert "trials.csv" in artifacts
    assert {a.path for a in mlflow.list_artifacts(parent.info.run_id, "figures")} == {"figures/pareto_front.png", "figures/active_units.png"}
    table = mlflow.download_artifacts(parent.info.run_id, "trials.csv", str(tmp_path))
    assert len(open(table).read().strip().splitlines()) == 1 + 4

    # The knee trial's model is registered @candidate: the version's run is the knee's run.
    assert out["model_uri"] == "models:/rd-sweep/1"
    version = mlflow.get_model_version_by_alias("rd-sweep", "candidate")
    assert version.run_id == by_trial[out["best"]].info.run_id
    assert version.run_id in {by_trial[i].info.run_id for i in knee}
    assert parent.data.tags["vae.best_run_id"] == version.run_id


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


def test_an_interrupted_sweep_resumes_with_only_the_remaining_trials(ray_cluster, ray_address, tmp_path):
    """Ctrl-C (SIGINT) to a real `vae run` mid-sweep, then `--resume`: trials that ended are
    kept, a trial cut short continues in its own directory and MLflow run, the rest run."""
    space = {"objective.beta": {"grid": [0.5, 4.0]}}
    path = write_sweep(tmp_path, "resume-sweep", space, ["val_neg_elbo"], optim={"epochs": 8})
    set_sweep(path, max_concurrent=1)  # one trial at a time: the interruption finds one running
    sweep_dir, stderr = interrupt_sweep(path, tmp_path, lambda trials: any(trials.glob("*/checkpoint_*")), ray_address)
    trials_dir = sweep_dir / "trials"
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


def live_placement_groups(ray) -> set[str]:
    """Ids of the placement groups that still hold (or wait for) cluster resources."""
    return {pg_id for pg_id, pg in ray.util.placement_group_table().items() if pg["state"] in ("CREATED", "PENDING")}


def test_asha_stops_poor_trials_kills_their_runs_and_gives_back_their_resources(ray_cluster, tmp_path):
    """ASHA end to end: trials worse at the rung are stopped, their MLflow runs KILLED with
    `vae.stopped`, never registered, and no placement group of the sweep is left reserved."""
    # One rung, after epoch 1 (reduction factor 4: max_t = 3 holds a single rung). lr 3e-3
    # learns in one epoch, 1e-7 barely moves: whichever of the two reaches the rung second is
    # judged against the first, and the third against both, so at least one is stopped.
    space = {"optim.lr": {"grid": [3.0e-3, 1.0e-7, 1.0e-8]}}
    path = write_sweep(tmp_path, "asha-sweep", space, ["val_neg_elbo"], optim={"epochs": 2})
    set_sweep(path, max_concurrent=2, scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 4})
    before = live_placement_groups(ray_cluster)
    out = run_json(path)

    trials = {t["trial_id"]: t for t in out["trials"]}
    stopped = {i for i, t in trials.items() if t["state"] == "stopped"}
    assert len(trials) == 3 and stopped and all(trials[i]["epochs"] == 1 for i in stopped)
    assert {t["state"] for i, t in trials.items() if i not in stopped} == {"finished"}
    assert trials[out["best"]]["params"]["optim.lr"] == 3.0e-3

    runs = {c.data.tags["vae.trial_id"]: c for c in children_of(out["mlflow_run_id"])}
    assert set(runs) == set(trials)
    for trial_id, run in runs.items():
        if trial_id in stopped:
            assert run.info.status == "KILLED"
            assert run.data.tags["vae.stopped"] == "stopped early by ASHA after 1 epoch(s)"
        else:
            assert run.info.status == "FINISHED" and "vae.stopped" not in run.data.tags

    # The registered model is a trial that ran every epoch, never a stopped one.
    version = client().get_model_version_by_alias("asha-sweep", "candidate")
    assert version.run_id == runs[out["best"]].info.run_id
    assert version.run_id not in {runs[i].info.run_id for i in stopped}

    # Every placement group the sweep's trials reserved is given back (Ray removes them shortly),
    # and no stopped trial's training task outlives it (its actor goes on to the next trial).
    deadline = time.monotonic() + 30
    while (left := live_placement_groups(ray_cluster) - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"placement groups still reserved after the sweep: {left}"
    while ray_cluster.available_resources().get("CPU", 0) < ray_cluster.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_cluster.available_resources().get("CPU", 0) == ray_cluster.cluster_resources()["CPU"]


def test_a_one_worker_sweeps_trials_share_one_actor_and_get_the_results_they_would_get_apart(ray_cluster, tmp_path, run_job):
    """One-worker trials reuse their Tune actor (sweeps/runner.reuse_trial_actors), so a trial
    after the first starts without a new process and its imports; nothing of one trial reaches
    the next: a trial that ran in a reused actor gets exactly what its spec gets as a job of its own."""
    from vae_service.core.spec_loading import load_spec

    path = write_sweep(tmp_path, "reuse-sweep", {"objective.beta": {"grid": [4.0, 1.0, 2.0]}}, ["val_neg_elbo"])
    set_sweep(path, max_concurrent=1)
    out = run_json(path)
    records = [json.loads(d.joinpath("trial.json").read_text()) for d in sorted(Path(out["sweep_dir"], "trials").iterdir())]
    assert len(records) == 3 and len({r["process"] for r in records}) == 1, records  # one actor ran all three

    last = records[-1]  # the third trial: two trials ran in its actor before it
    apart = run_job(load_spec(path).trial_spec(last["config"], trial_name="apart"))
    (in_sweep,) = [t for t in out["trials"] if t["trial_id"] == last["trial_id"]]
    assert in_sweep["metrics"]["val_neg_elbo"] == apart.metrics["val_neg_elbo"]


def test_an_interrupted_optuna_sweep_resumes_with_only_the_remaining_trials(ray_cluster, ray_address, tmp_path):
    """An Optuna (TPE) sweep stopped by SIGTERM (as the queue preempts it) while its second trial
    runs: `--resume` (what a preempted queued job does when admitted again) keeps the finished
    trial, continues the cut one and samples only what is left (num_samples in all)."""
    space = {"objective.beta": {"loguniform": [0.5, 4.0]}}
    path = write_sweep(tmp_path, "optuna-resume", space, ["val_neg_elbo"], samples=3, optim={"epochs": 5})
    set_sweep(path, max_concurrent=1, sampler="tpe")

    def second_trial_running(trials: Path) -> bool:  # one trial ended, the next has a checkpoint
        return any(trials.glob("*/outcome.json")) and any(
            not (d / "outcome.json").exists() for d in trials.glob("*") if any(d.glob("checkpoint_*")))

    sweep_dir, _ = interrupt_sweep(path, tmp_path, second_trial_running, ray_address, signal.SIGTERM)
    earlier = {d.name: d for d in (sweep_dir / "trials").iterdir() if (d / "mlflow_run_id").exists()}
    ended = {i for i, d in earlier.items() if (d / "outcome.json").exists()}
    assert len(earlier) == 2 and len(ended) == 1  # one finished, one cut short
    run_ids = {i: (d / "mlflow_run_id").read_text().strip() for i, d in earlier.items()}
    (done,) = ended
    done_end_time = client().get_run(run_ids[done]).info.end_time

    result = CliRunner().invoke(app, ["run", path, "--json", "--quiet", "--resume", str(sweep_dir)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])

    trials = {t["trial_id"]: t for t in out["trials"]}
    assert len(trials) == 3 and {t["state"] for t in trials.values()} == {"finished"}
    assert len(list((sweep_dir / "trials").iterdir())) == 3  # only one new trial was started
    for trial_id, run_id in run_ids.items():  # both earlier trials kept their runs
        assert trials[trial_id]["mlflow_run_id"] == run_id
    assert client().get_run(run_ids[done]).info.end_time == done_end_time  # the finished one did not run again
    # The new attempt's sampler is seeded apart from the first: it proposes a new β.
    assert len({t["params"]["objective.beta"] for t in trials.values()}) == 3
    children = children_of(out["mlflow_run_id"])
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}


def test_trial_actors_are_reused_only_for_one_worker_trials_that_asha_does_not_stop():
    from vae_service.core.spec_loading import validate_data
    from vae_service.sweeps.runner import reuse_trial_actors

    def spec(workers: int, scheduler: str) -> bool:
        return reuse_trial_actors(validate_data({
            "kind": "sweep", "train": {"resources": {"num_workers": workers}},
            "sweep": {"space": {"objective.beta": {"grid": [1.0, 2.0]}}, "objectives": ["val_neg_elbo"],
                      "scheduler": {"kind": scheduler}}}))

    assert spec(1, "none") and not spec(1, "asha") and not spec(2, "none")


def test_max_concurrent_is_lowered_to_the_trials_the_cluster_holds(ray_cluster):
    """concurrent_trials on the session cluster (one node, 4 CPUs): trials never oversubscribe
    it, and a trial no node can hold is refused with what it asks and what there is."""
    from vae_service.core.errors import JobFailed
    from vae_service.core.spec_loading import validate_data
    from vae_service.sweeps.runner import concurrent_trials

    def spec(max_concurrent: int, **resources):
        return validate_data({"kind": "sweep", "name": "fit", "train": {"resources": resources},
                              "sweep": {"space": {"objective.beta": {"grid": [1.0]}}, "max_concurrent": max_concurrent}})

    assert concurrent_trials(spec(8, num_workers=1, cpus_per_worker=2)) == 2
    assert concurrent_trials(spec(8, num_workers=2, cpus_per_worker=1)) == 2
    assert concurrent_trials(spec(8, num_workers=1, cpus_per_worker=1)) == 4
    assert concurrent_trials(spec(3, num_workers=1, cpus_per_worker=1)) == 3  # max_concurrent when it fits
    assert concurrent_trials(spec(8, num_workers=1, cpus_per_worker=1.5)) == 2  # whole workers only
    with pytest.raises(JobFailed) as too_big:
        concurrent_trials(spec(8, num_workers=1, cpus_per_worker=8))
    message = str(too_big.value)
    assert message.startswith("resources:") and "8 CPUs" in message and "4 CPUs" in message
    assert "resources.cpus_per_worker" in message
    with pytest.raises(JobFailed, match="no GPU"):
        concurrent_trials(spec(8, num_workers=1, use_gpu=True))


def test_a_dsprites_sweep_optimises_mig_measured_at_each_trials_end(ray_cluster, tmp_path):
    """An end-of-trial objective: every trial computes MIG after its last epoch (its spec gets
    the evaluation section), Optuna and the front see it, and the knee's version carries it."""
    conv = {"arch": "conv", "channels": [8, 8, 8, 8], "kernel_size": 4, "latent_dim": 3}
    path = write_sweep(tmp_path, "mig-sweep", {"objective.beta": {"grid": [1, 8]}}, ["val_neg_elbo", "mig"],
                       data={"dataset": "dsprites", "limit": 300}, model=conv, optim={"batch_size": 50},
                       evaluation={"points": 300})
    out = run_json(path)

    trials = out["trials"]
    assert len(trials) == 2 and {t["state"] for t in trials} == {"finished"}
    for trial in trials:
        mig = trial["metrics"]["eval_mig"]
        assert 0.0 <= mig <= 1.0  # measured, not the NaN placeholder of earlier epochs
        run = client().get_run(trial["mlflow_run_id"])
        assert run.data.metrics["eval_mig"] == pytest.approx(mig)
        assert "mig" in json.loads(run.data.params["evaluation.metrics"])  # added by the sweep
    assert out["front"] and out["best"] in {t["trial_id"] for t in trials}
    version = client().get_model_version_by_alias("mig-sweep", "candidate")
    assert "MIG" in version.description and "eval_mig" in version.tags
