"""Runs one training job on Ray Train and turns the outcome into a `RunResult`.

Embedded default: a local Ray started for the run. With RAY_ADDRESS set, the run joins that
cluster instead. Everything a run leaves is under `<storage.uri>/<run name>/` (a local path or
`s3://bucket/prefix`, see vae_service.storage):
  checkpoint_*/     Ray Train checkpoints (pickle-free, see core.checkpoint)
  model/            final weights (safetensors) + config.json
  spec.yaml         the normalised spec; metrics.json: per-epoch history and final metrics
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import ray
import ray.train
from ray.train.torch import TorchTrainer
from rich.console import Console

from vae_service import storage
from vae_service.core.checkpoint import STATE_FILE, load_checkpoint, read_state, save_model
from vae_service.core.model import VAE, ModelConfig
from vae_service.core.spec import TrainSpec
from vae_service.core.spec_loading import dump_spec
from vae_service.environment import forwarded_env
from vae_service.tracking.tracked_run import RUN_ID_FILE, TrackedRun, TrackingUnavailable
from vae_service.training.progress import ProgressBoard, ProgressDisplay
from vae_service.training.worker import train_loop_per_worker

SUMMARY_KEYS = ("val_neg_elbo", "val_recon", "val_kl", "active_units", "images_per_s")


class TrainingError(Exception):
    """Training stopped for a reason the user should see as one line (exit code 1)."""


class TrainingInterrupted(Exception):
    """Ctrl-C: the run was aborted; its checkpoints are kept for `--resume`."""


class InterruptibleTorchTrainer(TorchTrainer):
    """A TorchTrainer whose Ctrl-C aborts the run and lets `fit` return, so we can tell the
    user how to resume (Ray's own handler calls sys.exit, which hides what happened)."""

    interrupted = False

    def _register_sigint_handler(self, controller) -> None:
        def on_sigint(signum, frame):
            if self.interrupted:  # a second Ctrl-C: stop waiting for the graceful abort
                raise KeyboardInterrupt
            self.interrupted = True
            controller.abort.remote()

        signal.signal(signal.SIGINT, on_sigint)


@dataclass
class RunResult:
    run_dir: str
    model_dir: str
    checkpoint: str
    epochs_completed: int
    metrics: dict
    history: list[dict] = field(default_factory=list)
    mlflow_run_id: str = ""
    model_uri: str = ""  # models:/name/N when registered, else the logged model's URI
    startup_s: float = 0.0  # run_training called → first training step
    first_step_at: float = 0.0  # unix time of the first step (for process-level timings)
    wall_s: float = 0.0

    def to_json(self) -> dict:
        summary = {k: self.metrics.get(k) for k in SUMMARY_KEYS}
        summary.update({k: v for k, v in self.metrics.items() if k.startswith("test_")})
        return {**asdict(self), "metrics": summary, "all_metrics": self.metrics}


def ensure_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Connects to RAY_ADDRESS when set, else starts a local Ray for this process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)


def new_run_name(spec: TrainSpec) -> str:
    return f"{spec.name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def latest_checkpoint(run_dir: storage.Location) -> Optional[storage.Location]:
    """The checkpoint with the highest epoch under a run directory (local or S3), if any."""
    best, best_epoch = None, -1
    for checkpoint in storage.list_checkpoints(run_dir):
        state_file = checkpoint.join(STATE_FILE)
        if not storage.exists(state_file):  # a checkpoint cut off while it was being written
            continue
        epoch = storage.read_json(state_file).get("epoch", -1)
        if epoch > best_epoch:
            best, best_epoch = checkpoint, epoch
    return best


def with_absolute_data_root(spec: TrainSpec) -> TrainSpec:
    """A relative data.root means relative to where `vae run` was started, not to a worker."""
    root = spec.data.root
    if not root or "://" in root:
        return spec
    return spec.model_copy(update={"data": spec.data.model_copy(update={"root": str(Path(root).expanduser().resolve())})})


def run_training(
    spec: TrainSpec,
    *,
    resume_dir: Optional[str] = None,
    console: Optional[Console] = None,
    show_progress: bool = True,
    run_dir: Optional[str] = None,
    tags: Optional[dict] = None,
    callbacks: tuple = (),
) -> RunResult:
    """Trains `spec` on Ray Train; raises TrainingError for a failed run.

    A sweep trial passes its own fixed `run_dir` (continued from its checkpoints when it is
    restarted), MLflow `tags` (its parent run) and Ray Train `callbacks` (its report to Tune).
    """
    console = console or Console(stderr=True)
    started, started_unix = time.perf_counter(), time.time()
    spec = with_absolute_data_root(spec)
    if run_dir is not None:
        try:
            storage.make_dirs(storage.resolve(run_dir))
        except (storage.StorageError, OSError) as exc:
            raise TrainingError(" ".join(str(exc).split()) or exc.__class__.__name__) from None
        resume_dir = run_dir
    storage_root, run_dir, run_name = _prepare_run_dir(spec, resume_dir)

    run_id_file = run_dir.join(RUN_ID_FILE)
    previous_run_id = storage.read_text(run_id_file).strip() if storage.exists(run_id_file) else None
    try:
        tracked = TrackedRun.begin(spec, run_name, previous_run_id, tags)
    except TrackingUnavailable as exc:
        raise TrainingError(str(exc)) from None
    storage.write_text(run_id_file, tracked.run_id)
    board = None
    try:
        with tracked.failing_on_error(TrainingInterrupted):
            ensure_ray()  # after the tracking check: a wrong MLFLOW_TRACKING_URI fails in seconds
            board = ProgressBoard.remote()
            trainer = _build_trainer(spec, run_dir, run_name, storage_root, resume_dir, board, tracked.run_id, console, callbacks)
            result, board_state = _fit(trainer, board, spec, run_dir, console, show_progress)
            run = _outcome(spec, result, board_state, run_dir, tracked)
    finally:
        if board is not None:
            ray.kill(board)
    run.wall_s = time.perf_counter() - started
    run.startup_s = (run.first_step_at or started_unix) - started_unix
    storage.write_text(run_dir.join("metrics.json"), json.dumps(run.to_json(), indent=2, default=str))
    return run


def _prepare_run_dir(spec: TrainSpec, resume_dir: Optional[str]) -> tuple[storage.Location, storage.Location, str]:
    """(storage root, run directory, run name), the run directory created with its spec.yaml.
    S3 is checked first (bounded retries), so an unreachable store fails before Ray starts."""
    try:
        storage_root = storage.resolve(resume_dir or spec.storage.uri)
        storage.check_reachable(storage_root)
        if resume_dir:
            run_dir = storage_root
            if not storage.is_dir(run_dir):
                raise TrainingError(f"--resume: {resume_dir} is not a run directory")
            storage_root, run_name = run_dir.parent, run_dir.name
        else:
            run_name = new_run_name(spec)
            run_dir = storage_root.join(run_name)
        storage.make_dirs(run_dir)
        storage.write_text(run_dir.join("spec.yaml"), dump_spec(spec))
    except (storage.StorageError, OSError) as exc:
        raise TrainingError(" ".join(str(exc).split()) or exc.__class__.__name__) from None
    return storage_root, run_dir, run_name


def _build_trainer(spec: TrainSpec, run_dir: storage.Location, run_name: str, storage_root: storage.Location, resume_dir: Optional[str], board, mlflow_run_id: str, console: Console, callbacks: tuple = ()) -> "InterruptibleTorchTrainer":
    resume_from = latest_checkpoint(run_dir) if resume_dir else None
    if resume_dir and resume_from is None:
        console.print(f"[yellow]No checkpoint in {run_dir} yet: starting from epoch 1.")
    return InterruptibleTorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "progress_board": board,
            "resume_from": resume_from.uri if resume_from else None,
            "mlflow_run_id": mlflow_run_id,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec.resources.num_workers,
            use_gpu=spec.resources.use_gpu,
            resources_per_worker={"CPU": spec.resources.cpus_per_worker, "GPU": spec.resources.gpus},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_root.path,  # for S3: bucket/prefix, on the filesystem below
            storage_filesystem=None if storage_root.is_local else storage_root.filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.storage.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=spec.storage.max_failures),
            worker_runtime_env={"env_vars": forwarded_env()},
            callbacks=list(callbacks),
        ),
    )


def _fit(trainer: "InterruptibleTorchTrainer", board, spec: TrainSpec, run_dir: storage.Location, console: Console, show_progress: bool):
    """Runs the trainer with the live display; returns (Ray's result, the board's state)."""
    # Signal handlers exist only in the main thread (a sweep or a test may train in another).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigint = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        with ProgressDisplay(board, spec.optim.epochs, console, enabled=show_progress):
            result = trainer.fit()
        board_state = ray.get(board.read.remote())
    except ray.train.TrainingFailedError as exc:
        if trainer.interrupted:
            raise TrainingInterrupted(str(run_dir)) from None
        raise TrainingError(f"training failed: {_root_cause(exc)}") from None
    except (KeyboardInterrupt, ray.exceptions.RayError):
        if trainer.interrupted:
            raise TrainingInterrupted(str(run_dir)) from None
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_sigint)
    if trainer.interrupted:
        raise TrainingInterrupted(str(run_dir))
    if board_state["failure"]:
        raise TrainingError(board_state["failure"])
    if result.checkpoint is None:
        raise TrainingError("training finished without a checkpoint")
    return result, board_state


def _outcome(spec: TrainSpec, result, board_state: dict, run_dir: storage.Location, tracked: TrackedRun) -> RunResult:
    """Saves the final model, publishes it to MLflow and summarises the run."""
    metrics = dict(result.metrics or {})
    with result.checkpoint.as_directory() as directory:
        state = read_state(directory)
        model = VAE(ModelConfig.from_dict(state["model_config"]))
        load_checkpoint(directory, model)
    model_dir = run_dir.join("model")
    # Written locally (a temporary directory for S3, uploaded when the block ends).
    with storage.writing_dir(model_dir) as local_model_dir:
        save_model(local_model_dir, model, extra={"spec": spec.model_dump(mode="json"), "metrics": metrics})
        published = tracked.complete(spec, model, local_model_dir, metrics.get("val_kl_per_dim"))
    return RunResult(
        run_dir=run_dir.uri,
        model_dir=model_dir.uri,
        checkpoint=run_dir.at(result.checkpoint.path).uri,
        epochs_completed=int(metrics.get("epoch", -1)) + 1,
        metrics=metrics,
        history=board_state["epochs"],
        mlflow_run_id=tracked.run_id,
        model_uri=published.registry_uri or published.model_uri,
        first_step_at=board_state["first_step_at"] or 0.0,
    )


def _root_cause(exc: BaseException) -> str:
    """The innermost worker error as one line (Ray wraps it a few times)."""
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip().splitlines()
    return text[-1] if text else seen.__class__.__name__
