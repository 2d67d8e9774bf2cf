"""The training epoch and the evaluation pass, as ordinary PyTorch functions.

Ray Train's worker, the benchmark's plain loop and the tests all call these same functions,
so "Ray vs plain PyTorch" compares exactly the same arithmetic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Optional

import torch

from vae_service.core import metrics as M
from vae_service.core.data import batch_inputs
from vae_service.core.model import unwrap
from vae_service.core.objective import Objective, compute_loss
from vae_service.core.precision import compiled

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016): Cov_x(E_q[z_j]) > 0.01


class NonFiniteLoss(Exception):
    def __init__(self, epoch: int, step: int):
        self.epoch, self.step = epoch, step
        super().__init__(f"non-finite loss at epoch {epoch} step {step}")


@dataclass
class EpochStats:
    images: int = 0
    loss_sum: float = 0.0
    recon_sum: float = 0.0
    kl_sum: float = 0.0
    seconds: float = 0.0
    steps: int = 0  # steps done in the epoch
    stopped: bool = False  # the epoch ended part-way, on request (train_batches' should_stop)

    def as_metrics(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {
            M.TRAIN_LOSS: self.loss_sum / n,
            M.TRAIN_RECON: self.recon_sum / n,
            M.TRAIN_KL: self.kl_sum / n,
            M.TRAIN_NEG_ELBO: (self.recon_sum + self.kl_sum) / n,
            M.IMAGES_PER_S: self.images / self.seconds if self.seconds > 0 else 0.0,
            M.TRAIN_ITEMS: self.images,
        }


StepCallback = Callable[[int, int, float], None]  # (step, steps_in_epoch, the last step's loss)
RankMax = Callable[[torch.Tensor], torch.Tensor]  # the element-wise max of a tensor across ranks

SYNC_S = 0.25  # about this long between the loop's reads from the device (a GPU step never waits on the host)
_NO_STEP = 2.0**52  # "no non-finite step yet", larger than any step, in the read-back's max-encoding


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    indices: torch.Tensor,
    batch_size: int,
    objective: Objective,
    epoch: int,
    binarize: str = "none",
    generator: Optional[torch.Generator] = None,
    on_step: Optional[StepCallback] = None,
    rank_max: Optional[RankMax] = None,
    **options,
) -> EpochStats:
    """One pass over `images[indices]` (a tensor in memory) in batches of `batch_size`;
    `options` are train_batches' (precision, compile, lr_at, sync_s)."""
    steps = math.ceil(len(indices) / batch_size)
    batches = (images[indices[step * batch_size : (step + 1) * batch_size]] for step in range(steps))
    return train_batches(model, optimizer, batches, steps, objective, epoch, binarize, generator, on_step, rank_max, **options)


def train_batches(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[torch.Tensor],
    steps: int,
    objective: Objective,
    epoch: int,
    binarize: str = "none",
    generator: Optional[torch.Generator] = None,
    on_step: Optional[StepCallback] = None,
    rank_max: Optional[RankMax] = None,
    *,
    done: Optional[EpochStats] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    precision: str = "fp32",
    compile: bool = False,
    lr_at: Optional[Callable[[float], float]] = None,
    sync_s: float = SYNC_S,
) -> EpochStats:
    """One epoch over `batches` (index slices of a tensor, or a Ray Data stream); `steps` is how
    many to expect (for progress and the warm-up schedule; a stream's count is an estimate).

    The steps never wait on the host: the loss, its sums and whether it stayed finite stay on
    the device, and the loop reads them back at sync points only, about every `sync_s` (the
    first step is one, so progress starts at once). At a sync point, with DDP one `rank_max`
    (an all-reduce) makes every rank take the same decisions at the same step:
    - a non-finite loss on any rank since the last sync stops every rank together, naming the
      first step it happened (the steps after it ran on NaN weights; nothing of them is kept);
    - `should_stop` (this rank's view of a stop request; rank 0 asks the driver) ends the epoch
      there (`stopped`, with `steps` done);
    - `on_step` gets the progress, and the next sync point is set from the steps' pace.
    `done` is a stopped epoch's stats, to carry on from: `batches` then starts at its next step,
    and the sums go on from its own, so the finished epoch's numbers are those of an epoch never
    stopped. `precision` and `compile`: how the step computes (core/precision.py). `lr_at`:
    the learning rate after a (fractional) number of epochs, set before each step.
    """
    model.train()
    stats = replace(done, stopped=False) if done else EpochStats()
    loss_of = compiled(compute_loss) if compile else compute_loss
    sums = first_bad = None  # on the device: [loss·n, recon, kl] so far, and the first non-finite step (−1: none)
    start = time.perf_counter()
    next_sync, synced_at, synced_step = stats.steps, start, stats.steps
    for step, batch in enumerate(batches, start=stats.steps):
        x = batch_inputs(batch, binarize, generator)
        progress = epoch + min(step / max(steps, 1), 1.0)
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(progress)
        terms = loss_of(model, x, objective, progress, precision)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss = terms.loss.detach()
            if sums is None:  # the sums so far (a stopped epoch's, carried on; else zeros), on the batch's device
                sums = torch.tensor([stats.loss_sum, stats.recon_sum, stats.kl_sum], dtype=torch.float64, device=loss.device)
                first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
            sums += torch.stack([loss * x.shape[0], terms.recon.sum(), terms.kl.sum()]).double()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
        stats.images += x.shape[0]
        stats.steps = step + 1
        if step < next_sync:
            continue
        now = time.perf_counter()
        pace = (step + 1 - synced_step) / max(now - synced_at, 1e-6)
        bad, stop, every, last_loss = _read_back(first_bad, loss, bool(should_stop and should_stop()),
                                                 max(1, int(pace * sync_s)), rank_max)
        if bad is not None:
            raise NonFiniteLoss(epoch, bad)
        if on_step is not None:
            on_step(step + 1, max(steps, step + 1), last_loss)
        if stop:
            stats.stopped = True
            break
        next_sync, synced_at, synced_step = step + every, now, step + 1
    else:
        if first_bad is not None and step >= synced_step:  # the steps since the last sync point
            bad, _, _, last_loss = _read_back(first_bad, loss, False, 1, rank_max)
            if bad is not None:
                raise NonFiniteLoss(epoch, bad)
            if on_step is not None:
                on_step(step + 1, max(steps, step + 1), last_loss)
    stats.seconds += time.perf_counter() - start
    if sums is not None:
        stats.loss_sum, stats.recon_sum, stats.kl_sum = (float(v) for v in sums.tolist())
    return stats


def _read_back(first_bad: torch.Tensor, loss: torch.Tensor, stop: bool, every: int,
               rank_max: Optional[RankMax]) -> tuple[Optional[int], bool, int, float]:
    """The loop's one read from the device at a sync point, agreed across ranks by one max:
    (the first non-finite step on any rank or None, a stop asked on any rank, the steps to the
    next sync point (the most any rank proposes, so all agree), this rank's last loss)."""
    earliest = torch.where(first_bad >= 0, _NO_STEP - first_bad.double(), 0.0)  # max ↔ the earliest step
    shared = torch.cat([earliest.reshape(1), loss.new_tensor([float(stop), float(every)], dtype=torch.float64)])
    if rank_max is not None:
        shared = rank_max(shared)
    key, stop_any, next_every, last_loss = torch.cat([shared, loss.double().reshape(1)]).tolist()
    return (int(_NO_STEP - key) if key > 0 else None), stop_any > 0, max(1, int(next_every)), last_loss


def evaluate(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000, binarize: str = "none", generator: Optional[torch.Generator] = None) -> dict:
    """`evaluate_batches` over a tensor of items in memory."""
    batches = (images[start : start + batch_size] for start in range(0, len(images), batch_size))
    return evaluate_batches(model, batches, binarize, generator)


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable[torch.Tensor], binarize: str = "none",
                     generator: Optional[torch.Generator] = None) -> dict:
    """−ELBO, reconstruction, KL (total and per dimension) and active units, per item.

    Uses one posterior sample per item for the reconstruction term (an unbiased −ELBO).
    """
    vae = unwrap(model)
    vae.eval()
    recon_sum = kl_sum = 0.0
    kl_dims_sum = mu_sum = mu_sq_sum = None  # moments of μ, not every μ: a stream may be any length
    n = 0
    for batch in batches:
        x = batch_inputs(batch, binarize, generator)
        terms = compute_loss(vae, x, Objective(kind="vae"))
        recon_sum += float(terms.recon.sum())
        kl_sum += float(terms.kl.sum())
        dims = terms.kl_dims.sum(dim=0)
        kl_dims_sum = dims if kl_dims_sum is None else kl_dims_sum + dims
        mu = terms.mu.double()
        mu_sum = mu.sum(0) if mu_sum is None else mu_sum + mu.sum(0)
        mu_sq_sum = (mu**2).sum(0) if mu_sq_sum is None else mu_sq_sum + (mu**2).sum(0)
        n += len(x)
    activity = (mu_sq_sum / n - (mu_sum / n) ** 2) if n > 1 else torch.zeros(vae.config.latent_dim)
    n = max(n, 1)
    return {
        M.NEG_ELBO: (recon_sum + kl_sum) / n,
        M.RECON: recon_sum / n,
        M.KL: kl_sum / n,
        M.KL_PER_DIM: [float(v) / n for v in kl_dims_sum.cpu()] if kl_dims_sum is not None else [],
        M.ACTIVE_UNITS: int((activity > ACTIVE_UNIT_THRESHOLD).sum()),
    }
