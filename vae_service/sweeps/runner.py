"""The Ray Tune adapter: runs what is left of a sweep's trials and reads back how each ended.

Ray Tune drives Optuna (or a grid) and ASHA over trials that are each a Ray Train run. What a
sweep *is* (its directory, parent MLflow run, best model) belongs to `vae_service.jobs.sweep`;
the job hands in `train_trial`, the function that trains one trial, so this adapter never
calls up. A sweep directory holds:
  trials/<id>/      each trial's run directory (checkpoints, model, metrics.json) with its
                    trial.json and outcome.json (see records.py: what `--resume` reads)
  tune/             Ray Tune's own records, one directory per attempt (never read back: they
                    are pickles, and a sweep directory may come from anywhere)

Continuing a sweep keeps the trials that ended, continues those an interruption cut short
(from their checkpoints), and runs only the trials not started yet; Optuna's study is seeded
with the finished trials' results, so it samples as if the sweep had not stopped.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import ray
from ray import tune
from rich.console import Console

from vae_service import storage
from vae_service.cluster import ensure_ray, live_nodes, on_this_node
from vae_service.core.errors import Interrupted, JobFailed
from vae_service.core.interrupt import Interrupt
from vae_service.core.capacity import workers_that_fit
from vae_service.core.resources import per_worker, runs_as_one_task, shortfall
from vae_service.core import metrics as M
from vae_service.core.metrics import OBJECTIVE_METRICS, OBJECTIVE_MODES
from vae_service.core.sweep_spec import SweepSpec
from vae_service.environment import forwarded_env
from vae_service.sweeps import records, search
from vae_service.sweeps.cleanup import PlacementGroupLedger, ReleaseEndedTrials, end_trial_actors
from vae_service.sweeps.progress import SweepProgress
from vae_service.sweeps.trial import run_trial
from vae_service.training.ray_internals import tune_sigint_handler_disabled

TUNE_DIR = "tune"
TRIAL_DRIVER_MEMORY = 1 << 20

TrainTrial = Callable[..., None]  # (trial spec, run dir URI, MLflow tags, Ray Train callbacks)


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
        return {M.RATE: self.metrics.get(M.VAL_KL), M.DISTORTION: self.metrics.get(M.VAL_RECON)}

    def has_objectives(self, names: list[str]) -> bool:
        """Every objective measured (an end-of-trial one is NaN until the trial's last epoch)."""
        return all(math.isfinite(float(self.metrics.get(OBJECTIVE_METRICS[n], math.nan))) for n in names)

    def objective_values(self, names: list[str]) -> list[float]:
        return [float(self.metrics[OBJECTIVE_METRICS[n]]) for n in names]

    def objective_vector(self, names: list[str]) -> list[float]:
        """All minimised: a maximised objective (active units) is negated."""
        return [(-1 if OBJECTIVE_MODES[n] == "max" else 1) * v for n, v in zip(names, self.objective_values(names))]


def concurrent_trials(spec: SweepSpec) -> int:
    """max_concurrent, lowered to what the cluster can hold at once: trials never oversubscribe
    it (each trial's Train workers ask for their own CPUs/GPUs, each worker on one node)."""
    resources = spec.train.resources
    fits = workers_that_fit(per_worker(resources), live_nodes()) // resources.num_workers
    if fits < 1:  # jobs.execute checks this before the sweep starts; the cluster may have shrunk since
        raise JobFailed(shortfall(resources, live_nodes()) or "no trial fits on the Ray cluster")
    return min(spec.sweep.max_concurrent, fits)


def reuse_trial_actors(spec: SweepSpec) -> bool:
    """Whether a trial's actor runs the next trial too. A new actor costs a process and its
    imports (Tune, Ray Train, torch, MLflow: ~13 s between one small trial and the next on 2
    cores); a reused one starts the next trial at once. Only for one-worker trials (a Ray Train
    trial's controller is owned by its actor and must end with it), and not under ASHA: Tune
    stops a trial in an actor it keeps only by asking it for no more results, and a function
    trial does not wait to be asked, so it would train on to its end; an actor of its own is
    killed when the trial is stopped."""
    return runs_as_one_task(spec.train.resources) and spec.sweep.scheduler.kind != "asha"


def run_trials(spec: SweepSpec, sweep_dir: storage.Location, parent_run_id: str, *, train_trial: TrainTrial,
               interrupt: Interrupt, console: Console, show_progress: bool) -> None:
    """Runs what is left of the sweep: first the trials an interruption cut short (each in its
    own directory, from its latest checkpoint), then the trials not started yet. Raises
    Interrupted when the job's interrupt is requested."""
    ensure_ray()
    earlier = records.scan(sweep_dir)
    attempt = len(storage.list_dirs(sweep_dir.join(TUNE_DIR)))
    ledger = PlacementGroupLedger.options(scheduling_strategy=on_this_node()).remote()
    progress = SweepProgress(f"sweep {sweep_dir.name}", list(spec.sweep.space), search.metrics(spec), spec.train.optim.epochs, console, enabled=show_progress)
    callbacks = [progress, ReleaseEndedTrials(ledger), records.RecordOutcomes(sweep_dir, interrupt)]
    # The trial function itself only waits on its workers, so it asks for no CPU (Tune
    # refuses an empty request: 1 MiB of memory stands in); the concurrency limit keeps the
    # trials' Train workers within the cluster.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=spec.model_dump(mode="json", by_alias=True), parent_run_id=parent_run_id,
                             sweep_dir=sweep_dir.uri, env=forwarded_env(), ledger=ledger, train_trial=train_trial),
        {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY},
    )

    def tuner(name: str, param_space: dict, num_samples: int, searcher=None, scheduler=None) -> tune.Tuner:
        return tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                                        max_concurrent_trials=concurrent_trials(spec), reuse_actors=reuse_trial_actors(spec)),
            run_config=tune.RunConfig(
                name=f"{attempt:02d}-{name}",  # Tune's own records (we never read them back)
                storage_path=sweep_dir.join(TUNE_DIR).path,
                storage_filesystem=None if sweep_dir.is_local else sweep_dir.filesystem,
                callbacks=callbacks, stop=records.StopOnInterrupt(interrupt), verbose=0,
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
        known = [(t.params, t.objective_values(spec.sweep.objectives))
                 for t in (as_outcome(spec, r) for r in earlier) if t.state == "finished"]
        if count > 0:
            phases.append(lambda: tuner("search", {}, count, searcher=search.searcher(spec, known, attempt), scheduler=search.scheduler(spec)))

    try:
        # Ctrl-C is the job's (core.interrupt, through StopOnInterrupt), not Tune's own handler;
        # Tune's banners go to stderr: stdout is for --json.
        with tune_sigint_handler_disabled(), contextlib.redirect_stdout(sys.stderr):
            for make in phases:
                if interrupt.requested:
                    break
                make().fit()
    finally:
        progress.stop()
        end_trial_actors(ledger)  # before the job reads and closes the trials' MLflow runs
        ray.kill(ledger)  # else it lives as long as the driver (a notebook, a test session)
    if interrupt.requested:
        raise Interrupted(sweep_dir.uri)


def as_outcome(spec: SweepSpec, record: records.TrialRecord) -> TrialOutcome:
    outcome = record.outcome
    if outcome is None:
        return TrialOutcome(record.trial_id, "unfinished", record.config, {}, 0)
    epochs = outcome["epochs"]
    if outcome["state"] == "errored":
        state = "errored"
    else:  # ended by itself, or stopped by ASHA
        state = "finished" if epochs >= spec.train.optim.epochs else "stopped"
    return TrialOutcome(record.trial_id, state, record.config, dict(outcome["metrics"]), epochs)


def trial_outcomes(spec: SweepSpec, sweep_dir: storage.Location) -> list[TrialOutcome]:
    """Every trial the sweep has started, by id, with how it ended."""
    return sorted((as_outcome(spec, r) for r in records.scan(sweep_dir)), key=lambda t: t.trial_id)
