"""Runs a `kind: sweep` spec: Ray Tune drives Optuna (or a grid) and ASHA over trials that are
each a Ray Train run, then summarises the trials on a parent MLflow run.

Everything a sweep leaves is under `<train.storage.uri>/<sweep name>-<time>/`:
  trials/<id>/      each trial's run directory (checkpoints, model, metrics.json) with its
                    trial.json and outcome.json (see records.py: what `--resume` reads)
  tune/             Ray Tune's own records, one directory per attempt (never read back: they
                    are pickles, and a sweep directory may come from anywhere)
  spec.yaml         the normalised sweep spec; results.json: the outcome (as `--json` prints)

`--resume DIR` keeps the trials that ended, continues those an interruption cut short (from
their checkpoints), and runs only the trials not started yet; Optuna's study is seeded with
the finished trials' results, so it samples as if the sweep had not stopped.

The best model: with one objective, the finished trial with the best value; with several, the
knee of the Pareto front (the front point nearest the ideal point, objectives scaled to [0, 1]
over the front). Only trials that ran every epoch count: ASHA-stopped trials have no model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import ray
from ray import tune
from rich.console import Console

from vae_service import storage
from vae_service.core.pareto import knee_point, non_dominated
from vae_service.core.resources import train_resources
from vae_service.core.spec_loading import SpecError, dump_spec, load_spec_text
from vae_service.core.sweep_spec import OBJECTIVE_METRICS, OBJECTIVE_MODES, SweepSpec
from vae_service.environment import forwarded_env
from vae_service.sweeps import records, search
from vae_service.sweeps.cleanup import PlacementGroupLedger, ReleaseEndedTrials
from vae_service.sweeps.progress import SweepProgress
from vae_service.sweeps.trial import run_trial
from vae_service.tracking import sweep_run
from vae_service.tracking.mlflow_run import finish_run
from vae_service.tracking.tracked_run import RUN_ID_FILE, TrackedRun, TrackingUnavailable
from vae_service.training.runner import (
    TrainingError,
    TrainingInterrupted,
    ensure_ray,
    new_run_name,
    with_absolute_data_root,
)

TUNE_DIR = "tune"
SPEC_FILE = "spec.yaml"
RESULTS_FILE = "results.json"
TRIAL_DRIVER_MEMORY = 1 << 20


@dataclass
class TrialOutcome:
    trial_id: str
    state: str  # finished | stopped (by ASHA) | errored | unfinished (interrupted)
    params: dict
    metrics: dict
    epochs: int
    mlflow_run_id: Optional[str] = None
    error: Optional[str] = None

    @property
    def rate_distortion(self) -> dict:
        return {"rate": self.metrics.get("val_kl"), "distortion": self.metrics.get("val_recon")}


@dataclass
class SweepResult:
    sweep_dir: str
    mlflow_run_id: str
    trials: list[TrialOutcome]
    front: list[str] = field(default_factory=list)  # trial ids, non-dominated
    best: Optional[str] = None
    model_uri: Optional[str] = None
    wall_s: float = 0.0

    def to_json(self) -> dict:
        trials = [{**asdict(t), **t.rate_distortion} for t in self.trials]
        by_id = {t["trial_id"]: t for t in trials}
        return {
            "sweep_dir": self.sweep_dir,
            "mlflow_run_id": self.mlflow_run_id,
            "trials": trials,
            "front": [by_id[i] for i in self.front],
            "best": self.best,
            "model_uri": self.model_uri,
            "wall_s": self.wall_s,
        }


def run_sweep(spec: SweepSpec, *, resume_dir: Optional[str] = None, console: Optional[Console] = None, show_progress: bool = True) -> SweepResult:
    """Runs (or, with `resume_dir`, continues) a sweep; raises TrainingError / TrainingInterrupted."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    spec = spec.model_copy(update={"train": with_absolute_data_root(spec.train)})
    sweep_dir = _prepare_sweep_dir(spec, resume_dir)
    if resume_dir:
        spec = _stored_spec(sweep_dir, spec, console)
    run_id_file = sweep_dir.join(RUN_ID_FILE)
    previous = storage.read_text(run_id_file).strip() if storage.exists(run_id_file) else None
    try:
        parent = TrackedRun.begin(spec, sweep_dir.name, previous, tags={"vae.sweep_dir": sweep_dir.uri})
    except TrackingUnavailable as exc:
        raise TrainingError(str(exc)) from None
    storage.write_text(run_id_file, parent.run_id)
    with parent.failing_on_error(TrainingInterrupted):
        ensure_ray()
        _run_trials(spec, sweep_dir, parent.run_id, console, show_progress)
        trials = _outcomes(spec, records.scan(sweep_dir))
        result = _summarise(spec, sweep_dir, parent.run_id, trials)
    finish_run(parent.run_id, succeeded=True)
    result.wall_s = time.perf_counter() - started
    storage.write_text(sweep_dir.join(RESULTS_FILE), json.dumps(result.to_json(), indent=2, default=str))
    return result


def _prepare_sweep_dir(spec: SweepSpec, resume_dir: Optional[str]) -> storage.Location:
    try:
        root = storage.resolve(resume_dir or spec.train.storage.uri)
        storage.check_reachable(root)
        if resume_dir:
            if not storage.exists(root.join(SPEC_FILE)):
                raise TrainingError(f"--resume: {resume_dir} is not a sweep directory (no {SPEC_FILE} in it)")
            sweep_dir = root
        else:
            sweep_dir = root.join(new_run_name(spec))
            storage.make_dirs(sweep_dir)
            storage.write_text(sweep_dir.join(SPEC_FILE), dump_spec(spec))
    except (storage.StorageError, OSError) as exc:
        raise TrainingError(" ".join(str(exc).split()) or exc.__class__.__name__) from None
    return sweep_dir


def _stored_spec(sweep_dir: storage.Location, given: SweepSpec, console: Console) -> SweepSpec:
    """A continued sweep runs the spec it started with (its trials must stay comparable)."""
    try:
        stored = load_spec_text(storage.read_text(sweep_dir.join(SPEC_FILE)), str(sweep_dir.join(SPEC_FILE)))
    except SpecError as exc:
        raise TrainingError(f"--resume: the sweep's stored spec is unreadable: {exc}") from None
    if not isinstance(stored, SweepSpec):
        raise TrainingError(f"--resume: {sweep_dir} holds a training run, not a sweep")
    if stored != given:
        console.print("[yellow]--resume: continuing with the spec stored with the sweep; the given spec and --set differ from it.")
    return stored


def concurrent_trials(spec: SweepSpec) -> int:
    """max_concurrent, lowered to what the cluster can hold at once: trials never oversubscribe
    it (each trial's Train workers ask for their own CPUs/GPUs)."""
    per_trial = train_resources(spec.train)
    available = ray.cluster_resources()
    fits = min(math.floor(available.get(name, 0.0) / amount + 1e-9) for name, amount in per_trial.items() if amount > 0)
    if fits < 1:
        wanted = ", ".join(f"{amount:g} {name}" for name, amount in per_trial.items() if amount > 0)
        have = ", ".join(f"{available.get(name, 0):g} {name}" for name in per_trial if per_trial[name] > 0)
        raise TrainingError(f"a trial needs {wanted}; the Ray cluster has {have}")
    return min(spec.sweep.max_concurrent, fits)


def _run_trials(spec: SweepSpec, sweep_dir: storage.Location, parent_run_id: str, console: Console, show_progress: bool) -> None:
    """Runs what is left of the sweep: first the trials an interruption cut short (each in its
    own directory, from its latest checkpoint), then the trials not started yet."""
    earlier = records.scan(sweep_dir)
    attempt = len(storage.list_dirs(sweep_dir.join(TUNE_DIR)))
    interrupt = records.Interrupt()
    ledger = PlacementGroupLedger.remote()
    progress = SweepProgress(f"sweep {sweep_dir.name}", list(spec.sweep.space), search.metrics(spec), spec.train.optim.epochs, console, enabled=show_progress)
    callbacks = [progress, ReleaseEndedTrials(ledger), records.RecordOutcomes(sweep_dir, interrupt)]
    # The trial function itself only waits on its TorchTrainer, so it asks for no CPU (Tune
    # refuses an empty request: 1 MiB of memory stands in); the concurrency limit keeps the
    # trials' Train workers within the cluster.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=spec.model_dump(mode="json", by_alias=True), parent_run_id=parent_run_id,
                             sweep_dir=sweep_dir.uri, env=forwarded_env(), ledger=ledger),
        {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY},
    )

    def tuner(name: str, param_space: dict, num_samples: int, searcher=None, scheduler=None) -> tune.Tuner:
        return tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                                        max_concurrent_trials=concurrent_trials(spec)),
            run_config=tune.RunConfig(
                name=f"{attempt:02d}-{name}",  # Tune's own records (we never read them back)
                storage_path=sweep_dir.join(TUNE_DIR).path,
                storage_filesystem=None if sweep_dir.is_local else sweep_dir.filesystem,
                callbacks=callbacks, stop=interrupt, verbose=0,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            ),
        )

    phases = []
    cut_short = [r for r in earlier if r.outcome is None]
    if cut_short:
        given = [{"trial_id": r.trial_id, "config": r.config} for r in cut_short]
        phases.append(lambda: tuner("continued", {records.GIVEN: tune.grid_search(given)}, 1))
    if spec.sweep.is_grid:
        left = search.grid_remaining(spec, [r.config for r in earlier])
        if left:
            phases.append(lambda: tuner("grid", {records.GIVEN: tune.grid_search([{"config": c} for c in left])}, 1,
                                        scheduler=search.scheduler(spec)))
    else:
        count = spec.sweep.trial_count() - len(earlier)
        known = [(t.params, _objective_values(t, spec.sweep.objectives))
                 for t in (_as_outcome(spec, r) for r in earlier) if t.state == "finished"]
        if count > 0:
            phases.append(lambda: tuner("search", {}, count, searcher=search.searcher(spec, known, attempt), scheduler=search.scheduler(spec)))

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours (records.Interrupt) stops Tune instead
    try:
        with interrupt.catching_sigint(), contextlib.redirect_stdout(sys.stderr):  # Tune's banners: stdout is for --json
            for make in phases:
                if interrupt.requested:
                    break
                make().fit()
    finally:
        progress.stop()
    if interrupt.requested:
        raise TrainingInterrupted(sweep_dir.uri)


def _as_outcome(spec: SweepSpec, record: records.TrialRecord) -> TrialOutcome:
    outcome = record.outcome
    if outcome is None:
        return TrialOutcome(record.trial_id, "unfinished", record.config, {}, 0)
    epochs = outcome["epochs"]
    if outcome["state"] == "errored":
        state = "errored"
    else:  # ended by itself, or stopped by ASHA
        state = "finished" if epochs >= spec.train.optim.epochs else "stopped"
    return TrialOutcome(record.trial_id, state, record.config, dict(outcome["metrics"]), epochs)


def _outcomes(spec: SweepSpec, found: list[records.TrialRecord]) -> list[TrialOutcome]:
    return sorted((_as_outcome(spec, r) for r in found), key=lambda t: t.trial_id)


def _objective_values(trial: TrialOutcome, names: list[str]) -> list[float]:
    return [float(trial.metrics[OBJECTIVE_METRICS[n]]) for n in names]


def _objective_vector(spec: SweepSpec, trial: TrialOutcome, names: list[str]) -> list[float]:
    """All minimised: a maximised objective (active units) is negated."""
    return [(-1 if OBJECTIVE_MODES[n] == "max" else 1) * v for n, v in zip(names, _objective_values(trial, names))]


def _summarise(spec: SweepSpec, sweep_dir: storage.Location, parent_run_id: str, trials: list[TrialOutcome]) -> SweepResult:
    children = sweep_run.child_runs(parent_run_id)
    for trial in trials:
        run = children.get(trial.trial_id)
        trial.mlflow_run_id = run.info.run_id if run else None
        if trial.state == "finished" and (run is None or run.info.status != "FINISHED"):
            trial.state = "stopped"  # stopped at its last epoch, before its model was logged
        if trial.state == "errored":  # run_training recorded why on the trial's own run
            trial.error = (run.data.tags.get("vae.error") if run else None) or "the trial failed (see its logs)"
        if run and trial.state == "stopped" and run.info.status == "RUNNING":
            sweep_run.close_stopped(run.info.run_id, f"stopped early by ASHA after {trial.epochs} epoch(s)")
    finished = [t for t in trials if t.state == "finished" and all(OBJECTIVE_METRICS[n] in t.metrics for n in spec.sweep.objectives)]
    result = SweepResult(sweep_dir.uri, parent_run_id, trials)
    plane = spec.sweep.objectives if len(spec.sweep.objectives) > 1 else ["rate", "distortion"]
    points = [_objective_vector(spec, t, plane) for t in finished]
    front = non_dominated(points) if finished else []
    result.front = [finished[i].trial_id for i in front]
    best = None
    if finished:
        if len(spec.sweep.objectives) == 1:
            best = min(range(len(finished)), key=lambda i: _objective_vector(spec, finished[i], spec.sweep.objectives)[0])
        else:
            best = knee_point(points)
        result.best = finished[best].trial_id
    rows = [_row(spec, t) for t in finished]
    table = [{"trial_id": t.trial_id, "state": t.state, "epochs": t.epochs, "mlflow_run_id": t.mlflow_run_id or "",
              **t.params, **t.metrics, "error": t.error or ""} for t in trials]
    # The front drawn is always in the rate–distortion plane.
    rd_front = non_dominated([[r["rate"], r["distortion"]] for r in rows]) if rows else []
    sweep_run.log_results(parent_run_id, table, rows, rd_front, best)
    if best is not None and finished[best].mlflow_run_id:
        name = spec.train.tracking.register_as or spec.name
        best_run = children[finished[best].trial_id]
        result.model_uri = sweep_run.register_best(parent_run_id, best_run, name, spec.train.tracking.alias, finished[best].metrics)
    return result


def _row(spec: SweepSpec, trial: TrialOutcome) -> dict:
    trial_spec = spec.trial_spec(trial.params, "row")
    return {"beta": trial_spec.objective.beta, "latent_dim": trial_spec.model.latent_dim,
            "rate": trial.metrics["val_kl"], "distortion": trial.metrics["val_recon"], "active_units": trial.metrics["active_units"]}
