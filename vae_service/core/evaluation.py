"""A trained VAE's numbers for a paper's table: what `vae eval` prints and a spec's `evaluation`
section computes after the last epoch.

  nll, elbo, au        importance-sampled −log p(x) (core.likelihood), −ELBO and active units on
                       the test split, binarised the way the model was trained
  mig, factorvae, dci  disentanglement of the posterior means (core.disentanglement), on data
                       with known generative factors (dSprites)

Plain PyTorch and NumPy: the CLI and the Ray Train worker call the same function.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from vae_service.core import disentanglement
from vae_service.core import metrics as M
from vae_service.core.inference import encode
from vae_service.core.likelihood import evaluate_likelihood
from vae_service.core.model import VAE

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class EvaluationError(Exception):
    """The requested metrics cannot be computed for this model or data (the message says why)."""


def check_request(metrics: Sequence[str], has_factors: bool, dataset: str = "data without known factors") -> None:
    """Raises EvaluationError for an unknown metric, or a disentanglement metric without factors."""
    unknown = [m for m in metrics if m not in M.EVAL_KEYS]
    if unknown:
        raise EvaluationError(f"unknown metric {unknown[0]!r}: choose from {', '.join(M.EVAL_KEYS)}")
    needs_factors = [m for m in metrics if m in M.FACTOR_EVALS]
    if needs_factors and not has_factors:
        raise EvaluationError(f"{', '.join(needs_factors)} need data with known generative factors "
                              f"(data.dataset: dsprites); this model was trained on {dataset}")


def posterior_means(vae: VAE) -> Callable[[torch.Tensor], np.ndarray]:
    """The representation the disentanglement metrics score: E_q[z|x] for items (uint8 images)."""

    def represent(images: torch.Tensor) -> np.ndarray:
        return encode(vae, images)[0].numpy()

    return represent


def evaluate(vae: VAE, metrics: Sequence[str], *, test_images: torch.Tensor, binarize: str,
             factors: Optional[disentanglement.FactorData] = None, nll_samples: int = 1000,
             points: int = 10_000, seed: int = 0, progress: Optional[Progress] = None) -> dict:
    """The requested metrics (names of M.EVAL_KEYS) as one flat dict of result keys (nll,
    neg_elbo, active_units, mig, …) plus k, n_images, binary_data and seconds.

    `points` sizes the disentanglement estimates: disentanglement_lib's 10,000 training points
    (MIG, FactorVAE votes, DCI), and half as many held-out points.
    """
    check_request(metrics, factors is not None)
    started = time.perf_counter()
    vae.eval()
    result: dict = {}
    if any(m in M.LIKELIHOOD_EVALS for m in metrics):
        report = evaluate_likelihood(vae, test_images, binarize=binarize, k=nll_samples, seed=seed,
                                     on_batch=(lambda done, total: progress(M.NLL, done, total)) if progress else None)
        chosen = {key for m in metrics if m in M.LIKELIHOOD_EVALS for key in M.EVAL_KEYS[m]}
        result.update({key: value for key, value in report.to_dict().items() if key in chosen})
        result.update(k=report.k, n_images=report.n_images, binary_data=report.binary_data)
    if any(m in M.FACTOR_EVALS for m in metrics):
        represent = posterior_means(vae)
        rng = lambda: np.random.default_rng(seed)  # noqa: E731  (each metric draws the same points)
        for name in (m for m in M.FACTOR_EVALS if m in metrics):
            if progress:
                progress(name, 0, 1)
            result.update(_factor_metric(name, factors, represent, rng(), points))
            if progress:
                progress(name, 1, 1)
    result["seconds"] = time.perf_counter() - started
    return result


def _factor_metric(name: str, factors, represent, rng: np.random.Generator, points: int) -> dict:
    if name == M.MIG:
        return {M.MIG: disentanglement.mig(factors, represent, rng, num_train=points)[M.MIG]}
    if name == M.FACTORVAE:
        score = disentanglement.factor_vae_score(factors, represent, rng, num_train=points,
                                                 num_eval=max(points // 2, 1), num_variance_estimate=points)
        return {M.FACTORVAE: score["factorvae"], "factorvae_train": score["factorvae_train"],
                "factorvae_active_dims": score["active_dims"]}
    score = disentanglement.dci(factors, represent, rng, num_train=points, num_test=max(points // 2, 1))
    return {M.DCI: score["dci_disentanglement"], "dci_completeness": score["dci_completeness"],
            "dci_informativeness": score["dci_informativeness_test"]}
