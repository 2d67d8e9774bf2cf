"""The set of figures every training run gets, chosen by the model's input and latent dimension."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from vae_service.core.data import ImageSplit
from vae_service.core.model import VAE
from vae_service.viz import figures
from vae_service.viz.canvas import is_vector_model, save_png

SCATTER_POINTS = 5000  # enough to see the structure, few enough to draw quickly


def render_run_figures(vae: VAE, test: ImageSplit, out_dir: Path, kl_per_dim: Optional[Sequence[float]] = None) -> list[Path]:
    """Writes the article's figures for a trained model as PNGs; returns their paths.

    `test` holds the test items as the model takes them (uint8 images, or standardised feature
    vectors) with their labels (−1: none) and what the labels mean. A model of feature vectors
    gets only the figures without pictures: latent_scatter (latent_dim ≥ 2), latent_dimensions
    (μ ± σ) and kl_per_dimension; image models also get reconstructions, prior samples, traversals,
    interpolations and, with a 2-D latent space, the manifold.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    images, labels = test.images[:SCATTER_POINTS], test.labels[:SCATTER_POINTS]
    made = {}
    if len(test):  # (a small data set's test share can be empty: then only the figures without data)
        made["latent_dimensions.png"] = figures.latent_dimensions(vae, images[:8])
    if len(test) and vae.config.latent_dim >= 2:  # a 1-D latent space has no 2-D scatter
        made["latent_scatter.png"] = figures.latent_scatter(vae, images, labels, label_kind=test.label_kind,
                                                            label_names=test.label_names)
    if not is_vector_model(vae):
        made["prior_samples.png"] = figures.prior_samples(vae)
        if vae.config.latent_dim == 2:
            made["latent_manifold.png"] = figures.latent_manifold(vae)
    if len(test) and not is_vector_model(vae):
        first, second = _two_different_classes(test)
        made |= {
            "reconstructions.png": figures.reconstructions(vae, images[:8]),
            "latent_traversals.png": figures.latent_traversals(vae, images[0], kl_per_dim=kl_per_dim),
            "interpolation.png": figures.interpolation(vae, test.images[first], test.images[second]),
            "interpolation_slerp.png": figures.interpolation(vae, test.images[first], test.images[second], method="slerp"),
        }
    if kl_per_dim is not None:
        made["kl_per_dimension.png"] = figures.kl_per_dimension(list(kl_per_dim))
    return [save_png(fig, out_dir / name) for name, fig in made.items()]


def _two_different_classes(test: ImageSplit) -> tuple[int, int]:
    """Indices of the first test image and the first one of another class (the second image
    when there is none, e.g. without labels)."""
    first_label = int(test.labels[0])
    other = next((i for i, label in enumerate(test.labels.tolist()) if label != first_label), min(1, len(test) - 1))
    return 0, other
