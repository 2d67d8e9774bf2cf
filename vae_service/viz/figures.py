"""The figures of Jeremy Jordan's "Variational autoencoders", drawn from a trained VAE.

Every function is pure: it takes a model (and images), returns a `matplotlib.figure.Figure`
and touches nothing else. Model calls run under `torch.no_grad()` in eval mode (the model's
previous train/eval mode is restored afterwards), inputs are moved to the model's device, and
images may be uint8 (0–255, as stored by `vae_service.core.data`) or float in [0, 1].
Figures are built with `Figure(...)` rather than `pyplot.figure()`, so nothing accumulates in
pyplot's global figure list when a caller forgets to close one; `save_png` closes it anyway.

Latent dimensions are named 1-based everywhere: index j of z is labelled "z{j+1}".
"""

from __future__ import annotations

import contextlib
import functools
import math
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TypeVar, Union

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend_handler import HandlerTuple  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from vae_service.core.data import to_unit_float  # noqa: E402
from vae_service.core.model import VAE, unwrap  # noqa: E402

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float]]
F = TypeVar("F", bound=Callable[..., Figure])

DEFAULT_DPI = 150
ENCODE_BATCH = 1024
N_CLASSES = 10  # MNIST digits 0–9
CLASS_CMAP = ListedColormap(matplotlib.colormaps["tab10"].colors[:N_CLASSES], name="digits")
CLASS_NORM = BoundaryNorm(np.arange(-0.5, N_CLASSES + 0.5), N_CLASSES)
ACTIVE_COLOR, COLLAPSED_COLOR = "tab:blue", "tab:orange"
PCA_NOTE = "first two principal components of μ"


# ---------------------------------------------------------------------------------------------
# plumbing


@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[VAE]:
    """The VAE of `model` in eval mode under no_grad, its previous train/eval mode restored
    after: drawing a figure or measuring a model must not leave it changed for its trainer."""
    vae = unwrap(model)
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad():
            yield vae
    finally:
        vae.train(was_training)


def _inference(fn: F) -> F:
    """Runs `fn(model, ...)` under `inference(model)`."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with inference(model) as vae:
            return fn(vae, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _device(vae: VAE) -> torch.device:
    return next(vae.parameters()).device


def _batch(vae: VAE, images: ArrayLike) -> torch.Tensor:
    """Images → float (N, C, H, W) in [0, 1] on the model's device.

    Accepts a batch (N, C, H, W), a single image (C, H, W), and for one-channel models also
    (N, H, W) or (H, W); uint8 is scaled by 1/255, anything else is taken as [0, 1] floats.
    """
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    x = x.to(_device(vae))
    x = to_unit_float(x) if x.dtype == torch.uint8 else x.to(torch.float32)
    shape = tuple(vae.config.image_shape)
    if tuple(x.shape) == shape:
        x = x.unsqueeze(0)
    elif shape[0] == 1 and x.dim() == 3 and tuple(x.shape[1:]) == shape[1:]:
        x = x.unsqueeze(1)
    elif shape[0] == 1 and tuple(x.shape) == shape[1:]:
        x = x[None, None]
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        raise ValueError(f"images of shape {tuple(x.shape)} do not fit a model for images {shape}")
    if len(x) == 0:
        raise ValueError("no images given")
    return x


def _numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _picture(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] → what imshow wants: (H, W) for grey, (H, W, C) for colour."""
    arr = _numpy(img).astype(np.float32)
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def tile(images: torch.Tensor, ncols: int, pad: int = 0, pad_value: float = 1.0) -> np.ndarray:
    """(N, C, H, W) → one picture of a grid of ncols columns, row-major, `pad` pixels apart."""
    arr = _numpy(images).astype(np.float32)
    n, c, h, w = arr.shape
    nrows = math.ceil(n / ncols)
    grid = np.full((c, nrows * (h + pad) - pad, ncols * (w + pad) - pad), pad_value, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = arr[i]
    return _picture(grid)


def _imshow(ax, picture: np.ndarray) -> None:
    ax.imshow(picture, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")


def _bare(ax) -> None:
    """No ticks, but keep the axes (and so the y label) visible, with a light frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.7")


def _cell_centres(count: int, size: int, pad: int = 0) -> np.ndarray:
    """Pixel coordinate of the middle of each of `count` cells of `size` pixels in a tile."""
    return np.arange(count) * (size + pad) + (size - 1) / 2


def _some(count: int, most: int) -> np.ndarray:
    """Up to `most` evenly spread indices of range(count), both ends included, placed
    symmetrically (the number picked has the parity of count, so none is off-centre)."""
    if count <= most + 4:
        return np.arange(count)
    k = most
    if (count - k) % 2:
        k -= 1
    return np.unique(np.round(np.linspace(0, count - 1, max(k, 2))).astype(int))


def _signed(value: float, decimals: int = 2) -> str:
    """+1.5 / −0.75 / 0: a sign on non-zero values, a typographic minus, no trailing zeros."""
    if round(value, decimals) == 0:
        return "0"
    text = f"{value:+.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text.replace("-", "\u2212")


def _dim_name(j: int) -> str:
    return f"z{j + 1}"


def save_png(fig: Figure, path: Union[str, Path], dpi: int = DEFAULT_DPI) -> Path:
    """Writes `fig` as a PNG (parent folders created) and closes it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # bbox "tight": the saved canvas is grown or trimmed to what is drawn, so no label is cut.
        fig.savefig(path, dpi=dpi, format="png", facecolor="white", bbox_inches="tight", pad_inches=0.1)
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# latent codes


@_inference
def encode_means(model: VAE, images: ArrayLike, batch_size: int = ENCODE_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, log σ²) of q(z|x) for every image, on the CPU; encoded in batches."""
    x = _batch(model, images)
    mus, logvars = [], []
    for start in range(0, len(x), batch_size):
        mu, logvar = model.encode(x[start : start + batch_size])
        mus.append(mu.cpu())
        logvars.append(logvar.cpu())
    return torch.cat(mus), torch.cat(logvars)


def pca_2d(mu: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Projection of the rows of μ onto their first two principal components.

    Returns (points (N, 2), fraction of the variance of μ along each of the two components).
    """
    m = torch.as_tensor(_numpy(mu), dtype=torch.float64)
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
    m = _numpy(mu).astype(np.float64)
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
    a = torch.as_tensor(_numpy(z_a) if not isinstance(z_a, torch.Tensor) else z_a)
    b = torch.as_tensor(_numpy(z_b) if not isinstance(z_b, torch.Tensor) else z_b).to(a.device)
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


# ---------------------------------------------------------------------------------------------
# the figures


@_inference
def reconstructions(model: VAE, images: ArrayLike, n: int = 8) -> Figure:
    """The first n images (top row) above their reconstructions E[x|z = μ] (bottom row)."""
    x = _batch(model, images)[:n]
    mu, _ = model.encode(x)
    recon = model.mean_image(mu)
    n = len(x)
    fig = Figure(figsize=(max(1.0 * n + 1.2, 4.0), 2.9), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for col in range(n):
        for row, batch in enumerate((x, recon)):
            _imshow(axes[row, col], _picture(batch[col]))
            _bare(axes[row, col])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("reconstruction\n(z = μ)")
    fig.suptitle("Inputs (top) and their reconstructions from z = μ (bottom)")
    return fig


@_inference
def prior_samples(model: VAE, n: int = 64, seed: int = 0) -> Figure:
    """A grid of decoder means E[x|z] for n codes z ~ N(0, I) (seeded, drawn on the CPU)."""
    if n < 1:
        raise ValueError("n must be positive")
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.config.latent_dim, generator=generator).to(_device(model))
    images = model.mean_image(z)
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    side = 0.72
    fig = Figure(figsize=(max(ncols * side, 4.0), nrows * side + 0.7), layout="constrained")
    ax = fig.add_subplot()
    _imshow(ax, tile(images, ncols, pad=2))
    ax.set_axis_off()
    fig.suptitle(f"{n} samples from the prior: decoder mean E[x|z] for z ~ N(0, I)")
    return fig


@_inference
def latent_manifold(model: VAE, n: int = 20) -> Figure:
    """The 2-D manifold: decoder means over an n × n grid of Gaussian quantiles 0.05…0.95 of z.

    Column c has z1 = Φ⁻¹(q_c), row r (from the top) z2 = Φ⁻¹(q_{n−1−r}), so z2 grows upwards.
    """
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
    images = model.mean_image(torch.stack([z1, z2], dim=1).to(_device(model)))
    _, _, h, w = images.shape

    fig = Figure(figsize=(7.6, 7.6), layout="constrained")
    ax = fig.add_subplot()
    _imshow(ax, tile(images, n, pad=0))
    picked = _some(n, 7)
    labels = [f"{_signed(values[i].item())}\n(q={quantiles[i].item():.2f})" for i in picked]
    ax.set_xticks(_cell_centres(n, w)[picked], labels)
    rows_for = n - 1 - picked  # row index (top = 0) holding quantile index i
    ax.set_yticks(_cell_centres(n, h)[rows_for], [text.replace("\n", " ") for text in labels])
    ax.tick_params(labelsize=8)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    fig.suptitle(
        f"Learned 2-D latent manifold: decoder mean on a {n}×{n} grid of\n"
        "Gaussian quantiles q = 0.05…0.95 of z (tick values: Φ⁻¹(q))"
    )
    return fig


def _scatter_classes(ax, points: np.ndarray, labels: np.ndarray, size: float, seed: int = 0):
    """Scatter coloured by class, drawn in a shuffled order so no class hides the others."""
    order = np.random.default_rng(seed).permutation(len(points))
    return ax.scatter(
        points[order, 0], points[order, 1], c=labels[order], cmap=CLASS_CMAP, norm=CLASS_NORM,
        s=size, alpha=0.7, linewidths=0, rasterized=True,
    )


def _point_size(n: int) -> float:
    return 3.0 if n > 5000 else 6.0 if n > 1000 else 14.0


def _class_colorbar(fig: Figure, mappable, ax, shrink: float = 1.0) -> None:
    bar = fig.colorbar(mappable, ax=ax, ticks=range(N_CLASSES), fraction=0.05, pad=0.02, shrink=shrink)
    bar.set_label("digit")
    bar.solids.set(alpha=1.0)


def latent_scatter(model: VAE, images: ArrayLike, labels: ArrayLike, title: Optional[str] = None) -> Figure:
    """Posterior means μ of (test) images coloured by digit; PCA of μ when latent_dim > 2."""
    mu, _ = encode_means(model, images)
    labels = _numpy(labels).reshape(-1)
    if len(labels) != len(mu):
        raise ValueError(f"{len(mu)} images but {len(labels)} labels")
    points, xlabel, ylabel, used_pca = latent_points_2d(mu)
    fig = Figure(figsize=(7.0, 6.2), layout="constrained")
    ax = fig.add_subplot()
    scatter = _scatter_classes(ax, points, labels, _point_size(len(points)))
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.25)
    _class_colorbar(fig, scatter, ax)
    heading = title or f"Posterior means μ of {len(points)} images, coloured by digit"
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
) -> Figure:
    """Side-by-side class-coloured scatters of 2-D codes, one per (name, mu_2d, labels) panel.

    For the article's comparison of autoencoder / KL-only / VAE. Colours, point size and the
    digit colour bar are shared; the axis ranges are per panel unless `share_axes` (the
    KL-only codes huddle at the origin and would vanish on the autoencoder's scale).
    """
    if not panels:
        raise ValueError("no panels given")
    prepared = []
    for name, mu_2d, labels in panels:
        pts = _numpy(mu_2d).astype(np.float64)
        lab = _numpy(labels).reshape(-1)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"panel {name!r}: need points of shape (N, 2), got {pts.shape}")
        if len(lab) != len(pts):
            raise ValueError(f"panel {name!r}: {len(pts)} points but {len(lab)} labels")
        prepared.append((name, pts, lab))

    k = len(prepared)
    fig = Figure(figsize=(4.3 * k + 0.9, 4.9), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False, sharex=share_axes, sharey=share_axes)[0]
    size = _point_size(max(len(p) for _, p, _ in prepared))
    scatter = None
    for ax, (name, pts, lab) in zip(axes, prepared):
        scatter = _scatter_classes(ax, pts, lab, size)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.25)
        ax.set_box_aspect(1)
    axes[0].set_ylabel(ylabel)
    _class_colorbar(fig, scatter, list(axes), shrink=0.85)
    if title:
        fig.suptitle(title)
    return fig


@_inference
def latent_dimensions(model: VAE, images: ArrayLike, n: int = 8) -> Figure:
    """For each of n images: the image, and μ ± σ of q(z|x) for every latent dimension.

    The grey band is the prior's μ ± σ (0 ± 1): dimensions that sit on it for every image carry
    no information about the image (posterior collapse).
    """
    x = _batch(model, images)[:n]
    mu, logvar = model.encode(x)
    mu, sigma = _numpy(mu), _numpy(torch.exp(0.5 * logvar))
    n, d = mu.shape
    dims = np.arange(1, d + 1)
    low = min(float((mu - sigma).min()), -1.0)
    high = max(float((mu + sigma).max()), 1.0)
    margin = 0.08 * (high - low)

    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.6 * ncols + 0.6, 2.3 * nrows + 1.0), layout="constrained")
    grid = fig.add_gridspec(nrows, ncols)
    for i in range(n):
        cell = grid[divmod(i, ncols)].subgridspec(1, 2, width_ratios=[1, 3.2], wspace=0.05)
        ax_img = fig.add_subplot(cell[0])
        _imshow(ax_img, _picture(x[i]))
        _bare(ax_img)
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
    fig.suptitle(f"Inspecting the latent dimensions: posterior μ ± σ of each of the {d} dimensions, for {n} images")
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
    kl = _numpy(kl_per_dim).astype(np.float64)
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


@_inference
def latent_traversals(
    model: VAE,
    image: ArrayLike,
    n_steps: int = 9,
    span: float = 3.0,
    max_dims: int = 10,
    kl_per_dim: Optional[ArrayLike] = None,
) -> Figure:
    """Rows: latent dimensions; columns: that dimension set to μ_j + offset, offsets −span…+span,
    every other dimension held at the image's μ. With `kl_per_dim`, the rows are the max_dims
    dimensions of largest KL (most informative first); otherwise the first max_dims."""
    x = _batch(model, image)[:1]
    mu, _ = model.encode(x)
    mu = mu[0]
    d = mu.shape[0]
    if kl_per_dim is not None:
        kl = _numpy(kl_per_dim).astype(np.float64).reshape(-1)
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
    _imshow(ax_in, _picture(x[0]))
    _bare(ax_in)
    ax_in.set_title("input", fontsize=10)
    ax = fig.add_subplot(grid[1])
    _imshow(ax, tile(images, n_steps, pad=pad))
    names = [_dim_name(j) if kl is None else f"{_dim_name(j)}\n{kl[j]:.2f} nats" for j in dims]
    ax.set_yticks(_cell_centres(len(dims), h, pad), names)
    ax.set_xticks(_cell_centres(n_steps, w, pad), [_signed(o) for o in offsets.tolist()])
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
    which = f"the {len(dims)} dimensions of largest KL" if kl is not None else f"{_dim_name(dims[0])}…{_dim_name(dims[-1])}"
    fig.suptitle(f"Latent traversals: each row varies one dimension of z,\nthe others stay at the image's μ (rows: {which})")
    return fig


@_inference
def interpolation(model: VAE, image_a: ArrayLike, image_b: ArrayLike, steps: int = 10, method: str = "linear") -> Figure:
    """Decoded codes on the path from μ_A to μ_B (see `interpolate_latents`), inputs at the ends."""
    x_a = _batch(model, image_a)[:1]
    x_b = _batch(model, image_b)[:1]
    mu, _ = model.encode(torch.cat([x_a, x_b]))
    path = interpolate_latents(mu[0], mu[1], steps, method)
    images = model.mean_image(path)
    t = np.linspace(0.0, 1.0, steps)

    fig = Figure(figsize=(0.95 * (steps + 2) + 0.3, 1.8), layout="constrained")
    axes = fig.subplots(1, steps + 2, squeeze=False, gridspec_kw={"wspace": 0.02})[0]
    for ax, picture, heading in [(axes[0], x_a[0], "input A"), (axes[-1], x_b[0], "input B")]:
        _imshow(ax, _picture(picture))
        _bare(ax)
        ax.set_title(heading, fontsize=9, fontweight="bold")
        for spine in ax.spines.values():
            spine.set_color("tab:red")
            spine.set_linewidth(2)
    for i in range(steps):
        ax = axes[i + 1]
        _imshow(ax, _picture(images[i]))
        _bare(ax)
        ax.set_title(f"t={t[i]:.2f}", fontsize=8)
    name = "Spherical (slerp)" if method == "slerp" else "Linear"
    fig.suptitle(f"{name} interpolation in latent space from μ_A (t=0) to μ_B (t=1), decoded")
    return fig


__all__ = [
    "encode_means",
    "inference",
    "interpolate_latents",
    "interpolation",
    "kl_per_dimension",
    "latent_dimensions",
    "latent_manifold",
    "latent_points_2d",
    "latent_scatter",
    "latent_scatter_panels",
    "latent_traversals",
    "pca_2d",
    "prior_samples",
    "reconstructions",
    "save_png",
    "tile",
]
