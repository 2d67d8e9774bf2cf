"""Importance-sampled log-likelihood of a trained VAE (Burda et al. 2015, the IWAE bound).

With z_1..z_K drawn from the encoder q(z|x) and weights w_k = p(x|z_k) p(z_k) / q(z_k|x),

    log p(x) ≥ E[log (1/K) Σ_k w_k] ≥ ELBO,

the first bound is the ELBO at K = 1 and tightens monotonically to log p(x) as K → ∞, because
(1/K) Σ w_k is an unbiased estimate of p(x). The encoder is only the proposal: a poor one makes
the estimate need more samples, never biases its limit. Everything is done in log space
(logsumexp): log weights of −10⁴ are ordinary, exp of them is 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from vae_service.core.data import binarize_static, to_unit_float
from vae_service.core.inference import encode_batch
from vae_service.core.loop import ACTIVE_UNIT_THRESHOLD
from vae_service.core.model import unwrap
from vae_service.core.objective import LOG_2PI, Objective, compute_loss, reconstruction_nll


def log_importance_weights(vae, x: torch.Tensor, k: int) -> torch.Tensor:
    """log w = log p(x|z) + log p(z) − log q(z|x) for k samples z ~ q(z|x) per image: (B, k).

    All B·k samples go through the decoder in one batch (x repeated k times).
    """
    vae = unwrap(vae)
    mu, logvar = encode_batch(vae, x)  # (B, L)
    eps = torch.randn(mu.shape[0], k, mu.shape[1], dtype=mu.dtype, device=mu.device)
    z = mu.unsqueeze(1) + torch.exp(0.5 * logvar).unsqueeze(1) * eps  # (B, k, L)
    # log q from ε rather than (z − μ)/σ: exact even where σ is tiny.
    log_q = -0.5 * (eps.pow(2) + logvar.unsqueeze(1) + LOG_2PI).sum(dim=2)
    log_prior = -0.5 * (z.pow(2) + LOG_2PI).sum(dim=2)
    batch, latent = z.shape[0], z.shape[2]
    x_rep = x.unsqueeze(1).expand(batch, k, *x.shape[1:]).reshape(batch * k, *x.shape[1:])
    output = vae.decode(z.reshape(batch * k, latent))
    log_px_z = -reconstruction_nll(output, x_rep, vae.config.likelihood, vae.log_scale).view(batch, k)
    return log_px_z + log_prior - log_q


@torch.no_grad()
def importance_sampled_log_px(vae, x: torch.Tensor, k: int, max_points: int = 32768) -> torch.Tensor:
    """log p̂(x) = logsumexp_k(log w) − log k per image, (B,).

    K is drawn in chunks of at most max_points // B samples per image so the decoder never sees
    more than max_points inputs at once (at least one sample per image per chunk); the chunks'
    logsumexps are combined with another logsumexp, so no weight is ever exponentiated.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    chunk = max(1, max_points // max(len(x), 1))
    running = None
    for start in range(0, k, chunk):
        chunk_lse = torch.logsumexp(log_importance_weights(vae, x, min(chunk, k - start)), dim=1)
        running = chunk_lse if running is None else torch.logsumexp(torch.stack([running, chunk_lse]), dim=0)
    return running - math.log(k)


@dataclass
class LikelihoodReport:
    nll: float  # mean −log p̂(x), nats per image
    neg_elbo: float  # mean −ELBO on the same images (one posterior sample each)
    active_units: int
    k: int
    n_images: int
    # False: grey-level inputs, or a density on them (continuous Bernoulli, Gaussian): not an NLL of binary data
    binary_data: bool
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _test_inputs(images: torch.Tensor, binarize: str, seed: int) -> torch.Tensor:
    """uint8 images → the inputs the model was trained on, fixed once for the whole evaluation."""
    if binarize == "dynamic":
        # The model saw fresh Bernoulli draws; the test set gets one seeded draw, so the
        # number is the NLL of a fixed binary data set and reruns agree.
        images = binarize_static(images, seed=seed)
    elif binarize not in ("static", "none"):  # static: already {0, 255} (core.from_spec)
        raise ValueError(f"binarize must be dynamic, static or none, got {binarize!r}")
    return images


@torch.no_grad()
def evaluate_likelihood(
    vae,
    images: torch.Tensor,
    *,
    binarize: str,
    k: int,
    batch_size: int = 100,
    seed: int = 0,
    on_batch: Optional[Callable[[int, int], None]] = None,
) -> LikelihoodReport:
    """IS log-likelihood (K samples), −ELBO and active units of `vae` on uint8 `images` (N, C, H, W)."""
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    start_time = time.perf_counter()
    vae = unwrap(vae)
    vae.eval()
    param = next(vae.parameters())
    images = _test_inputs(images, binarize, seed)
    binary_data = vae.config.likelihood == "bernoulli" and bool(((images == 0) | (images == 255)).all())
    total = len(images)
    batches = [(start, min(start + batch_size, total)) for start in range(0, total, batch_size)]
    inputs = lambda a, b: to_unit_float(images[a:b]).to(param.device, param.dtype)  # noqa: E731
    nll_sum = neg_elbo_sum = 0.0
    mus = []
    # Seeded sampling for reproducible numbers, without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[param.device] if param.device.type == "cuda" else []):
        torch.manual_seed(seed)
        # The −ELBO pass first (it is cheap), so its draws and its number do not depend on K.
        for a, b in batches:
            terms = compute_loss(vae, inputs(a, b), Objective(kind="vae"))
            neg_elbo_sum += float(terms.neg_elbo.sum())
            mus.append(terms.mu)
        for a, b in batches:
            nll_sum -= float(importance_sampled_log_px(vae, inputs(a, b), k).sum())
            if on_batch is not None:
                on_batch(b, total)
    mu = torch.cat(mus)
    activity = mu.var(dim=0, unbiased=False)  # population variance of the posterior means
    return LikelihoodReport(
        nll=nll_sum / total,
        neg_elbo=neg_elbo_sum / total,
        active_units=int((activity > ACTIVE_UNIT_THRESHOLD).sum()),
        k=k,
        n_images=total,
        binary_data=binary_data,
        seconds=time.perf_counter() - start_time,
    )


__all__ = ["LikelihoodReport", "evaluate_likelihood", "importance_sampled_log_px", "log_importance_weights"]
