"""Math on latent codes: the posterior means of images (or feature vectors), their 2-D views
(z itself or its first two principal components), codes from the prior, what the decoder makes
of codes, and paths between two codes. Tensors and arrays in and out; nothing is drawn here."""

from __future__ import annotations

import numpy as np
import torch

from vae_service.core.inference import ENCODE_BATCH, encode
from vae_service.core.model import VAE
from vae_service.viz.canvas import ArrayLike, image_batch, inferring, is_vector_model, model_device, to_numpy


@inferring
def encode_means(model: VAE, images: ArrayLike, batch_size: int = ENCODE_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, log σ²) of q(z|x) for every image, on the CPU; encoded in batches."""
    return encode(model, image_batch(model, images), batch_size)


def prior_codes(n: int, latent_dim: int, seed: int = 0) -> torch.Tensor:
    """n codes z ~ N(0, I) of shape (n, latent_dim), seeded and drawn on the CPU (so a seed gives
    the same codes on any device)."""
    if n < 1:
        raise ValueError("n must be positive")
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


@inferring
def decoder_means(model: VAE, z: ArrayLike) -> torch.Tensor:
    """E[x|z] for codes z (N, d), on the CPU: images in [0, 1] (`VAE.mean_image`), or for a
    model of feature vectors the Gaussian's mean as it is (standardised units, not clamped)."""
    codes = torch.as_tensor(to_numpy(z), dtype=torch.float32).to(model_device(model))
    if is_vector_model(model) and model.config.likelihood == "gaussian":
        return model.decode(codes).cpu()
    return model.mean_image(codes).cpu()


def pca_2d(mu: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Projection of the rows of μ onto their first two principal components.

    Returns (points (N, 2), fraction of the variance of μ along each of the two components).
    """
    m = torch.as_tensor(to_numpy(mu), dtype=torch.float64)
    if m.dim() != 2 or m.shape[1] < 2:
        raise ValueError(f"need μ of shape (N, d) with d >= 2, got {tuple(m.shape)}")
    centred = m - m.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    points = centred @ vh[:2].T
    total = s.pow(2).sum()
    explained = s[:2].pow(2) / total if total > 0 else torch.zeros(2, dtype=torch.float64)
    return points.numpy(), explained.numpy()


def latent_points_2d(mu: ArrayLike) -> tuple[np.ndarray, str, str, bool]:
    """Points to scatter for codes μ: μ itself when 2-D, else its first two principal components.

    Returns (points (N, 2), x label, y label, whether PCA was used).
    """
    m = to_numpy(mu).astype(np.float64)
    if m.ndim != 2:
        raise ValueError(f"need μ of shape (N, d), got {m.shape}")
    if m.shape[1] == 1:
        raise ValueError("a 1-dimensional latent space has no 2-D scatter")
    if m.shape[1] == 2:
        return m, "z1", "z2", False
    points, explained = pca_2d(m)
    return points, f"PC1 of μ ({explained[0]:.0%} of variance)", f"PC2 of μ ({explained[1]:.0%} of variance)", True


def interpolate_latents(z_a: ArrayLike, z_b: ArrayLike, steps: int, method: str = "linear") -> torch.Tensor:
    """`steps` codes from z_a to z_b inclusive, shape (steps, d); row 0 is z_a, the last z_b, exactly.

    linear: (1 − t)·z_a + t·z_b. slerp: the spherical interpolation of White (2016),
    sin((1 − t)Ω)/sin Ω · z_a + sin(tΩ)/sin Ω · z_b with cos Ω = ẑ_a·ẑ_b, which keeps the codes
    at a typical distance from the origin instead of cutting through the low-density centre.
    When the directions are (nearly) parallel or opposite, or either code is zero, Ω is
    ill-defined and slerp falls back to linear.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the two end points), got {steps}")
    if method not in ("linear", "slerp"):
        raise ValueError(f"method must be 'linear' or 'slerp', got {method!r}")
    a = torch.as_tensor(to_numpy(z_a) if not isinstance(z_a, torch.Tensor) else z_a)
    b = torch.as_tensor(to_numpy(z_b) if not isinstance(z_b, torch.Tensor) else z_b).to(a.device)
    a, b = a.reshape(-1), b.reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"z_a and z_b differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    dtype = a.dtype if a.is_floating_point() else torch.float32
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64, device=a.device).unsqueeze(1)

    path = None
    if method == "slerp":
        norm_a, norm_b = a64.norm(), b64.norm()
        if norm_a > 1e-12 and norm_b > 1e-12:
            cos = torch.dot(a64 / norm_a, b64 / norm_b).clamp(-1.0, 1.0)
            if cos.abs() < 0.9995:  # else (anti)parallel: sin Ω ≈ 0
                omega = torch.arccos(cos)
                path = (torch.sin((1 - t) * omega) * a64 + torch.sin(t * omega) * b64) / torch.sin(omega)
    if path is None:
        path = (1 - t) * a64 + t * b64
    path = path.to(dtype)
    path[0], path[-1] = a.to(dtype), b.to(dtype)
    return path


__all__ = [
    "ENCODE_BATCH",
    "decoder_means",
    "encode_means",
    "interpolate_latents",
    "latent_points_2d",
    "pca_2d",
    "prior_codes",
]
