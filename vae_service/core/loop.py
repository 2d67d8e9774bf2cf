"""The training epoch and the evaluation pass, as ordinary PyTorch functions.

Ray Train's worker, the benchmark's plain loop and the tests all call these same functions,
so "Ray vs plain PyTorch" compares exactly the same arithmetic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

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

    def as_metrics(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {
            M.TRAIN_LOSS: self.loss_sum / n,
            M.TRAIN_RECON: self.recon_sum / n,
            M.TRAIN_KL: self.kl_sum / n,
            M.TRAIN_NEG_ELBO: (self.recon_sum + self.kl_sum) / n,
            M.IMAGES_PER_S: self.images / self.seconds if self.seconds > 0 else 0.0,
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
    """One pass over `images[indices]` in batches of `batch_size`.

    `rank_mean` (a mean across DDP ranks) makes every rank see the same loss, so all ranks
    stop together on a non-finite loss instead of leaving their peers waiting in a collective.
    """
    model.train()
    stats = EpochStats()
    steps = math.ceil(len(indices) / batch_size)
    # Running sums stay on the device; reading them back every step would sync a GPU.
    sums = torch.zeros(3, dtype=torch.float64, device=images.device)
    start = time.perf_counter()
    for step in range(steps):
        batch = images[indices[step * batch_size : (step + 1) * batch_size]]
        x = batch_inputs(batch, binarize, generator)
        progress = epoch + step / steps
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
            sums += torch.stack([terms.loss.detach() * n, terms.recon.sum(), terms.kl.sum()]).double()
        stats.images += x.shape[0]
        if on_step is not None:
            on_step(step + 1, steps, float(shared_loss[0]))
    stats.seconds = time.perf_counter() - start
    stats.loss_sum, stats.recon_sum, stats.kl_sum = (float(v) for v in sums.tolist())
    return stats


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000, binarize: str = "none", generator: Optional[torch.Generator] = None) -> dict:
    """−ELBO, reconstruction, KL (total and per dimension) and active units, per image.

    Uses one posterior sample per image for the reconstruction term (an unbiased −ELBO).
    """
    vae = unwrap(model)
    vae.eval()
    recon_sum = kl_sum = 0.0
    kl_dims_sum = None
    mus = []
    for start in range(0, len(images), batch_size):
        x = batch_inputs(images[start : start + batch_size], binarize, generator)
        terms = compute_loss(vae, x, Objective(kind="vae"))
        recon_sum += float(terms.recon.sum())
        kl_sum += float(terms.kl.sum())
        dims = terms.kl_dims.sum(dim=0)
        kl_dims_sum = dims if kl_dims_sum is None else kl_dims_sum + dims
        mus.append(terms.mu)
    n = max(len(images), 1)
    mu = torch.cat(mus)
    activity = mu.var(dim=0, unbiased=False) if len(mu) > 1 else torch.zeros(mu.shape[1])
    return {
        M.NEG_ELBO: (recon_sum + kl_sum) / n,
        M.RECON: recon_sum / n,
        M.KL: kl_sum / n,
        M.KL_PER_DIM: [float(v) / n for v in kl_dims_sum.cpu()] if kl_dims_sum is not None else [],
        M.ACTIVE_UNITS: int((activity > ACTIVE_UNIT_THRESHOLD).sum()),
    }
