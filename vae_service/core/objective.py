"""Losses in nats per image: reconstruction NLL, KL per latent dimension, and the objectives.

−ELBO = E_q[−log p(x|z)] + Σ_j KL(q_j(z_j|x) ‖ N(0, 1)), with the closed form
KL_j = ½(μ_j² + σ_j² − log σ_j² − 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from vae_service.core import continuous_bernoulli
from vae_service.core.model import unwrap
from vae_service.core.precision import autocast

LOG_2PI = math.log(2 * math.pi)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) per example and latent dimension, shape (batch, latent_dim)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def reconstruction_nll(output: torch.Tensor, x: torch.Tensor, likelihood: str, log_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """−log p(x|z) per example (nats), summed over pixels.

    bernoulli takes logits (cross-entropy also accepts grey-level targets in [0, 1], as the
    PyTorch example VAE does, but is then no density: its −ELBO bounds nothing);
    continuous_bernoulli takes logits too, and adds the normaliser that makes it a density on
    [0, 1] (core/continuous_bernoulli.py); gaussian takes the mean and a log-scale that
    broadcasts against one image (shared: a scalar; per dimension: the image's shape; None: σ = 1).
    """
    if likelihood in ("bernoulli", "continuous_bernoulli"):
        per_pixel = F.binary_cross_entropy_with_logits(output, x, reduction="none")
        if likelihood == "continuous_bernoulli":
            per_pixel = per_pixel - continuous_bernoulli.log_normalizer(output)
    elif likelihood == "gaussian":
        log_scale = log_scale if log_scale is not None else torch.zeros((), dtype=x.dtype, device=x.device)
        per_pixel = 0.5 * ((x - output) * torch.exp(-log_scale)).pow(2) + log_scale + 0.5 * LOG_2PI
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    return per_pixel.flatten(1).sum(dim=1)


@dataclass(frozen=True)
class Objective:
    """How the terms are weighted. `kind` is vae, ae or kl_only (see spec.ObjectiveSpec)."""

    kind: str = "vae"
    beta: float = 1.0
    warmup_epochs: float = 0.0
    # The defaults are CapacitySpec's (core.spec), so an Objective built by hand anneals as a spec does.
    capacity_max_nats: Optional[float] = None
    capacity_anneal_epochs: float = 10.0
    capacity_gamma: float = 1000.0

    def beta_at(self, progress: float) -> float:
        """β after `progress` epochs (fractional): linear warm-up from 0 when configured."""
        if self.warmup_epochs <= 0:
            return self.beta
        return self.beta * min(1.0, progress / self.warmup_epochs)

    def capacity_at(self, progress: float) -> float:
        """C(t), rising linearly from 0 to capacity_max_nats over the anneal epochs."""
        assert self.capacity_max_nats is not None
        return self.capacity_max_nats * min(1.0, progress / self.capacity_anneal_epochs)


@dataclass
class LossTerms:
    loss: torch.Tensor  # the scalar that is optimised (batch mean)
    recon: torch.Tensor  # per example
    kl_dims: torch.Tensor  # per example and dimension
    mu: torch.Tensor  # posterior means, for activity statistics

    @property
    def kl(self) -> torch.Tensor:
        return self.kl_dims.sum(dim=1)

    @property
    def neg_elbo(self) -> torch.Tensor:
        return self.recon + self.kl


CODE_FOR_OBJECTIVE = {"vae": "sample", "ae": "mean", "kl_only": "detached"}


def compute_loss(model: torch.nn.Module, x: torch.Tensor, objective: Objective, progress: float = 0.0,
                 precision: str = "fp32") -> LossTerms:
    """One forward pass and the objective's loss; reported terms are always the true −ELBO's.

    `model` is a VAE or a DDP wrapper around one (the forward pass must go through the wrapper).
    kl_only: the encoder is trained by the KL term alone; the decoder still learns from the
    (uninformative) codes, so it converges to the mean image, as in the article.
    `precision` bf16: the forward pass under autocast; the loss and its sums in fp32 (core/precision.py).
    """
    vae = unwrap(model)
    with autocast(x.device, precision):
        output, mu, logvar = model(x, code=CODE_FOR_OBJECTIVE[objective.kind])
    output, mu, logvar = output.float(), mu.float(), logvar.float()  # no-ops in fp32
    recon = reconstruction_nll(output, x, vae.config.likelihood, vae.log_scale)
    kl_dims = kl_per_dim(mu, logvar)
    kl = kl_dims.sum(dim=1)

    if objective.kind == "ae":
        loss = recon.mean()
    elif objective.kind == "kl_only":
        loss = (recon + kl).mean()
    elif objective.capacity_max_nats is not None:
        capacity = objective.capacity_at(progress)
        loss = recon.mean() + objective.capacity_gamma * (kl.mean() - capacity).abs()
    else:
        loss = recon.mean() + objective.beta_at(progress) * kl.mean()
    return LossTerms(loss=loss, recon=recon, kl_dims=kl_dims, mu=mu.detach())
