"""The Ray Train adapter: fits one spec on a TorchTrainer (or, for one worker, a single Ray task:
one_worker.py) and hands back the trained model.

What a run *is* (its directory, its MLflow run, its outcome) belongs to `vae_service.jobs`; this
module only knows how to get it trained on Ray. Embedded default: a local Ray started for the
process. With RAY_ADDRESS set, the run joins that cluster instead. Ray Train writes its
checkpoints (pickle-free, see core.checkpoint) as `checkpoint_*/` under the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import ray
import ray.train
from rich.console import Console

from vae_service import storage
from vae_service.cluster import ensure_ray, live_nodes, on_this_node
from vae_service.core.checkpoint import STATE_FILE, load_checkpoint, reached, read_state
from vae_service.core.errors import BadInput, Interrupted, JobFailed
from vae_service.core.interrupt import HARD_STOP_AFTER_S, Interrupt
from vae_service.core.model import VAE, ModelConfig
from vae_service.core.resources import runs_as_one_task, shortfall
from vae_service.core.spec import ResourcesSpec, TrainSpec
from vae_service.environment import runtime_env_vars, sealed_secrets
from vae_service.sources.prepare import STREAMING, Prepared
from vae_service.training import one_worker
from vae_service.training.progress import ProgressBoard, ProgressDisplay, ProgressMode
from vae_service.training.ray_internals import AbortableTorchTrainer
from vae_service.training.worker import train_loop_per_worker

# What `fit`'s callbacks may be, besides Ray Train's internal ones: Ray Train's user callbacks (a
# one-worker run calls their `after_report` in the caller's thread: one_worker.run).
UserCallback = ray.train.UserCallback


@dataclass
class Fitted:
    """What training produced: the final model and the metrics of its last epoch."""

    model: VAE
    metrics: dict
    checkpoint: str  # URI of the checkpoint the model came from
    history: list[dict] = field(default_factory=list)  # every epoch's metrics, as rank 0 reported them
    nodes: list[str] = field(default_factory=list)  # the host of each rank, by rank
    first_step_at: float = 0.0  # unix time of the first training step (0: none was seen)


def check_fits(resources: ResourcesSpec) -> None:
    """Refuses (bad input) a run the cluster can never hold at once: Ray Train's controller
    would otherwise time out starting its workers and retry forever, silently."""
    ensure_ray()
    problem = shortfall(resources, live_nodes())
    if problem:
        raise BadInput(problem)


def latest_checkpoint(run_dir: storage.Location) -> Optional[storage.Location]:
    """The furthest checkpoint under a run directory (local or S3), if any: the highest epoch,
    and of those, the most steps into the next (a run stopped part-way through an epoch)."""
    found = []
    for checkpoint in storage.list_checkpoints(run_dir):
        state_file = checkpoint.join(STATE_FILE)
        if storage.exists(state_file):  # else a checkpoint cut off while it was being written
            found.append((reached(storage.read_json(state_file)), checkpoint))
    return max(found, key=lambda item: item[0])[1] if found else None


def fit(
    spec: TrainSpec,
    run_dir: storage.Location,
    mlflow_run_id: str,
    data: Prepared,
    *,
    interrupt: Interrupt,
    resume: bool = False,
    console: Optional[Console] = None,
    progress: ProgressMode = "bar",
    callbacks: tuple = (),
) -> Fitted:
    """Trains `spec` on `data` into `run_dir` (continuing from its latest checkpoint when `resume`);
    rank 0 logs each epoch to the MLflow run `mlflow_run_id`. Raises JobFailed or Interrupted.

    Streamed data goes to Ray Train as datasets: the train split is split across the workers
    (equal shares, so every rank runs the same number of steps); rank 0 reads validation and test whole.

    A sweep trial passes Ray Train `callbacks` (its report to Tune)."""
    console = console or Console(stderr=True)
    resume_from = latest_checkpoint(run_dir) if resume else None
    if resume and resume_from is None:
        console.print(f"[yellow]No checkpoint in {run_dir} yet: starting from epoch 1.")
    elif resume_from is not None:  # a preempted queued job's log says what it continues from
        epochs_done, steps = reached(storage.read_json(resume_from.join(STATE_FILE)))
        into = f", and {steps} steps of epoch {epochs_done + 2}" if steps else ""
        console.print(f"resuming from {resume_from.name} (epoch {epochs_done + 1} of {spec.optim.epochs} done{into})", markup=False,
                      soft_wrap=True)  # one line, even in a job's log
    ensure_ray()
    board = ProgressBoard.options(scheduling_strategy=on_this_node()).remote()
    interrupt.on_request(lambda: board.request_stop.remote())  # the workers stop at their next step, checkpointed
    # Streamed data is never stopped part-way (worker.py): such a run is stopped hard at once.
    stop_grace_s = 0.0 if data.pipeline == STREAMING else HARD_STOP_AFTER_S
    config = {
        "spec": spec.model_dump(mode="json"),
        "progress_board": board,
        "resume_from": resume_from.uri if resume_from else None,
        "mlflow_run_id": mlflow_run_id,
        # The driver's settings, applied by each worker while it trains (worker.driver_settings): the
        # plain ones here, the credentials through the object store (never in what Ray logs). No
        # runtime environment: that costs a round trip to Ray's agent and processes of their own.
        "settings": runtime_env_vars(),
        "secrets": sealed_secrets(),
        "data": {
            "pipeline": data.pipeline,
            "preprocessing": data.preprocessing.to_dict(),
            "steps_per_epoch": data.steps_per_epoch(spec),
            # your own data read on the driver, handed to every worker through the object store
            "in_memory": ray.put(data.in_memory) if data.in_memory is not None else None,
        },
    }
    try:
        if runs_as_one_task(spec.resources):
            def train() -> tuple[Optional[ray.train.Checkpoint], dict]:
                return one_worker.run(spec, config, run_dir, data.streams or {}, interrupt, stop_grace_s,
                                      callbacks)
        else:
            def train() -> tuple[Optional[ray.train.Checkpoint], dict]:
                result = _trainer(spec, config, run_dir, data, interrupt, stop_grace_s, callbacks).fit()
                return result.checkpoint, result.metrics
        (checkpoint, metrics), board_state = _run(train, board, spec, run_dir, interrupt, console, progress)
    finally:
        ray.kill(board)
    with checkpoint.as_directory() as directory:
        state = read_state(directory)
        model = VAE(ModelConfig.from_dict(state["model_config"]))
        load_checkpoint(directory, model)
    return Fitted(
        model=model,
        metrics=dict(metrics or {}),
        checkpoint=run_dir.at(checkpoint.path).uri,
        history=board_state["epochs"],
        first_step_at=board_state["first_step_at"] or 0.0,
        nodes=board_state["nodes"],
    )


def _trainer(spec: TrainSpec, config: dict, run_dir: storage.Location, data: Prepared, interrupt: Interrupt,
             stop_grace_s: float, callbacks: tuple) -> AbortableTorchTrainer:
    """Ray Train's TorchTrainer for a run of several workers (DDP)."""
    return AbortableTorchTrainer(
        train_loop_per_worker,
        interrupt=interrupt,
        stop_grace_s=stop_grace_s,
        train_loop_config=config,
        datasets=data.streams or None,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec.resources.num_workers,
            use_gpu=spec.resources.use_gpu,
            resources_per_worker={"CPU": spec.resources.cpus_per_worker, "GPU": spec.resources.gpus},
            placement_strategy=spec.resources.placement.upper(),
        ),
        run_config=ray.train.RunConfig(
            name=run_dir.name,
            storage_path=run_dir.parent.path,  # for S3: bucket/prefix, on the filesystem below
            storage_filesystem=None if run_dir.is_local else run_dir.filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=spec.storage.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=spec.storage.max_failures),
            callbacks=list(callbacks),
        ),
    )


def _run(train: Callable[[], tuple[Optional[ray.train.Checkpoint], dict]], board, spec: TrainSpec,
         run_dir: storage.Location, interrupt: Interrupt, console: Console, progress: ProgressMode):
    """Trains with the live display; returns ((the last checkpoint, the last metrics), the board's state)."""
    try:
        with ProgressDisplay(board, spec.optim.epochs, console, progress):
            checkpoint, metrics = train()
        board_state = ray.get(board.read.remote())
    except (ray.train.TrainingFailedError, ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError) as exc:
        if interrupt.requested:
            raise Interrupted(run_dir.uri) from None
        cause = _root_cause(exc)
        if storage.is_storage_failure(cause):  # S3 went away while Ray Train was checkpointing
            raise JobFailed(f"storage {run_dir.uri} at {run_dir.endpoint} failed while checkpointing: "
                            f"{storage.reason(cause)}") from None
        raise JobFailed(f"training failed: {cause}") from None
    except (KeyboardInterrupt, ray.exceptions.RayError):
        if interrupt.requested:
            raise Interrupted(run_dir.uri) from None
        raise
    if interrupt.requested:
        raise Interrupted(run_dir.uri)
    if board_state["failure"]:
        raise JobFailed(board_state["failure"])
    if checkpoint is None:
        raise JobFailed("training finished without a checkpoint")
    return (checkpoint, metrics), board_state


def _root_cause(exc: BaseException) -> str:
    """The innermost worker error as one line (Ray wraps it a few times)."""
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    text = str(seen).strip().splitlines()
    return text[-1] if text else seen.__class__.__name__
