"""The sweep job: a `kind: sweep` spec run as Ray Tune trials (sweeps/) under one parent MLflow
run, then summarised: every trial's table, the rate–distortion front, the best model.

Everything a sweep leaves is under its run directory (see sweeps.runner for trials/ and tune/):
  spec.yaml         the normalised sweep spec (a continued sweep runs this one, not the given)
  results.json      the outcome, as `vae run --json` prints it; outcome.json: how it ended

The best model: with one objective, the finished trial with the best value; with several, the
knee of the Pareto front (the front point nearest the ideal point, objectives scaled to [0, 1]
over the front). Only trials that ran every epoch count: ASHA-stopped trials have no model.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from vae_service import storage
from vae_service.core.errors import BadInput
from vae_service.core.interrupt import Interrupt
from vae_service.core.pareto import knee_point, non_dominated
from vae_service.core.spec_loading import SpecError, load_spec_text
from vae_service.core import metrics as M
from vae_service.core.sweep_spec import SweepSpec
from vae_service.jobs.lifecycle import SPEC_FILE, storage_errors, tracked_run, write_spec
from vae_service.jobs.outcome import Outcome
from vae_service.jobs.reporter import Reporter
from vae_service.jobs.train import train_trial
from vae_service.sweeps.runner import TrialOutcome, run_trials, trial_outcomes
from vae_service.tracking import sweep_run
from vae_service.tracking.mlflow_run import ERROR_TAG

RESULTS_FILE = "results.json"


@dataclass
class SweepResult:
    sweep_dir: str
    mlflow_run_id: str
    trials: list[TrialOutcome]
    front: list[str] = field(default_factory=list)  # trial ids, non-dominated
    best: Optional[str] = None
    model_uri: Optional[str] = None
    wall_s: float = 0.0

    @property
    def best_metrics(self) -> dict:
        return next((t.metrics for t in self.trials if t.trial_id == self.best), {})

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


def sweep_job(spec: SweepSpec, sweep_dir: storage.Location, *, resume: bool, reporter: Reporter, interrupt: Interrupt,
              tags: Optional[dict] = None) -> Outcome:
    """Runs (or continues) the sweep; raises core.errors' JobErrors."""
    started = time.perf_counter()
    if resume:
        spec = stored_spec(sweep_dir, spec, reporter)
    else:
        write_spec(sweep_dir, spec)
    with tracked_run(sweep_dir, spec, spec.train.tracking.experiment, {**(tags or {}), "vae.sweep_dir": sweep_dir.uri}) as parent:
        run_trials(spec, sweep_dir, parent.run_id, train_trial=train_trial, interrupt=interrupt,
                   console=reporter.console, show_progress=reporter.progress == "bar")
        result = summarise(spec, sweep_dir, parent.run_id, trial_outcomes(spec, sweep_dir))
    result.wall_s = time.perf_counter() - started
    with storage_errors():
        storage.write_text(sweep_dir.join(RESULTS_FILE), json.dumps(result.to_json(), indent=2, default=str))
    return Outcome.succeeded("sweep", result, run_dir=result.sweep_dir, mlflow_run_id=result.mlflow_run_id,
                             model_uri=result.model_uri, metrics=result.best_metrics)


def stored_spec(sweep_dir: storage.Location, given: SweepSpec, reporter: Reporter) -> SweepSpec:
    """A continued sweep runs the spec it started with (its trials must stay comparable)."""
    location = sweep_dir.join(SPEC_FILE)
    try:
        with storage_errors():
            stored = load_spec_text(storage.read_text(location), str(location))
    except SpecError as exc:
        raise BadInput(f"--resume: the sweep's stored spec is unreadable: {exc}") from None
    if not isinstance(stored, SweepSpec):
        raise BadInput(f"--resume: {sweep_dir} holds a training run, not a sweep")
    if stored != given:
        reporter.console.print("[yellow]--resume: continuing with the spec stored with the sweep; the given spec and --set differ from it.")
    return stored


def summarise(spec: SweepSpec, sweep_dir: storage.Location, parent_run_id: str, trials: list[TrialOutcome]) -> SweepResult:
    """Matches trials to their MLflow runs, picks the front and the best, logs the results on
    the parent run and registers the best trial's model."""
    children = sweep_run.child_runs(parent_run_id)
    for trial in trials:
        run = children.get(trial.trial_id)
        trial.mlflow_run_id = run.info.run_id if run else None
        if trial.state == "finished" and (run is None or run.info.status != "FINISHED"):
            trial.state = "stopped"  # stopped at its last epoch, before its model was logged
        if trial.state == "errored":  # the trial's train job recorded why on its own run
            trial.error = (run.data.tags.get(ERROR_TAG) if run else None) or "the trial failed (see its logs)"
        if run and trial.state == "stopped" and run.info.status != "FINISHED":  # RUNNING, or FAILED as its Train run was torn down
            sweep_run.close_stopped(run.info.run_id, f"stopped early by ASHA after {trial.epochs} epoch(s)")
    objectives = spec.sweep.objectives
    finished = [t for t in trials if t.state == "finished" and t.has_objectives(objectives)]
    result = SweepResult(sweep_dir.uri, parent_run_id, trials)
    plane = objectives if len(objectives) > 1 else [M.RATE, M.DISTORTION]
    points = [t.objective_vector(plane) for t in finished]
    result.front = [finished[i].trial_id for i in non_dominated(points)] if finished else []
    best = None
    if finished:
        if len(objectives) == 1:
            best = min(range(len(finished)), key=lambda i: finished[i].objective_vector(objectives)[0])
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
            "rate": trial.metrics[M.VAL_KL], "distortion": trial.metrics[M.VAL_RECON], "active_units": trial.metrics[M.ACTIVE_UNITS]}
