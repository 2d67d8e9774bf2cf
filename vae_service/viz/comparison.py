"""The article's comparison of three objectives on a 2-D latent space: metrics, figures and
table, with no Ray and no MLflow (models and test images in, PNGs and a CSV out), so a notebook
can draw it from models it has at hand. Training the three models and logging the result is
`vae_service.jobs.compare`.

Jeremy Jordan's "Variational autoencoders" contrasts what the encoder does to the latent space
under three objectives:
  ae        reconstruction only: separated class clusters with gaps, on a large scale
  kl_only   the KL term only: one blob at the origin, the decoder can only learn the mean image
  vae       both: a dense, smooth space of roughly N(0, I) scale with the classes in regions
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.ticker import FuncFormatter, MaxNLocator

from vae_service.core.data import DIGITS, ImageSplit, to_unit_float
from vae_service.core.inference import encode_batch
from vae_service.core.loop import evaluate
from vae_service.core.model import VAE
from vae_service.core import metrics as M
from vae_service.viz import canvas, figures, latents

KINDS = ("ae", "kl_only", "vae")  # panel order, as in the article
LABELS = {"ae": "autoencoder", "kl_only": "KL only", "vae": "VAE"}

SCATTER_FILE = "latent_comparison.png"
RECON_FILE = "reconstructions_comparison.png"
METRICS_FILE = "comparison_metrics.csv"
MU_STD = "mu_std"  # this comparison's own measure of how far the codes spread
METRIC_COLUMNS = ("model", M.TEST_NEG_ELBO, M.TEST_RECON, M.TEST_KL, M.ACTIVE_UNITS, MU_STD)
N_RECON = 8
EVAL_SEED = 0


def mu_spread(mu: torch.Tensor) -> float:
    """How far the codes spread: √(mean over dimensions of Var over images of μ_j)."""
    if len(mu) < 2:
        return 0.0
    return float(mu.to(torch.float64).var(dim=0, unbiased=False).mean().sqrt())


def comparison_metrics(model: VAE, test: ImageSplit, binarize: str = "none", mu: Optional[torch.Tensor] = None) -> dict:
    """Test −ELBO, reconstruction and KL (one seeded posterior sample per image, as in training
    evaluation), active units and the μ spread. The same estimator for all three models: for
    the autoencoder it is not what it was trained on (its σ head is untrained)."""
    if mu is None:
        mu, _ = latents.encode_means(model, test.images)
    with canvas.inference(model) as vae, torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        generator = torch.Generator(device=test.images.device).manual_seed(EVAL_SEED)
        stats = evaluate(vae, test.images, binarize=binarize, generator=generator)
    return {
        M.TEST_NEG_ELBO: stats[M.NEG_ELBO],
        M.TEST_RECON: stats[M.RECON],
        M.TEST_KL: stats[M.KL],
        M.ACTIVE_UNITS: stats[M.ACTIVE_UNITS],
        MU_STD: mu_spread(mu),
    }


def metrics_csv(metrics: Mapping[str, Mapping]) -> str:
    """One row per model (in panel order), columns METRIC_COLUMNS."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for kind, row in metrics.items():
        values = [kind] + [row[c] for c in METRIC_COLUMNS[1:]]
        writer.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in values])
    return out.getvalue()


def _scale_note(spread: float) -> str:
    return f"μ spread (std) {spread:.3g}"


def scatter_figure(codes: Mapping[str, torch.Tensor], labels: torch.Tensor, label_kind: str = "digit",
                   label_names: Sequence[str] = DIGITS) -> Figure:
    """The three-panel scatter of test μ coloured by label (digit by default), each panel on its
    own scale (the tick labels tell the scale), the prior's 1σ and 2σ circles dashed where they
    are in view."""
    panels = []
    for kind, mu in codes.items():
        points, _, _, _ = latents.latent_points_2d(mu)
        panels.append((f"{LABELS.get(kind, kind)}\n{_scale_note(mu_spread(mu))}", points, labels))
    n = len(labels)
    fig = figures.latent_scatter_panels(
        panels,
        title=f"Posterior means μ of {n} test images, coloured by {label_kind} (each panel on its own scale)\n"
        "dashed: the prior N(0, I) at 1σ and 2σ",
        label_kind=label_kind, label_names=label_names,
    )
    # Room between the two-line heading and the two-line panel titles (square panels under
    # constrained layout otherwise let them touch).
    fig.get_layout_engine().set(h_pad=0.12)
    for ax, (_, points, _) in zip(fig.axes, panels):
        # Equal scales on both axes (the panels are square), so the shapes are true.
        low, high = points.min(axis=0), points.max(axis=0)
        centre, half = (low + high) / 2, max(float((high - low).max()) / 2 * 1.06, 1e-6)
        for radius in (1.0, 2.0):
            ax.add_patch(Circle((0.0, 0.0), radius, fill=False, linestyle="--", linewidth=1.0, edgecolor="0.35", zorder=3))
        ax.plot([0.0], [0.0], marker="+", color="0.2", markersize=8, zorder=3)
        ax.set_xlim(centre[0] - half, centre[0] + half)
        ax.set_ylim(centre[1] - half, centre[1] + half)
        _readable_ticks(ax, half, first=ax is fig.axes[0])
    return fig


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _readable_ticks(ax, half_range: float, first: bool) -> None:
    """Few ticks; on a tiny scale (the KL-only blob) the ticks count in units of 10⁻ⁿ, named in
    the axis labels, so long labels like −0.0075 never collide."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    exponent = math.floor(math.log10(half_range)) if half_range < 0.05 else 0
    unit = ""
    if exponent:
        scale = 10.0**exponent
        formatter = FuncFormatter(lambda value, _: f"{value / scale:.6g}".replace("-", "\u2212"))
        ax.xaxis.set_major_formatter(formatter)
        ax.yaxis.set_major_formatter(formatter)
        unit = f"  [×10{str(exponent).translate(_SUPERSCRIPT)}]"
    ax.set_xlabel(f"z1{unit}")
    if first or unit:
        ax.set_ylabel(f"z2{unit}")


def _distinct_classes(labels: torch.Tensor, n: int) -> list[int]:
    """Indices of the first image of each of the first n classes seen (topped up in order)."""
    picked, seen = [], set()
    for i, label in enumerate(labels.tolist()):
        if label not in seen:
            seen.add(label)
            picked.append(i)
        if len(picked) == n:
            return sorted(picked)
    rest = [i for i in range(len(labels)) if i not in picked]
    return sorted(picked + rest[: n - len(picked)])


def reconstructions_figure(models: Mapping[str, VAE], images: torch.Tensor) -> Figure:
    """Per model, one panel: the inputs (top row) above their reconstructions E[x | z = μ]."""
    x = to_unit_float(images)
    if x.shape[1] != 1:
        raise ValueError("reconstructions_figure draws one-channel images")
    k = len(models)
    n = len(x)
    fig = Figure(figsize=(4.3 * k + 0.9, 2.3), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False)[0]
    h = x.shape[2]
    for ax, (kind, model) in zip(axes, models.items()):
        with canvas.inference(model) as vae:
            device = next(vae.parameters()).device
            mu, _ = encode_batch(vae, x.to(device))
            recon = vae.mean_image(mu).cpu()
        pairs = canvas.tile(torch.cat([x.cpu(), recon]), ncols=n, pad=2)  # inputs above, white gaps
        ax.imshow(pairs, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([(h - 1) / 2, h + 2 + (h - 1) / 2], ["input", "recon."], fontsize=9)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(LABELS.get(kind, kind))
    fig.suptitle(f"{n} test images (top) and their reconstructions from z = μ (bottom)")
    return fig


@dataclass
class ComparisonArtifacts:
    figure: Path  # the three-panel scatter
    reconstructions: Path
    metrics_csv: Path
    metrics: dict[str, dict] = field(default_factory=dict)

    @property
    def paths(self) -> list[Path]:
        return [self.figure, self.reconstructions, self.metrics_csv]


def render_comparison(models: Mapping[str, VAE], test: ImageSplit, out_dir: Path, binarize: str = "none") -> ComparisonArtifacts:
    """Writes the scatter, the reconstructions and the metrics table for models keyed by
    objective kind (panel order = the mapping's order); returns their paths and the metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    codes, metrics = {}, {}
    for kind, model in models.items():
        codes[kind], _ = latents.encode_means(model, test.images)
        metrics[kind] = comparison_metrics(model, test, binarize, mu=codes[kind])
    picked = _distinct_classes(test.labels, min(N_RECON, len(test)))
    scatter = canvas.save_png(scatter_figure(codes, test.labels, test.label_kind, test.label_names), out_dir / SCATTER_FILE)
    recon = canvas.save_png(reconstructions_figure(models, test.images[picked]), out_dir / RECON_FILE)
    table = out_dir / METRICS_FILE
    table.write_text(metrics_csv(metrics))
    return ComparisonArtifacts(scatter, recon, table, metrics)


__all__ = [
    "KINDS",
    "LABELS",
    "METRICS_FILE",
    "METRIC_COLUMNS",
    "RECON_FILE",
    "SCATTER_FILE",
    "ComparisonArtifacts",
    "comparison_metrics",
    "metrics_csv",
    "mu_spread",
    "reconstructions_figure",
    "render_comparison",
    "scatter_figure",
]
