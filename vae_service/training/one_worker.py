"""A single-worker run without a Ray Train worker group: one Ray task.

Ray Train starts six processes for every run (its controller, the worker, a synchronisation
actor, a placement-group cleaner, a preemption watcher, a dataset manager), and each imports Ray
Train and torch anew: about 14 CPU-seconds before the first step, for a run that has no DDP to
set up. A single-worker run is one Ray task instead. Ray holds the worker's CPUs and GPUs for it
while it runs, and reuses its process (torch and the loop already imported) for the next
single-worker run of the same Ray job: a driver that trains several times (a notebook, a test
session) pays the imports once. The task asks for no runtime environment, so that a worker Ray
started ahead (at `ray.init`) can take it at once.

What Ray Train does for a run, done here for this one:
- checkpoints: each one rank 0 reports is copied under the run directory as
  `checkpoint_<time>/` (its state file last, so a copy cut off midway is never taken for a
  checkpoint: see runner.latest_checkpoint), and the newest `storage.keep_checkpoints` are kept;
- failures: the task is retried up to `storage.max_failures` times, each attempt continuing from
  the last checkpoint this run reported (the progress board remembers it);
- Ctrl-C and the queue's stop: the task finishes its step, checkpoints there and ends (if it has
  not ended `stop_grace_s` later, it is cancelled and its process ended); the checkpoints stay;
- the run's Ray Train callbacks (`ray.train.UserCallback`, a sweep trial's report to Tune): each
  report is handed to their `after_report` here, in the driver, as the controller would.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import ray
import ray.train
import torch

from vae_service import storage
from vae_service.cluster import warming
from vae_service.core.checkpoint import STATE_FILE
from vae_service.core.interrupt import Interrupt
from vae_service.core.spec import TrainSpec
from vae_service.training.checkpoints import checkpoint_from_uri
from vae_service.training.worker import driver_settings, train_loop


REPORT_POLL_S = 0.2  # how often the driver hands new reports to the callbacks


class TaskSession:
    """The worker loop's `Session` inside the task: rank 0 of 1."""

    rank, world_size = 0, 1

    def __init__(self, board: Any, run_dir: storage.Location, keep: int, datasets: dict):
        self.board, self.run_dir, self.keep = board, run_dir, keep
        self.datasets = datasets
        self.device = torch.device("cuda", 0) if ray.get_gpu_ids() else torch.device("cpu")
        self._iterators: dict[str, Any] = {}

    def restored(self) -> Optional[ray.train.Checkpoint]:
        return checkpoint_from_uri(ray.get(self.board.last_checkpoint.remote()))

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # already on its device; one worker has no gradients to share

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        uri = self._persist(checkpoint_dir) if checkpoint_dir else None
        ray.get(self.board.report.remote(metrics, uri))  # recorded before the next epoch starts

    def dataset_shard(self, name: str) -> Any:
        if name not in self._iterators:
            self._iterators[name] = self.datasets[name].iterator()
        return self._iterators[name]

    def _persist(self, checkpoint_dir: str) -> str:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d_%H-%M-%S.%f")
        destination = self.run_dir.join(f"checkpoint_{stamp}")
        with tempfile.TemporaryDirectory() as staged:
            shutil.copytree(checkpoint_dir, staged, dirs_exist_ok=True)
            state = Path(staged, STATE_FILE)
            state_text = state.read_text()
            state.unlink()
            storage.upload_dir(staged, destination)
        storage.write_text(destination.join(STATE_FILE), state_text)  # last: the checkpoint is complete
        for old in storage.list_checkpoints(self.run_dir)[: -self.keep]:
            storage.delete_dir(old)
        return destination.uri


@ray.remote
def train_one_worker(config: dict, run_dir: str, keep: int, datasets: dict, warmed: Optional[int] = None) -> None:
    """The task (its process shows as `ray::train_one_worker`). `warmed`: the worker process
    started ahead for it (cluster.start_a_worker), which Ray resolves, so the task waits for it."""
    with driver_settings(config):
        train_loop(config, TaskSession(config["progress_board"], storage.resolve(run_dir), keep, datasets))


def stop_task(task: ray.ObjectRef) -> None:
    """Cancels `task` and ends its process, unless it has already ended. Ray 2.60 aborts the
    driver (a failed check in its task manager: "Tried to complete task that was not pending")
    when it cancels a task whose failure it has just received, so a run whose task failed
    must not cancel it again."""
    if not ray.wait([task], timeout=0)[0]:
        ray.cancel(task, force=True)


def run(spec: TrainSpec, config: dict, run_dir: storage.Location, datasets: dict, interrupt: Interrupt,
        stop_grace_s: float, callbacks: tuple = ()) -> tuple[Optional[ray.train.Checkpoint], dict]:
    """Runs the task to its end; returns its last checkpoint and last metrics, as Ray Train's
    Result has them (raises Ray's error when its last attempt failed). Callbacks that are not
    `UserCallback`s concern a worker group (its placement group): this run has none."""
    task = train_one_worker.options(
        num_cpus=spec.resources.cpus_per_worker,
        num_gpus=spec.resources.gpus,
        max_retries=spec.storage.max_failures,
        retry_exceptions=True,
        # No runtime environment (the settings travel in `config`): Ray has workers started ahead
        # for tasks that ask for none.
        scheduling_strategy="DEFAULT",  # not inside a caller's placement group (a Tune trial's holds no CPU)
    ).remote(config, run_dir.uri, spec.storage.keep_checkpoints, datasets, warmed=warming())
    interrupt.on_request(lambda: stop_task(task), after_s=stop_grace_s)  # after the board's stop (runner.fit)
    user_callbacks = [c for c in callbacks if isinstance(c, ray.train.UserCallback)]
    board, passed, done = config["progress_board"], 0, not user_callbacks
    try:
        while not done:
            done = bool(ray.wait([task], timeout=REPORT_POLL_S)[0])
            for metrics, uri in ray.get(board.reports_since.remote(passed)):
                checkpoint = checkpoint_from_uri(uri)
                for callback in user_callbacks:
                    callback.after_report(run_context=None, metrics=[metrics], checkpoint=checkpoint)
                passed += 1
        ray.get(task)
    except BaseException:
        # The caller fails or is stopped: the task must not outlive it, and its owner may be a
        # sweep's trial actor that lives on to run the next trial (sweeps/runner.py).
        stop_task(task)
        raise
    metrics, uri = ray.get(board.result.remote())
    return checkpoint_from_uri(uri), metrics
