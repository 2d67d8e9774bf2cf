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


StepCallback = Callable[[int, int, float], None]  # (step, steps_in_epoch, running loss)
RankMean = Callable[[torch.Tensor], torch.Tensor]  # mean of a tensor across ranks


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
    rank_mean: Optional[RankMean] = None,
) -> EpochStats:
    """One pass over `images[indices]` (a tensor in memory) in batches of `batch_size`."""
    steps = math.ceil(len(indices) / batch_size)
    batches = (images[indices[step * batch_size : (step + 1) * batch_size]] for step in range(steps))
    return train_batches(model, optimizer, batches, steps, objective, epoch, binarize, generator, on_step, rank_mean)


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
    rank_mean: Optional[RankMean] = None,
    *,
    done: Optional[EpochStats] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> EpochStats:
    """One epoch over `batches` (index slices of a tensor, or a Ray Data stream); `steps` is how
    many to expect (for progress and the warm-up schedule; a stream's count is an estimate).

    `rank_mean` (a mean across DDP ranks) makes every rank see the same loss, so all ranks
    stop together on a non-finite loss instead of leaving their peers waiting in a collective.

    `should_stop` is asked after every step: when it says yes, the epoch ends there (`stopped`,
    with `steps` done). `done` is such an epoch's stats, to carry on from: `batches` then starts
    at its next step, and the sums go on from its own, so the finished epoch's numbers are
    those of an epoch never stopped.
    """
    model.train()
    stats = replace(done, stopped=False) if done else EpochStats()
    sums = None  # running sums stay on the device; reading them back every step would sync a GPU
    start = time.perf_counter()
    for step, batch in enumerate(batches, start=stats.steps):
        x = batch_inputs(batch, binarize, generator)
        progress = epoch + min(step / max(steps, 1), 1.0)
        terms = compute_loss(model, x, objective, progress)
        shared_loss = terms.loss.detach().reshape(1)
        if rank_mean is not None:
            shared_loss = rank_mean(shared_loss.clone())
        if not torch.isfinite(shared_loss).all():
            raise NonFiniteLoss(epoch, step)
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        with torch.no_grad():
            n = x.shape[0]
            batch_sums = torch.stack([terms.loss.detach() * n, terms.recon.sum(), terms.kl.sum()]).double()
            if sums is None:  # the sums so far (a stopped epoch's, carried on; else zeros), on the batch's device
                sums = torch.tensor([stats.loss_sum, stats.recon_sum, stats.kl_sum], dtype=torch.float64, device=batch_sums.device)
            sums = sums + batch_sums
        stats.images += x.shape[0]
        stats.steps = step + 1
        if on_step is not None:
            on_step(step + 1, max(steps, step + 1), float(shared_loss[0]))
        if should_stop is not None and should_stop():
            stats.stopped = True
            break
    stats.seconds += time.perf_counter() - start
    if sums is not None:
        stats.loss_sum, stats.recon_sum, stats.kl_sum = (float(v) for v in sums.tolist())
    return stats


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
