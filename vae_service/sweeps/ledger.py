"""The sweep's ledger: an actor that holds, for the sweep driver, the placement groups each
trial's Train runs reserved and the trials' own actors (sweeps/cleanup.py gives them back).

A module of its own that imports Ray alone: the actor's process imports the module its class is
defined in, and the cleanup callbacks beside it would load Ray Train and Tune there (4 CPU-s
more for each sweep's ledger).
"""
from __future__ import annotations

import ray


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
