"""Gives back the cluster resources of trials that Tune stops early.

When ASHA stops a trial of several workers, Tune ends the trial's actor; the Train controller it
owns dies with it, but the controller's placement group belongs to the sweep's Ray job and stays
reserved. Ray Train's own cleaner for this case needs the state API (a dashboard, and a machine
with a single Ray instance), which a local cluster may not have. So each trial's controller
reports its placement groups here, and the sweep driver removes a trial's groups once the trial
has ended. (A single-worker trial holds no placement group: its training task dies with the
trial's actor, which owns it, and Ray frees its CPUs then.)
"""
from __future__ import annotations

import logging

import ray
from ray.tune import Callback

from vae_service.training.ray_internals import WorkerGroupCallback, kill_and_wait, placement_group_hex, release_placement_group

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class PlacementGroupLedger:
    """Trial id → the hex ids of the placement groups its Train runs reserved; and the trials'
    own actors (see end_trial_actors)."""

    def __init__(self):
        self.groups: dict[str, list[str]] = {}
        self.actors: list = []

    def add_actor(self, actor) -> None:
        self.actors.append(actor)

    def pop_actors(self) -> list:
        actors, self.actors = self.actors, []
        return actors

    def add(self, trial_id: str, group_id: str) -> None:
        self.groups.setdefault(trial_id, []).append(group_id)

    def pop(self, trial_id: str) -> list[str]:
        return self.groups.pop(trial_id, [])


class ReportPlacementGroup(WorkerGroupCallback):
    """Runs in a trial's Train controller: tells the ledger which placement group its worker
    group holds. (Ray Train's internal callback interface: it has no public hook for this.)"""

    def __init__(self, ledger, trial_id: str):
        self.ledger, self.trial_id = ledger, trial_id

    def after_worker_group_start(self, worker_group) -> None:
        self.ledger.add.remote(self.trial_id, placement_group_hex(worker_group))


class ReleaseEndedTrials(Callback):
    """Runs in the sweep driver: removes an ended trial's placement groups (already gone after
    a normal finish; still reserved after an early stop)."""

    def __init__(self, ledger):
        self.ledger = ledger

    def __getstate__(self) -> dict:  # Tune saves its callbacks; a resumed sweep makes new ones
        return {"ledger": None}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._release(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._release(trial.trial_id)

    def _release(self, trial_id: str) -> None:
        if self.ledger is None:
            return
        for group_id in ray.get(self.ledger.pop.remote(trial_id)):
            try:
                release_placement_group(group_id)
            except Exception as exc:  # already removed by Ray Train
                log.debug("placement group %s of trial %s: %s", group_id, trial_id, exc)


def end_trial_actors(ledger, timeout_s: float = 30.0) -> None:
    """Ends the trials' actors once Tune is done with them, and waits until they are gone. Tune
    only asks a stopped trial's actor to exit; until it does, the trial's thread lives on, sees
    its Train run die under it and would mark the trial's MLflow run FAILED after the sweep had
    closed it as stopped (KILLED)."""
    kill_and_wait(ray.get(ledger.pop_actors.remote()), timeout_s)
