"""What each training worker runs: ordinary PyTorch around the core loop.

Whoever runs the worker (Ray Train's worker group, or a single-worker job's Ray task,
`training/one_worker.py`) is its `Session`: it says the worker's rank and device, prepares the
model (DDP), hands back the checkpoint to continue from and persists what rank 0 reports. Data in
memory is sharded by us: every rank takes a disjoint 1/N of a seeded permutation. Streamed data is
sharded by Ray Data (`dataset_shard`): equal shares, read chunk by chunk, each chunk shuffled and
cut into batches.
"""

from __future__ import annotations

import contextlib
import math
import socket
import tempfile
import time
from typing import Any, Iterator, Optional, Protocol

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from vae_service.core import evaluation, from_spec
from vae_service.core import metrics as M
from vae_service.core.checkpoint import (PART_EPOCH, load_checkpoint, read_state, reached, restore_rng_state, rng_state,
                                         save_checkpoint)
from vae_service.core.data import Dataset, epoch_shard
from vae_service.core.loop import EpochStats, NonFiniteLoss, evaluate_batches, train_batches
from vae_service.core.model import VAE, unwrap
from vae_service.core.preprocessing import Preprocessing
from vae_service.core.spec import TrainSpec
from vae_service.environment import applied
from vae_service.sources.holdout import model_test_split
from vae_service.training.checkpoints import checkpoint_from_uri
from vae_service.tracking.epoch_logger import EpochLogger

PROGRESS_INTERVAL_S = 0.5
STOP_POLL_S = 0.2  # how often rank 0 asks the driver whether to stop (the answer is never waited for)
SHARD_SAMPLE = 65_536  # item hashes per rank and epoch compared across ranks (streamed data)
SHUFFLE_CHUNK = 4096  # streamed items fetched at once and shuffled among themselves
EVAL_BATCH = 1000


class Session(Protocol):
    """What the worker loop asks of whoever runs it."""

    rank: int
    world_size: int
    device: torch.device

    def restored(self) -> Optional[ray.train.Checkpoint]:
        """The checkpoint this run last reported, after a restart (None on a first start)."""

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        """One epoch's metrics, with rank 0's checkpoint (a local directory to persist)."""

    def dataset_shard(self, name: str) -> Any:
        """This rank's iterator over the named Ray Dataset (streamed data)."""


class RayTrainSession:
    """A worker of Ray Train's worker group."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def restored(self) -> Optional[ray.train.Checkpoint]:
        return ray.train.get_checkpoint()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict, checkpoint_dir: Optional[str] = None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)

    def dataset_shard(self, name: str) -> Any:
        return ray.train.get_dataset_shard(name)


def seed_everything(seed: Optional[int], epoch: int, rank: int) -> None:
    """Per-epoch, per-rank seeding: a resumed run draws the same noise as an uninterrupted one."""
    if seed is not None:
        torch.manual_seed((seed * 1_000_003 + epoch) * 1024 + rank)


class ProgressReporter:
    """Rank 0 pushes step progress to the driver's progress actor at most every 0.5 s."""

    def __init__(self, board: Any, rank: int, epoch: int, batch_images: int, world_size: int):
        self.board = board if rank == 0 else None
        self.epoch = epoch
        self.images_per_step = batch_images * world_size
        self.started = time.perf_counter()
        self.last_push = 0.0

    def __call__(self, step: int, steps: int, loss: float) -> None:
        now = time.perf_counter()
        if self.board is None or (now - self.last_push < PROGRESS_INTERVAL_S and step != steps):
            return
        self.last_push = now
        rate = step * self.images_per_step / max(now - self.started, 1e-9)
        self.board.update.remote({M.EPOCH: self.epoch, "step": step, "steps": steps, "loss": loss, M.IMAGES_PER_S: rate})


class StopRequests:
    """Whether the driver asked the run to stop (Ctrl-C, or the queue cancelling or preempting
    the job; the progress board holds the request), as rank 0 knows it: it asks the board at most
    every STOP_POLL_S and never waits for the answer. The training loop asks at its sync points,
    where DDP's ranks agree on it (core/loop.py), so they stop together at the same step."""

    def __init__(self, board: Any, rank: int):
        self.board = board if rank == 0 else None
        self.requested = False
        self._pending: Optional[ray.ObjectRef] = None
        self._asked_at = 0.0

    def __call__(self) -> bool:
        if self.board is not None and not self.requested:
            if self._pending is not None and ray.wait([self._pending], timeout=0)[0]:
                self.requested, self._pending = bool(ray.get(self._pending)), None
            if self._pending is None and time.monotonic() - self._asked_at >= STOP_POLL_S:
                self._pending, self._asked_at = self.board.stop_requested.remote(), time.monotonic()
        return self.requested


def _over_all_ranks(stats: EpochStats, world_size: int, device: torch.device) -> EpochStats:
    """The epoch's training sums over every rank's images (not rank 0's share alone); the
    throughput is all of them over rank 0's time."""
    if world_size == 1:
        return stats
    sums = torch.tensor([stats.images, stats.loss_sum, stats.recon_sum, stats.kl_sum], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    images, loss_sum, recon_sum, kl_sum = sums.tolist()
    return EpochStats(int(images), loss_sum, recon_sum, kl_sum, stats.seconds)


def _rank_max(world_size: int):
    if world_size == 1:
        return None

    def largest(tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    return largest


def _gather_check(world_size: int, shard: torch.Tensor, model: torch.nn.Module) -> dict:
    """DDP integrity, checked every epoch: shards disjoint and weights identical on all ranks."""
    if world_size == 1:
        return {M.SHARD_OVERLAP: 0, M.RANKS_IN_SYNC: True}
    shards = [torch.empty_like(shard) for _ in range(world_size)]
    dist.all_gather(shards, shard.cpu() if shard.device.type == "cpu" else shard)
    everything = torch.cat(shards)
    overlap = len(everything) - len(torch.unique(everything))
    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
    digest = torch.stack([flat.sum(), (flat * torch.arange(1, len(flat) + 1, dtype=torch.float64, device=flat.device)).sum()])
    digests = [torch.empty_like(digest) for _ in range(world_size)]
    dist.all_gather(digests, digest)
    in_sync = all(torch.equal(digests[0], other) for other in digests[1:])
    return {M.SHARD_OVERLAP: int(overlap), M.RANKS_IN_SYNC: bool(in_sync)}


def train_loop_per_worker(config: dict) -> None:
    """The function Ray Train runs on each worker of its group."""
    with driver_settings(config):
        train_loop(config, RayTrainSession())


def driver_settings(config: dict) -> contextlib.AbstractContextManager:
    """The driver's settings and credentials (runner.fit's config) in this process's environment
    for a worker's time, taken back after: the process may train the next run too (the
    single-worker task's is reused). Entered first: storage and MLflow read them."""
    return applied({**config["settings"], **ray.get(config["secrets"])})


def train_loop(config: dict, session: Session) -> None:
    """One worker's training (inside driver_settings)."""
    spec = TrainSpec.model_validate(config["spec"])
    rank, world_size, device = session.rank, session.world_size, session.device
    torch.set_num_threads(spec.resources.torch_threads)
    seed = spec.optim.seed
    board = config.get("progress_board")
    if board is not None:  # which machine each rank runs on (a multi-node run should say so)
        board.node.remote(rank, f"{socket.gethostname()} ({ray.util.get_node_ip_address()})")

    source = config["data"]
    preprocessing = Preprocessing.from_dict(source["preprocessing"])
    data = _in_memory(spec, source, device)  # None: streamed
    if seed is not None:
        torch.manual_seed(seed)  # identical initial weights on every rank (DDP also broadcasts)
    model = VAE(from_spec.model_config(spec, preprocessing.input_shape)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.optim.lr_at(0.0))  # the loop sets it each step

    start_epoch, part = 0, None
    checkpoint = _latest_of(session.restored(), _explicit_resume(config))
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory, model, optimizer, device)
        start_epoch, part = state["epoch"] + 1, state.get(PART_EPOCH)  # part: the next epoch was stopped part-way

    if checkpoint is not None and start_epoch >= spec.optim.epochs:
        # Nothing left to train (stopped after its last checkpoint, before the model was
        # published): hand that checkpoint back so the driver can finish the run.
        if rank == 0:
            with checkpoint.as_directory() as directory:
                session.report(state["metrics"], directory)
        else:
            session.report(state["metrics"])
        return

    model = session.prepare_model(model)
    objective = from_spec.objective(spec)
    per_worker_batch = max(1, spec.optim.batch_size // world_size)
    rank_max = _rank_max(world_size)
    epoch_logger = EpochLogger(config["mlflow_run_id"]) if rank == 0 and config.get("mlflow_run_id") else None
    stop_requested = StopRequests(board, rank) if board is not None else None

    for epoch in range(start_epoch, spec.optim.epochs):
        seed_everything(seed if seed is not None else int(time.time()), epoch, rank)
        done = None  # the part of this epoch a stopped run already trained
        if part is not None and part["epoch"] == epoch and len(part["ranks"]) == world_size and data is not None:
            done = _continued(part, rank, device)
        reporter = ProgressReporter(board, rank, epoch, per_worker_batch, world_size)
        if data is not None:
            shard = epoch_shard(len(data.train), epoch, rank, world_size, seed or 0).to(device)
            first = done.steps * per_worker_batch if done else 0  # the same order; the steps done are skipped
            batches = (data.train.images[shard[i : i + per_worker_batch]] for i in range(first, len(shard), per_worker_batch))
            steps = math.ceil(len(shard) / per_worker_batch)
        else:
            seen: list[torch.Tensor] = []  # item hashes: the shard check compares them across ranks
            batches = _streamed(session.dataset_shard("train"), per_worker_batch, (seed or 0) * 100_003 + epoch, seen)
            steps = source["steps_per_epoch"]
        try:
            stats = train_batches(
                model, optimizer, batches, steps, objective, epoch,
                binarize=spec.data.binarize, on_step=reporter, rank_max=rank_max, done=done,
                precision=spec.optim.precision, compile=spec.optim.compile, lr_at=spec.optim.lr_at,
                # A stream's order is not reproducible, so a streamed epoch is not stopped part-way:
                # the driver's stop then ends the run, which continues from its last whole epoch.
                should_stop=stop_requested if data is not None else None,
            )
        except NonFiniteLoss as exc:
            # Deterministic: a retry would fail the same way. Every rank took the same read-back,
            # so all stop here together; rank 0 tells the driver why.
            if rank == 0 and board is not None:
                ray.get(board.fail.remote(str(exc)))
            return
        if stats.stopped:
            _report_part_epoch(session, model, optimizer, spec, epoch, stats)
            return
        train = _over_all_ranks(stats, world_size, device).as_metrics()
        if data is None:
            shard = torch.cat(seen)[:SHARD_SAMPLE] if seen else torch.zeros(0, dtype=torch.int64, device=device)
        checks = _gather_check(world_size, shard, model)
        if rank == 0:
            last = epoch == spec.optim.epochs - 1
            val = evaluate_batches(model, _items(session, data, "val"), binarize=spec.data.binarize)
            test = evaluate_batches(model, _items(session, data, "test"), binarize=spec.data.binarize) if last else None
            metrics = M.epoch_record(epoch, train, checks, val, test)
            requested = spec.evaluation.metrics
            metrics.update(M.evaluation_entries(requested, _final_evaluation(session, model, spec, data, preprocessing) if last and requested else None))
            if board is not None:
                board.finish_epoch.remote(metrics)
            if epoch_logger is not None:
                epoch_logger.log(metrics)
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, model, optimizer, {"epoch": epoch, "metrics": metrics, "spec": spec.model_dump(mode="json")})
                session.report(metrics, tmp)
        else:
            session.report(M.epoch_record(epoch, train, checks))


def _report_part_epoch(session: Session, model: torch.nn.Module, optimizer: torch.optim.Optimizer, spec: TrainSpec,
                       epoch: int, stats: EpochStats) -> None:
    """The checkpoint of a run stopped part-way through `epoch`: the weights and optimiser after
    its last step, and what continuing needs: the steps done and, for every rank, its sums so far
    and its random state. The data order follows from the seed and the epoch."""
    mine = {"images": stats.images, "sums": [stats.loss_sum, stats.recon_sum, stats.kl_sum], "rng": rng_state(session.device)}
    ranks = [mine]
    if session.world_size > 1:
        ranks = [None] * session.world_size
        dist.all_gather_object(ranks, mine)  # between the job's own ranks, like Ray's task arguments
    part = {"epoch": epoch, "steps": stats.steps, "seconds": stats.seconds, "ranks": ranks}
    if session.rank != 0:
        session.report({M.EPOCH: epoch - 1})
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, model, optimizer, {"epoch": epoch - 1, PART_EPOCH: part, "spec": spec.model_dump(mode="json")})
        session.report({M.EPOCH: epoch - 1}, tmp)


def _continued(part: dict, rank: int, device: torch.device) -> EpochStats:
    """This rank's share of an epoch stopped part-way, its random state restored."""
    mine = part["ranks"][rank]
    restore_rng_state(mine["rng"], device)
    loss_sum, recon_sum, kl_sum = mine["sums"]
    return EpochStats(images=mine["images"], loss_sum=loss_sum, recon_sum=recon_sum, kl_sum=kl_sum,
                      seconds=part["seconds"], steps=part["steps"])


def _in_memory(spec: TrainSpec, source: dict, device: torch.device) -> Optional[Dataset]:
    """The data as tensors on this worker's device: your own data read by the driver, a named
    data set loaded here; None when it is streamed."""
    if source["pipeline"] == "streaming":
        return None
    if source["in_memory"] is not None:
        return ray.get(source["in_memory"]).to(device)
    return from_spec.training_data(spec, device)


def _streamed(shard, batch_size: int, shuffle_seed: int, seen: list) -> Iterator[torch.Tensor]:
    """This rank's batches of its Ray Data shard, remembering the first items' hashes in `seen`.

    Ray Data hands over chunks of SHUFFLE_CHUNK items (few, large transfers); each chunk, with
    the previous one's remainder, is permuted here (one torch permutation instead of Ray Data's
    row-wise shuffle buffer) and cut into whole batches. The shards hold equal numbers
    of items, so every rank takes the same number of steps (the last remainder is dropped).
    """
    generator = torch.Generator().manual_seed(shuffle_seed)
    carry_x = carry_h = None
    remembered = 0
    chunk_size = max(SHUFFLE_CHUNK, 16 * batch_size)
    for chunk in shard.iter_torch_batches(batch_size=chunk_size, prefetch_batches=2):
        x, h = chunk["x"], chunk["h"]
        if carry_x is not None:
            x, h = torch.cat([carry_x, x]), torch.cat([carry_h, h])
        order = torch.randperm(len(x), generator=generator).to(x.device)
        whole = len(x) // batch_size * batch_size
        for start in range(0, whole, batch_size):
            picked = order[start : start + batch_size]
            if remembered < SHARD_SAMPLE:
                seen.append(h[picked])
                remembered += len(picked)
            yield x[picked]
        carry_x, carry_h = x[order[whole:]], h[order[whole:]]


def _items(session: Session, data: Optional[Dataset], split: str) -> Iterator[torch.Tensor]:
    """Every item of the validation or test split, in batches: from memory, or read whole from
    its stream (these splits are not sharded)."""
    if data is not None:
        images = getattr(data, split).images
        yield from (images[i : i + EVAL_BATCH] for i in range(0, len(images), EVAL_BATCH))
        return
    for batch in session.dataset_shard(split).iter_torch_batches(batch_size=EVAL_BATCH):
        yield batch["x"]


def _final_evaluation(session: Session, model: torch.nn.Module, spec: TrainSpec, data: Optional[Dataset],
                      preprocessing: Preprocessing) -> dict:
    """The spec's `evaluation` on the test split (and on the data's factors), as `vae eval` does:
    the whole split held in memory, at most FIGURE_ITEMS of a stream (`sources.holdout`)."""
    e = spec.evaluation
    test = (model_test_split(spec, loaded=data) if data is not None
            else model_test_split(spec, stream=session.dataset_shard("test"), preprocessing=preprocessing))
    return evaluation.evaluate(unwrap(model), e.metrics, test_images=test.images, binarize=spec.data.binarize,
                               factors=from_spec.factor_data(spec), nll_samples=e.nll_samples, points=e.points,
                               seed=spec.optim.seed or 0)


def _checkpoint_progress(checkpoint: ray.train.Checkpoint) -> tuple[int, int]:
    with checkpoint.as_directory() as directory:
        return reached(read_state(directory))


def _latest_of(*checkpoints: Optional[ray.train.Checkpoint]) -> Optional[ray.train.Checkpoint]:
    """Ray's restored checkpoint (after a worker failure, or from the run's snapshot) and the
    one named by --resume can differ when a run was aborted mid-report: take the newer."""
    present = [c for c in checkpoints if c is not None]
    return max(present, key=_checkpoint_progress) if present else None


def _explicit_resume(config: dict) -> Optional[ray.train.Checkpoint]:
    return checkpoint_from_uri(config.get("resume_from"))  # local path or s3://
