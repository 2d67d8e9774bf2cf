"""What a sweep keeps of each trial, as JSON in the trial's own directory, so an interrupted
sweep can be continued without Ray Tune's pickled experiment state:

  trials/<id>/trial.json    {"trial_id", "config", "process"}: written by the trial when it starts
  trials/<id>/outcome.json  {"state", "epochs", "metrics"}: written by the sweep driver when
                            the trial ends (finished, stopped by ASHA, or errored)

A trial directory with trial.json and no outcome.json was cut short (Ctrl-C, the driver
killed): `--resume` runs it again in the same directory, from its latest checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any, Optional

from ray.tune import Callback
from ray.tune.stopper import Stopper

from vae_service import storage
from vae_service.core.interrupt import Interrupt
from vae_service.core.metrics import trial_metrics

GIVEN = "__given__"  # a trial config that names its values (and, to continue one, its trial)
TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"
OUTCOME_FILE = "outcome.json"
RUN_METRICS_FILE = "metrics.json"  # written by the train job when a run is complete


@dataclass
class TrialRecord:
    trial_id: str
    config: dict[str, Any]
    outcome: Optional[dict] = None  # None: cut short, to be continued


def trial_identity(tune_trial_id: str, config: dict) -> tuple[str, dict]:
    """(the trial's record id, its field values). A continued trial keeps its first id and
    directory; Tune gives it a new id of its own."""
    if GIVEN in config:
        given = config[GIVEN]
        return given.get("trial_id") or tune_trial_id, dict(given["config"])
    return tune_trial_id, dict(config)


def trial_dir(sweep_dir: storage.Location, trial_id: str) -> storage.Location:
    return sweep_dir.join(TRIALS_DIR, trial_id)


def write_trial(run_dir: storage.Location, trial_id: str, config: dict) -> None:
    """Written by the trial as it starts, in its Tune actor (`process`: which one, host:pid)."""
    storage.make_dirs(run_dir)
    process = f"{socket.gethostname()}:{os.getpid()}"
    storage.write_text(run_dir.join(TRIAL_FILE), json.dumps({"trial_id": trial_id, "config": config, "process": process}))


def scan(sweep_dir: storage.Location) -> list[TrialRecord]:
    """Every trial the sweep has started, with its outcome when it ended."""
    records = []
    for directory in storage.list_dirs(sweep_dir.join(TRIALS_DIR)):
        if not storage.exists(directory.join(TRIAL_FILE)):
            continue  # started by Tune, killed before the trial wrote anything: nothing to keep
        trial = storage.read_json(directory.join(TRIAL_FILE))
        records.append(TrialRecord(trial["trial_id"], trial["config"], _outcome(directory)))
    return records


def _outcome(directory: storage.Location) -> Optional[dict]:
    """outcome.json; or, for a trial whose training finished but whose end the driver did not
    see (interrupted just then), the run's own metrics.json."""
    if storage.exists(directory.join(OUTCOME_FILE)):
        return storage.read_json(directory.join(OUTCOME_FILE))
    if storage.exists(directory.join(RUN_METRICS_FILE)):
        run = storage.read_json(directory.join(RUN_METRICS_FILE))
        metrics = run.get("all_metrics", {})
        return {"state": "ended", "epochs": int(run["epochs_completed"]), "metrics": trial_metrics(metrics)}
    return None


def epochs_done(result: dict) -> int:
    """Epochs a trial has completed: from the reported epoch, which a continued trial carries
    on counting (Tune's training_iteration restarts at 1)."""
    if "epoch" in result:
        return int(result["epoch"]) + 1
    return int(result.get("training_iteration", 0))


class StopOnInterrupt(Stopper):
    """Ends the whole Tune experiment (stop_all) once the job's Ctrl-C handling (core.interrupt)
    requests a stop; the driver then reports an interruption instead of a result."""

    def __init__(self, interrupt: Interrupt):
        self.interrupt = interrupt

    def __getstate__(self) -> dict:  # Tune saves its stopper; a saved one must not stop anything
        return {"interrupt": Interrupt()}

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.interrupt.requested


class RecordOutcomes(Callback):
    """In the sweep driver: writes outcome.json when a trial ends, unless the sweep is being
    interrupted (a trial stopped by Ctrl-C is unfinished, not done)."""

    def __init__(self, sweep_dir: storage.Location, interrupt: Interrupt):
        self.sweep_dir, self.interrupt = sweep_dir, interrupt

    def __getstate__(self) -> dict:
        return {"sweep_dir": None, "interrupt": None}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, "ended")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, "errored")

    def _record(self, trial, state: str) -> None:
        if self.sweep_dir is None or self.interrupt.requested:
            return
        result = trial.last_result or {}
        outcome = {
            "state": state,
            "epochs": epochs_done(result),
            "metrics": trial_metrics(result),
        }
        record_id, _ = trial_identity(trial.trial_id, trial.config)
        directory = trial_dir(self.sweep_dir, record_id)
        storage.make_dirs(directory)
        storage.write_text(directory.join(OUTCOME_FILE), json.dumps(outcome))
