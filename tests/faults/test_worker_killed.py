"""Fault tolerance with real processes: a training worker is killed mid-run and is restarted from
the latest checkpoint (storage.max_failures) — by Ray Train for a worker group, by a retry of the
task for a single-worker run (training/one_worker.py); the MLflow run keeps one continuous
history (each epoch logged once, none missing)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from vae_service.core import metrics as M
from vae_service.jobs.execute import execute
from vae_service.jobs.reporter import Reporter
from vae_service.tracking.mlflow_run import client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _committed_checkpoints(runs: Path, ray_train: bool) -> int:
    """Checkpoints that a restarted worker continues from. Ray Train: those its controller has
    registered (a checkpoint whose report was still queued on the killed worker is not). The
    single-worker task: all complete ones but the newest, whose report to the driver may not have
    arrived (the next checkpoint is written only after it has)."""
    if not ray_train:
        return max(0, len(list(runs.glob("*/checkpoint_*/state.json"))) - 1)
    for snapshot in runs.glob("*/checkpoint_manager_snapshot.json"):
        try:
            return len(json.loads(snapshot.read_text()).get("checkpoint_results", []))
        except ValueError:
            return 0  # being written
    return 0


def _train_worker_pids(title: str) -> set[int]:
    """The training workers of the session's own cluster: `ray.init` started its raylet as a
    child of this process, and the raylet starts the workers, so they are among this process's
    descendants (whose title starts with `title`). A process of another Ray cluster on this
    machine never is."""
    import psutil

    pids = set()
    for process in psutil.Process().children(recursive=True):
        try:
            cmdline = process.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cmdline and cmdline[0].startswith(title):
            pids.add(process.pid)
    return pids


@pytest.mark.parametrize(("workers", "title"), [(1, "ray::train_one_worker"), (2, "ray::RayTrainWorker")])
def test_killed_worker_is_restarted_from_the_latest_checkpoint(ray_cluster, tiny_spec, tmp_path, workers, title):
    spec = tiny_spec(optim__epochs=15, storage__max_failures=1, resources__num_workers=workers)
    runs = Path(spec.storage.uri)
    outcome: dict = {}

    def train() -> None:
        try:
            done = execute(spec, reporter=Reporter.quiet())
            outcome["error" if done.error else "result"] = done.error or done.result
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 240
    while not _committed_checkpoints(runs, ray_train=workers > 1) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    workers_before = _train_worker_pids(title)
    assert len(workers_before) == workers, workers_before
    victim = min(workers_before)
    os.kill(victim, signal.SIGKILL)
    replacement: set[int] = set()
    while thread.is_alive() and not replacement and time.monotonic() < deadline + 120:
        replacement = _train_worker_pids(title) - workers_before
        time.sleep(0.2)
    thread.join(timeout=400)

    assert "error" not in outcome, outcome.get("error")
    assert replacement, "no new worker was started"
    result = outcome["result"]
    assert result.epochs_completed == 15
    # The new worker continued from a checkpoint: epoch 0 was trained once, and every epoch ran.
    epochs = [row["epoch"] for row in result.history]
    assert epochs.count(0) == 1
    assert sorted(set(epochs)) == list(range(15))
    # One continuous MLflow history: every epoch once, although some were trained twice.
    mlflow = client()
    assert mlflow.get_run(result.mlflow_run_id).info.status == "FINISHED"
    for metric in (M.TRAIN_LOSS, M.VAL_NEG_ELBO):
        steps = [m.step for m in mlflow.get_metric_history(result.mlflow_run_id, metric)]
        assert sorted(steps) == list(range(15)), (metric, sorted(steps))
