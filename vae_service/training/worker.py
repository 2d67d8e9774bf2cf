"""What each Ray Train worker runs: ordinary PyTorch around the core loop.

Ray only prepares the model (DDP), tells each worker its rank, and persists what rank 0
reports. Data sharding is ours: every rank takes a disjoint 1/N of a seeded permutation.
"""

from __future__ import annotations

import socket
import tempfile
import time
from typing import Any, Optional

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from vae_service.core import evaluation, from_spec
from vae_service.core import metrics as M
from vae_service.core.checkpoint import load_checkpoint, read_state, save_checkpoint
from vae_service.core.data import epoch_shard
from vae_service.core.loop import EpochStats, NonFiniteLoss, evaluate, train_epoch
from vae_service.core.model import VAE, unwrap
from vae_service.core.spec import TrainSpec
from vae_service.storage import checkpoint_from_uri
from vae_service.tracking.epoch_logger import EpochLogger

PROGRESS_INTERVAL_S = 0.5


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


def _over_all_ranks(stats: EpochStats, world_size: int, device: torch.device) -> EpochStats:
    """The epoch's training sums over every rank's images (not rank 0's share alone); the
    throughput is all of them over rank 0's time."""
    if world_size == 1:
        return stats
    sums = torch.tensor([stats.images, stats.loss_sum, stats.recon_sum, stats.kl_sum], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    images, loss_sum, recon_sum, kl_sum = sums.tolist()
    return EpochStats(int(images), loss_sum, recon_sum, kl_sum, stats.seconds)


def _rank_mean(world_size: int):
    if world_size == 1:
        return None

    def mean(tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor / world_size

    return mean


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
    spec = TrainSpec.model_validate(config["spec"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(spec.resources.torch_threads)
    device = ray.train.torch.get_device()
    seed = spec.optim.seed
    board = config.get("progress_board")
    if board is not None:  # which machine each rank runs on (a multi-node run should say so)
        board.node.remote(rank, f"{socket.gethostname()} ({ray.util.get_node_ip_address()})")

    data = from_spec.training_data(spec, device)
    if seed is not None:
        torch.manual_seed(seed)  # identical initial weights on every rank (DDP also broadcasts)
    model = VAE(from_spec.model_config(spec, data.image_shape)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.optim.lr)

    start_epoch = 0
    checkpoint = _latest_of(ray.train.get_checkpoint(), _explicit_resume(config))
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory, model, optimizer, device)
        start_epoch = state["epoch"] + 1

    if checkpoint is not None and start_epoch >= spec.optim.epochs:
        # Nothing left to train (stopped after its last checkpoint, before the model was
        # published): hand that checkpoint back so the driver can finish the run.
        if rank == 0:
            with checkpoint.as_directory() as directory:
                ray.train.report(state["metrics"], checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(state["metrics"])
        return

    model = ray.train.torch.prepare_model(model)
    objective = from_spec.objective(spec)
    per_worker_batch = max(1, spec.optim.batch_size // world_size)
    rank_mean = _rank_mean(world_size)
    epoch_logger = EpochLogger(config["mlflow_run_id"]) if rank == 0 and config.get("mlflow_run_id") else None

    for epoch in range(start_epoch, spec.optim.epochs):
        seed_everything(seed if seed is not None else int(time.time()), epoch, rank)
        shard = epoch_shard(len(data.train), epoch, rank, world_size, seed or 0).to(device)
        reporter = ProgressReporter(board, rank, epoch, per_worker_batch, world_size)
        try:
            stats = train_epoch(
                model, optimizer, data.train.images, shard, per_worker_batch, objective, epoch,
                binarize=spec.data.binarize, on_step=reporter, rank_mean=rank_mean,
            )
        except NonFiniteLoss as exc:
            # Deterministic: a retry would fail the same way. Every rank saw the same shared
            # loss, so all stop here together; rank 0 tells the driver why.
            if rank == 0 and board is not None:
                ray.get(board.fail.remote(str(exc)))
            return
        train = _over_all_ranks(stats, world_size, device).as_metrics()
        checks = _gather_check(world_size, shard, model)
        if rank == 0:
            last = epoch == spec.optim.epochs - 1
            val = evaluate(model, data.val.images, binarize=spec.data.binarize)
            test = evaluate(model, data.test.images, binarize=spec.data.binarize) if last else None
            metrics = M.epoch_record(epoch, train, checks, val, test)
            requested = spec.evaluation.metrics
            metrics.update(M.evaluation_entries(requested, _final_evaluation(model, spec, data) if last and requested else None))
            if board is not None:
                board.finish_epoch.remote(metrics)
            if epoch_logger is not None:
                epoch_logger.log(metrics)
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, model, optimizer, {"epoch": epoch, "metrics": metrics, "spec": spec.model_dump(mode="json")})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(M.epoch_record(epoch, train, checks))


def _final_evaluation(model: torch.nn.Module, spec: TrainSpec, data) -> dict:
    """The spec's `evaluation` on the test split (and on the data's factors), as `vae eval` does."""
    e = spec.evaluation
    return evaluation.evaluate(unwrap(model), e.metrics, test_images=data.test.images, binarize=spec.data.binarize,
                               factors=from_spec.factor_data(spec), nll_samples=e.nll_samples, points=e.points,
                               seed=spec.optim.seed or 0)


def _checkpoint_epoch(checkpoint: ray.train.Checkpoint) -> int:
    with checkpoint.as_directory() as directory:
        return int(read_state(directory).get("epoch", -1))


def _latest_of(*checkpoints: Optional[ray.train.Checkpoint]) -> Optional[ray.train.Checkpoint]:
    """Ray's restored checkpoint (after a worker failure, or from the run's snapshot) and the
    one named by --resume can differ when a run was aborted mid-report: take the newer."""
    present = [c for c in checkpoints if c is not None]
    return max(present, key=_checkpoint_epoch) if present else None


def _explicit_resume(config: dict) -> Optional[ray.train.Checkpoint]:
    path = config.get("resume_from")
    return checkpoint_from_uri(path) if path else None  # local path or s3://
