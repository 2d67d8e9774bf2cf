"""Every private Ray API this project relies on, in one place (tests/test_ray_internals.py
fails loudly when a Ray upgrade moves one of them).

- Ray Train's driver installs its own SIGINT handler, which calls sys.exit and hides what
  happened; `AbortableTorchTrainer` hands the Train controller to us instead, so the job's own
  Ctrl-C handling (core.interrupt) can abort the run and report how to resume it.
- A sweep must give back the placement groups of trials that Tune stops early; Ray Train has
  no public hook that names a worker group's placement group.
- Ray Tune installs its own SIGINT handler unless TUNE_DISABLE_SIGINT_HANDLER is set when
  `Tuner.fit` starts.
- Knowing that a killed actor is really gone: `ray.kill` returns at once; every actor has Ray's
  built-in `__ray_ready__` method, which fails once the actor has died.
"""

from __future__ import annotations

import time

import ray
from ray._raylet import PlacementGroupID
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.util.placement_group import PlacementGroup, remove_placement_group

from vae_service.core.interrupt import Interrupt
from vae_service.environment import applied

__all__ = ["AbortableTorchTrainer", "WorkerGroupCallback", "kill_and_wait", "placement_group_hex",
           "release_placement_group", "tune_sigint_handler_disabled"]


class AbortableTorchTrainer(TorchTrainer):
    """A TorchTrainer that a requested `Interrupt` aborts, `stop_grace_s` after the request if
    the workers have not stopped by themselves by then (the run's checkpoints are kept)."""

    def __init__(self, *args, interrupt: Interrupt, stop_grace_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.interrupt, self.stop_grace_s = interrupt, stop_grace_s

    def _register_sigint_handler(self, controller) -> None:  # Ray's hook, called in fit()
        self.interrupt.on_request(lambda: controller.abort.remote(), after_s=self.stop_grace_s)  # after the board's stop


def placement_group_hex(worker_group) -> str:
    """The id of the placement group a Train worker group runs in (in a WorkerGroupCallback)."""
    return worker_group.get_worker_group_state().placement_group_handle.placement_group.id.hex()


def release_placement_group(group_hex: str) -> None:
    remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(group_hex)))


def tune_sigint_handler_disabled():
    """Tune reads the variable when `fit` starts; it is restored when the block ends."""
    return applied({"TUNE_DISABLE_SIGINT_HANDLER": "1"})


def kill_and_wait(actors: list, timeout_s: float) -> None:
    """Kills the actors and waits (at most `timeout_s` in all) until each is gone."""
    for actor in actors:
        ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + timeout_s
    for actor in actors:
        while time.monotonic() < deadline:
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=1.0)
            except ray.exceptions.RayActorError:
                break  # gone
            except ray.exceptions.GetTimeoutError:
                pass
            time.sleep(0.1)
