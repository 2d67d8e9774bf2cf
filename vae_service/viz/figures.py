"""The figures of Jeremy Jordan's "Variational autoencoders", drawn from a trained VAE.

Every function is pure: it takes a model (and images), returns a `matplotlib.figure.Figure`
and touches nothing else. Model calls run under `torch.no_grad()` in eval mode (the model's
previous train/eval mode is restored afterwards), inputs are moved to the model's device, and
images may be uint8 (0–255, as stored by `vae_service.core.data`) or float in [0, 1], grey or
RGB (drawn in colour); that plumbing, and `save_png` to write a figure, are in `vae_service.viz.canvas`, the math on the
latent codes (encoding, PCA, interpolation paths) in `vae_service.viz.latents`.
Figures are built with `Figure(...)` rather than `pyplot.figure()`, so nothing accumulates in
pyplot's global figure list when a caller forgets to close one; `save_png` closes it anyway.

Latent dimensions are named 1-based everywhere: index j of z is labelled "z{j+1}".

A model of feature vectors (image_shape (D,), `core.preprocessing`) has no pictures: it gets
`latent_scatter`, `latent_dimensions` (μ ± σ without the image column) and `kl_per_dimension`;
the figures that draw images raise ValueError for it.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from vae_service.core.data import DIGITS
from vae_service.core.inference import encode_batch
from vae_service.core.model import VAE
from vae_service.viz.canvas import (
    ArrayLike,
    bare,
    cell_centres,
    dim_name,
    image_batch,
    imshow,
    inferring,
    is_vector_model,
    model_device,
    signed,
    spread_indices,
    tile,
    to_numpy,
    to_picture,
)
from vae_service.viz.latents import decoder_means, encode_means, interpolate_latents, latent_points_2d, prior_codes

ACTIVE_COLOR, COLLAPSED_COLOR = "tab:blue", "tab:orange"
PCA_NOTE = "first two principal components of μ"
UNLABELLED_COLOR, NO_LABELS_COLOR = "0.6", "tab:blue"
MOST_CLASS_TICKS = 30  # more classes than this: the colour bar names an evenly spread subset


def _needs_images(model: VAE, figure: str) -> None:
    if is_vector_model(model):
        raise ValueError(f"{figure} draws images, but this model takes feature vectors of shape "
                         f"{tuple(model.config.image_shape)}; use latent_scatter, latent_dimensions or kl_per_dimension")


def _item_word(model: VAE) -> str:
    return "items" if is_vector_model(model) else "images"


@inferring
def reconstructions(model: VAE, images: ArrayLike, n: int = 8) -> Figure:
    """The first n images (top row) above their reconstructions E[x|z = μ] (bottom row)."""
    _needs_images(model, "reconstructions")
    x = image_batch(model, images)[:n]
    mu, _ = encode_batch(model, x)
    recon = model.mean_image(mu)
    n = len(x)
    fig = Figure(figsize=(max(1.0 * n + 1.2, 4.0), 2.9), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for col in range(n):
        for row, batch in enumerate((x, recon)):
            imshow(axes[row, col], to_picture(batch[col]))
            bare(axes[row, col])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("reconstruction\n(z = μ)")
    fig.suptitle("Inputs (top) and their reconstructions from z = μ (bottom)")
    return fig


@inferring
def prior_samples(model: VAE, n: int = 64, seed: int = 0) -> Figure:
    """A grid of decoder means E[x|z] for n codes z ~ N(0, I) (seeded, drawn on the CPU)."""
    _needs_images(model, "prior_samples")
    images = decoder_means(model, prior_codes(n, model.config.latent_dim, seed))
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    side = 0.72
    fig = Figure(figsize=(max(ncols * side, 4.0), nrows * side + 0.7), layout="constrained")
    ax = fig.add_subplot()
    imshow(ax, tile(images, ncols, pad=2))
    ax.set_axis_off()
    fig.suptitle(f"{n} samples from the prior: decoder mean E[x|z] for z ~ N(0, I)")
    return fig


@inferring
def latent_manifold(model: VAE, n: int = 20) -> Figure:
    """The 2-D manifold: decoder means over an n × n grid of Gaussian quantiles 0.05…0.95 of z.

    Column c has z1 = Φ⁻¹(q_c), row r (from the top) z2 = Φ⁻¹(q_{n−1−r}), so z2 grows upwards.
    """
    _needs_images(model, "latent_manifold")
    d = model.config.latent_dim
    if d != 2:
        raise ValueError(
            f"latent_manifold needs a 2-dimensional latent space (latent_dim == 2), but this model "
            f"has latent_dim == {d}; use latent_traversals or latent_scatter instead"
        )
    if n < 2:
        raise ValueError("n must be at least 2")
    quantiles = torch.linspace(0.05, 0.95, n)
    values = torch.distributions.Normal(0.0, 1.0).icdf(quantiles)
    z1 = values.repeat(n)
    z2 = values.flip(0).repeat_interleave(n)
    images = model.mean_image(torch.stack([z1, z2], dim=1).to(model_device(model)))
    _, _, h, w = images.shape

    fig = Figure(figsize=(7.6, 7.6), layout="constrained")
    ax = fig.add_subplot()
    imshow(ax, tile(images, n, pad=0))
    picked = spread_indices(n, 7)
    labels = [f"{signed(values[i].item())}\n(q={quantiles[i].item():.2f})" for i in picked]
    ax.set_xticks(cell_centres(n, w)[picked], labels)
    rows_for = n - 1 - picked  # row index (top = 0) holding quantile index i
    ax.set_yticks(cell_centres(n, h)[rows_for], [text.replace("\n", " ") for text in labels])
    ax.tick_params(labelsize=8)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    fig.suptitle(
        f"Learned 2-D latent manifold: decoder mean on a {n}×{n} grid of\n"
        "Gaussian quantiles q = 0.05…0.95 of z (tick values: Φ⁻¹(q))"
    )
    return fig


def _class_names(labels: np.ndarray, label_names: Sequence[str]) -> list[str]:
    """One name per class 0…k−1: `label_names`, topped up with numbers for labels beyond them
    (a label of −1 is no label: it names no class)."""
    count = max(len(label_names), int(labels.max(initial=-1)) + 1)
    return [*label_names, *(str(i) for i in range(len(label_names), count))]


def _scatter_classes(ax, points: np.ndarray, labels: np.ndarray, size: float, n_classes: int, seed: int = 0):
    """Scatter coloured by class (one distinct colour each), drawn in a shuffled order so no
    class hides the others. Points without a label (−1) are drawn first, in grey; when no point
    has one, all are drawn in one colour. Returns the classes' mappable, None when no point has
    a label (then there is no class legend to draw)."""
    labels = labels.astype(np.int64)
    labelled = labels >= 0
    style = dict(s=size, alpha=0.7, linewidths=0, rasterized=True)
    if not labelled.any():
        ax.scatter(points[:, 0], points[:, 1], color=NO_LABELS_COLOR, **style)
        return None
    if not labelled.all():
        ax.scatter(points[~labelled, 0], points[~labelled, 1], color=UNLABELLED_COLOR,
                   label=f"no label ({int((~labelled).sum()):,})", **style)
        ax.legend(loc="best", fontsize=8, markerscale=max(1.0, 24.0 / size) ** 0.5)
    points, labels = points[labelled], labels[labelled]
    palette = matplotlib.colormaps["tab10" if n_classes <= 10 else "tab20"].colors
    colours = palette[:n_classes] if n_classes <= len(palette) else matplotlib.colormaps["turbo"](np.linspace(0, 1, n_classes))
    order = np.random.default_rng(seed).permutation(len(points))
    return ax.scatter(
        points[order, 0], points[order, 1], c=labels[order], cmap=ListedColormap(colours, name="classes"),
        norm=BoundaryNorm(np.arange(-0.5, n_classes + 0.5), n_classes), **style,
    )


def _point_size(n: int) -> float:
    return 3.0 if n > 5000 else 6.0 if n > 1000 else 14.0


def _class_colorbar(fig: Figure, mappable, ax, names: Sequence[str], label_kind: str, shrink: float = 1.0) -> None:
    ticks = np.arange(len(names)) if len(names) <= MOST_CLASS_TICKS else spread_indices(len(names), MOST_CLASS_TICKS - 10)
    bar = fig.colorbar(mappable, ax=ax, ticks=ticks, fraction=0.05, pad=0.02, shrink=shrink)
    bar.ax.set_yticklabels([names[i] for i in ticks])
    bar.set_label(label_kind)
    bar.solids.set(alpha=1.0)


def latent_scatter(model: VAE, images: ArrayLike, labels: ArrayLike, title: Optional[str] = None,
                   label_kind: str = "digit", label_names: Sequence[str] = DIGITS) -> Figure:
    """Posterior means μ of (test) images or feature vectors coloured by label (what label i
    means: `label_kind` `label_names[i]`, MNIST's digits by default; −1: no label, drawn grey,
    or all in one colour without a class legend when no item has one); PCA of μ when
    latent_dim > 2."""
    mu, _ = encode_means(model, images)
    labels = to_numpy(labels).reshape(-1)
    if len(labels) != len(mu):
        raise ValueError(f"{len(mu)} {_item_word(model)} but {len(labels)} labels")
    points, xlabel, ylabel, used_pca = latent_points_2d(mu)
    names = _class_names(labels, label_names)
    fig = Figure(figsize=(7.0, 6.2), layout="constrained")
    ax = fig.add_subplot()
    scatter = _scatter_classes(ax, points, labels, _point_size(len(points)), len(names))
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.25)
    heading = f"Posterior means μ of {len(points)} {_item_word(model)}"
    if scatter is not None:
        _class_colorbar(fig, scatter, ax, names, label_kind)
        heading += f", coloured by {label_kind}"
    heading = title or heading
    if used_pca:
        heading += f"\n({PCA_NOTE}, {mu.shape[1]}-D latent space)"
    fig.suptitle(heading)
    return fig


def latent_scatter_panels(
    panels: Sequence[tuple[str, ArrayLike, ArrayLike]],
    title: Optional[str] = "Latent codes μ of the test images under each objective",
    xlabel: str = "z1",
    ylabel: str = "z2",
    share_axes: bool = False,
    label_kind: str = "digit",
    label_names: Sequence[str] = DIGITS,
) -> Figure:
    """Side-by-side class-coloured scatters of 2-D codes, one per (name, mu_2d, labels) panel.

    For the article's comparison of autoencoder / KL-only / VAE. Colours, point size and the
    colour bar of the classes (`label_names`, MNIST's digits by default) are shared; the axis
    ranges are per panel unless `share_axes` (the KL-only codes huddle at the origin and would
    vanish on the autoencoder's scale).
    """
    if not panels:
        raise ValueError("no panels given")
    prepared = []
    for name, mu_2d, labels in panels:
        pts = to_numpy(mu_2d).astype(np.float64)
        lab = to_numpy(labels).reshape(-1)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"panel {name!r}: need points of shape (N, 2), got {pts.shape}")
        if len(lab) != len(pts):
            raise ValueError(f"panel {name!r}: {len(pts)} points but {len(lab)} labels")
        prepared.append((name, pts, lab))

    k = len(prepared)
    names = _class_names(np.concatenate([lab for _, _, lab in prepared]), label_names)
    fig = Figure(figsize=(4.3 * k + 0.9, 4.9), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False, sharex=share_axes, sharey=share_axes)[0]
    size = _point_size(max(len(p) for _, p, _ in prepared))
    scatter = None
    for ax, (name, pts, lab) in zip(axes, prepared):
        scatter = _scatter_classes(ax, pts, lab, size, len(names)) or scatter
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.25)
        ax.set_box_aspect(1)
    axes[0].set_ylabel(ylabel)
    if scatter is not None:
        _class_colorbar(fig, scatter, list(axes), names, label_kind, shrink=0.85)
    if title:
        fig.suptitle(title)
    return fig


@inferring
def latent_dimensions(model: VAE, images: ArrayLike, n: int = 8) -> Figure:
    """For each of n images: the image, and μ ± σ of q(z|x) for every latent dimension; for a
    model of feature vectors, μ ± σ alone (a vector has no picture to put beside it).

    The grey band is the prior's μ ± σ (0 ± 1): dimensions that sit on it for every image carry
    no information about the image (posterior collapse).
    """
    x = image_batch(model, images)[:n]
    mu, logvar = encode_batch(model, x)
    mu, sigma = to_numpy(mu), to_numpy(torch.exp(0.5 * logvar))
    n, d = mu.shape
    dims = np.arange(1, d + 1)
    low = min(float((mu - sigma).min()), -1.0)
    high = max(float((mu + sigma).max()), 1.0)
    margin = 0.08 * (high - low)

    vectors = is_vector_model(model)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=((2.9 if vectors else 3.6) * ncols + 0.6, 2.3 * nrows + 1.0), layout="constrained")
    grid = fig.add_gridspec(nrows, ncols)
    for i in range(n):
        if vectors:
            ax = fig.add_subplot(grid[divmod(i, ncols)])
            ax.set_title(f"item {i + 1}", fontsize=9)
        else:
            cell = grid[divmod(i, ncols)].subgridspec(1, 2, width_ratios=[1, 3.2], wspace=0.05)
            ax_img = fig.add_subplot(cell[0])
            imshow(ax_img, to_picture(x[i]))
            bare(ax_img)
            ax_img.set_title(f"image {i + 1}", fontsize=9)
            ax = fig.add_subplot(cell[1])
        ax.axhspan(-1.0, 1.0, color="0.9", zorder=0)
        ax.axhline(0.0, color="0.6", linewidth=0.8, zorder=0)
        ax.errorbar(dims, mu[i], yerr=sigma[i], fmt="o", markersize=3, capsize=2, linewidth=1, color="tab:blue")
        ax.set_ylim(low - margin, high + margin)
        ax.set_xlim(0.4, d + 0.6)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=min(d, 8), integer=True, steps=[1, 2, 5, 10]))
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.2)
        if i + ncols >= n:  # nothing below it: bottom of its column
            ax.set_xlabel("latent dimension", fontsize=9)
    fig.supylabel("μ ± σ")
    handles = [
        Line2D([], [], marker="o", markersize=3, color="tab:blue", label=r"posterior $q(z_j|x)$: μ ± σ"),
        Patch(color="0.9", label="prior N(0, 1): 0 ± 1"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    fig.suptitle(f"Inspecting the latent dimensions: posterior μ ± σ of each of the {d} dimensions, "
                 f"for {n} {_item_word(model)}")
    return fig


def kl_per_dimension(
    kl_per_dim: ArrayLike,
    threshold: float = 0.01,
    title: Optional[str] = None,
    log_scale: bool = False,
) -> Figure:
    """Bars of the mean KL(q(z_j|x) ‖ N(0, 1)) in nats per latent dimension.

    Dimensions under `threshold` nats are collapsed: drawn in another colour, with a marker on
    the axis (their bars are too short to see on a linear scale) and in the legend.
    """
    kl = to_numpy(kl_per_dim).astype(np.float64)
    if kl.ndim != 1 or len(kl) == 0:
        raise ValueError(f"need a non-empty list of KL values, one per dimension; got shape {kl.shape}")
    d = len(kl)
    dims = np.arange(1, d + 1)
    collapsed = kl < threshold
    colours = np.where(collapsed, COLLAPSED_COLOR, ACTIVE_COLOR)

    fig = Figure(figsize=(min(max(5.0, 0.38 * d + 2.0), 14.0), 4.2), layout="constrained")
    ax = fig.add_subplot()
    if log_scale:
        floor = max(threshold / 100.0, 1e-6)
        ax.bar(dims, np.maximum(kl, floor) - floor, bottom=floor, color=colours)
        ax.set_yscale("log")
        ax.axhline(threshold, color="0.4", linestyle="--", linewidth=1)
        ax.set_ylim(floor, max(kl.max(), threshold) * 100)  # headroom for the legend
        baseline = floor
    else:
        ax.bar(dims, kl, color=colours)
        ax.set_ylim(0.0, max(kl.max(), threshold) * 1.3)  # headroom for the legend
        baseline = 0.0
    if collapsed.any():
        ax.plot(dims[collapsed], np.full(collapsed.sum(), baseline), linestyle="none", marker="x",
                color=COLLAPSED_COLOR, markersize=7, markeredgewidth=2, clip_on=False, zorder=3)
    if d <= 40:
        ax.set_xticks(dims)
        for tick, is_collapsed in zip(ax.get_xticklabels(), collapsed):
            if is_collapsed:
                tick.set_color(COLLAPSED_COLOR)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.4, d + 0.6)
    ax.tick_params(axis="x", labelsize=8 if d > 20 else 9)
    ax.set_xlabel("latent dimension")
    ax.set_ylabel(r"$\mathrm{KL}(q(z_j|x)\ \|\ N(0, 1))$  [nats]")
    ax.grid(axis="y", alpha=0.3)
    handles = [
        Patch(color=ACTIVE_COLOR, label=f"active (KL ≥ {threshold:g} nats): {int((~collapsed).sum())}"),
        (Patch(color=COLLAPSED_COLOR),
         Line2D([], [], color=COLLAPSED_COLOR, marker="x", markersize=7, markeredgewidth=2, linestyle="none")),
    ]
    labels = [handles[0].get_label(), f"collapsed (KL < {threshold:g} nats): {int(collapsed.sum())}"]
    if log_scale:
        handles.append(Line2D([], [], color="0.4", linestyle="--", linewidth=1))
        labels.append(f"threshold {threshold:g} nats")
    ax.legend(handles=handles, labels=labels, loc="upper right", fontsize=9,
              handler_map={tuple: HandlerTuple(ndivide=None, pad=0.6)})
    fig.suptitle(title or f"KL divergence per latent dimension (total {kl.sum():.2f} nats)")
    return fig


@inferring
def latent_traversals(
    model: VAE,
    image: ArrayLike,
    n_steps: int = 9,
    span: float = 3.0,
    max_dims: int = 10,
    kl_per_dim: Optional[ArrayLike] = None,
    row_labels: Optional[Mapping[int, str]] = None,
) -> Figure:
    """Rows: latent dimensions; columns: that dimension set to μ_j + offset, offsets −span…+span,
    every other dimension held at the image's μ. With `kl_per_dim`, the rows are the max_dims
    dimensions of largest KL (most informative first); otherwise the first max_dims.
    `row_labels` names what a dimension encodes (e.g. the dSprites factor it is most informative of)."""
    _needs_images(model, "latent_traversals")
    x = image_batch(model, image)[:1]
    mu, _ = encode_batch(model, x)
    mu = mu[0]
    d = mu.shape[0]
    if kl_per_dim is not None:
        kl = to_numpy(kl_per_dim).astype(np.float64).reshape(-1)
        if len(kl) != d:
            raise ValueError(f"kl_per_dim has {len(kl)} values but the model has {d} latent dimensions")
        dims = [int(j) for j in np.argsort(-kl, kind="stable")[:max_dims]]
    else:
        kl = None
        dims = list(range(min(d, max_dims)))
    offsets = torch.linspace(-span, span, n_steps, device=mu.device)
    z = mu.repeat(len(dims) * n_steps, 1)
    for row, j in enumerate(dims):
        z[row * n_steps : (row + 1) * n_steps, j] += offsets
    images = model.mean_image(z)
    _, _, h, w = images.shape
    pad = 2

    cell = 0.62
    label_width = 1.3 if kl_per_dim is not None else 0.8
    fig = Figure(figsize=(cell * (n_steps + 1.4) + label_width, cell * len(dims) + 1.5), layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=[1.3, n_steps])
    ax_in = fig.add_subplot(grid[0])
    imshow(ax_in, to_picture(x[0]))
    bare(ax_in)
    ax_in.set_title("input", fontsize=10)
    ax = fig.add_subplot(grid[1])
    imshow(ax, tile(images, n_steps, pad=pad))
    names = [dim_name(j) if kl is None else f"{dim_name(j)}\n{kl[j]:.2f} nats" for j in dims]
    if row_labels:
        names = [f"{name}\n{row_labels[j]}" if j in row_labels else name for name, j in zip(names, dims)]
    ax.set_yticks(cell_centres(len(dims), h, pad), names)
    ax.set_xticks(cell_centres(n_steps, w, pad), [signed(o) for o in offsets.tolist()])
    ax.tick_params(length=0, labelsize=9 if kl is None else 8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    zero = torch.isclose(offsets, torch.zeros(())).nonzero()
    if len(zero):
        col = int(zero[0])
        ax.add_patch(Rectangle((col * (w + pad) - 1.5, -1.5), w + 2, len(dims) * (h + pad) - pad + 2,
                               fill=False, edgecolor="tab:red", linewidth=1.5, clip_on=False))
    ax.set_xlabel(r"$z_j - \mu_j$  (offset from the image's μ; red box: z = μ)")
    ax.set_ylabel("varied dimension" + (" (by KL)" if kl is not None else ""))
    which = f"the {len(dims)} dimensions of largest KL" if kl is not None else f"{dim_name(dims[0])}…{dim_name(dims[-1])}"
    fig.suptitle(f"Latent traversals: each row varies one dimension of z,\nthe others stay at the image's μ (rows: {which})")
    return fig


@inferring
def interpolation(model: VAE, image_a: ArrayLike, image_b: ArrayLike, steps: int = 10, method: str = "linear") -> Figure:
    """Decoded codes on the path from μ_A to μ_B (see `interpolate_latents`), inputs at the ends."""
    _needs_images(model, "interpolation")
    x_a = image_batch(model, image_a)[:1]
    x_b = image_batch(model, image_b)[:1]
    mu, _ = encode_batch(model, torch.cat([x_a, x_b]))
    path = interpolate_latents(mu[0], mu[1], steps, method)
    images = model.mean_image(path)
    t = np.linspace(0.0, 1.0, steps)

    fig = Figure(figsize=(0.95 * (steps + 2) + 0.3, 1.8), layout="constrained")
    axes = fig.subplots(1, steps + 2, squeeze=False, gridspec_kw={"wspace": 0.02})[0]
    for ax, picture, heading in [(axes[0], x_a[0], "input A"), (axes[-1], x_b[0], "input B")]:
        imshow(ax, to_picture(picture))
        bare(ax)
        ax.set_title(heading, fontsize=9, fontweight="bold")
        for spine in ax.spines.values():
            spine.set_color("tab:red")
            spine.set_linewidth(2)
    for i in range(steps):
        ax = axes[i + 1]
        imshow(ax, to_picture(images[i]))
        bare(ax)
        ax.set_title(f"t={t[i]:.2f}", fontsize=8)
    name = "Spherical (slerp)" if method == "slerp" else "Linear"
    fig.suptitle(f"{name} interpolation in latent space from μ_A (t=0) to μ_B (t=1), decoded")
    return fig


__all__ = [
    "interpolation",
    "kl_per_dimension",
    "latent_dimensions",
    "latent_manifold",
    "latent_scatter",
    "latent_scatter_panels",
    "latent_traversals",
    "prior_samples",
    "reconstructions",
]
