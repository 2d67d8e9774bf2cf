"""The article's comparison of three objectives on a 2-D latent space, side by side.

Jeremy Jordan's "Variational autoencoders" contrasts what the encoder does to the latent space
under three objectives:
  ae        reconstruction only: separated class clusters with gaps, on a large scale
  kl_only   the KL term only: one blob at the origin, the decoder can only learn the mean image
  vae       both: a dense, smooth space of roughly N(0, I) scale with the classes in regions

`run_comparison` trains the three specs one after another through `run_training` (one Ray for
all three), then makes a parent MLflow run that the three training runs nest under, and logs on
it the three-panel scatter of test-set μ, a three-panel reconstructions figure and a metrics
table. `render_comparison` is the part without Ray or MLflow: models and test images in, PNGs
and a CSV out.
"""

from __future__ import annotations

import csv
import io
import math
import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.ticker import FuncFormatter, MaxNLocator

from vae_service.core.data import ImageSplit, load_mnist
from vae_service.core.loop import evaluate
from vae_service.core.model import VAE
from vae_service.core.spec import TrainSpec
from vae_service.core.spec_loading import SpecError, SpecProblem, dump_spec, load_spec
from vae_service.tracking import figures

KINDS = ("ae", "kl_only", "vae")  # panel order, as in the article
LABELS = {"ae": "autoencoder", "kl_only": "KL only", "vae": "VAE"}
DEFAULT_SPECS = {"ae": "jobs/mnist-ae-2d.yaml", "kl_only": "jobs/mnist-klonly-2d.yaml", "vae": "jobs/mnist-2d.yaml"}
# What must agree across the three specs for the comparison to mean something.
COMPARABLE_SECTIONS = ("data", "model", "optim")

SCATTER_FILE = "latent_comparison.png"
RECON_FILE = "reconstructions_comparison.png"
METRICS_FILE = "comparison_metrics.csv"
METRIC_COLUMNS = ("model", "test_neg_elbo", "test_recon", "test_kl", "active_units", "mu_std")
N_RECON = 8
EVAL_SEED = 0


# ---------------------------------------------------------------------------------------------
# specs


def default_spec_paths(root: Optional[Path] = None) -> list[Path]:
    """The three default specs under `root`; without one, from ./jobs when it has them, else
    from the checkout this package runs from (so `vae compare` works from any directory)."""
    if root is None:
        checkout = Path(__file__).resolve().parents[2]
        root = Path.cwd() if all((Path.cwd() / DEFAULT_SPECS[k]).is_file() for k in KINDS) else checkout
    return [Path(root) / DEFAULT_SPECS[kind] for kind in KINDS]


def load_comparison_specs(paths: Sequence[str | Path], overrides: Iterable[str] = ()) -> dict[str, TrainSpec]:
    """Three spec files (any order), one per objective kind ae / kl_only / vae, with the same
    `--set` overrides applied to each. Raises SpecError when the kinds do not fit."""
    overrides = list(overrides)
    if len(paths) != len(KINDS):
        raise SpecError("compare", [SpecProblem("", f"needs exactly {len(KINDS)} specs (objective kinds ae, kl_only, vae), got {len(paths)}")])
    by_kind: dict[str, TrainSpec] = {}
    for path in paths:
        spec = load_spec(path, overrides)
        kind = spec.objective.kind
        if kind in by_kind:
            raise SpecError(str(path), [SpecProblem("objective.kind", f"{kind!r} is already given by another spec; need one each of ae, kl_only, vae")])
        by_kind[kind] = spec
    return {kind: by_kind[kind] for kind in KINDS}


def comparability_warnings(specs: Mapping[str, TrainSpec]) -> list[str]:
    """Sections that differ between the specs (the comparison still runs, but say so)."""
    reference = specs["vae"].model_dump(mode="json")
    notes = []
    for kind, spec in specs.items():
        data = spec.model_dump(mode="json")
        for section in COMPARABLE_SECTIONS:
            if data[section] != reference[section]:
                notes.append(f"{kind}: '{section}' differs from the VAE spec's")
        if spec.model.latent_dim != 2:
            notes.append(f"{kind}: latent_dim is {spec.model.latent_dim}, not 2 (the scatter shows the first two principal components)")
    return notes


# ---------------------------------------------------------------------------------------------
# metrics, figures, table: no Ray, no MLflow


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
        mu, _ = figures.encode_means(model, test.images)
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(EVAL_SEED)
            generator = torch.Generator(device=test.images.device).manual_seed(EVAL_SEED)
            stats = evaluate(model, test.images, binarize=binarize, generator=generator)
    finally:
        model.train(was_training)
    return {
        "test_neg_elbo": stats["neg_elbo"],
        "test_recon": stats["recon"],
        "test_kl": stats["kl"],
        "active_units": stats["active_units"],
        "mu_std": mu_spread(mu),
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


def scatter_figure(codes: Mapping[str, torch.Tensor], labels: torch.Tensor) -> Figure:
    """The three-panel scatter of test μ coloured by digit, each panel on its own scale (the
    tick labels tell the scale), the prior's 1σ and 2σ circles dashed where they are in view."""
    panels = []
    for kind, mu in codes.items():
        points, _, _, _ = figures.latent_points_2d(mu)
        panels.append((f"{LABELS.get(kind, kind)}\n{_scale_note(mu_spread(mu))}", points, labels))
    n = len(labels)
    fig = figures.latent_scatter_panels(
        panels,
        title=f"Posterior means μ of {n} test images, coloured by digit (each panel on its own scale)\n"
        "dashed: the prior N(0, I) at 1σ and 2σ",
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


def _distinct_digits(labels: torch.Tensor, n: int) -> list[int]:
    """Indices of the first image of each of the first n digits seen (topped up in order)."""
    picked, seen = [], set()
    for i, label in enumerate(labels.tolist()):
        if label not in seen:
            seen.add(label)
            picked.append(i)
        if len(picked) == n:
            return sorted(picked)
    rest = [i for i in range(len(labels)) if i not in picked]
    return sorted(picked + rest[: n - len(picked)])


def _grid(rows: Sequence[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Rows of (N, 1, H, W) images in [0, 1] → one (H', W') picture, white gaps between cells."""
    n, _, h, w = rows[0].shape
    grid = np.ones((len(rows) * (h + pad) - pad, n * (w + pad) - pad), dtype=np.float32)
    for r, row in enumerate(rows):
        for c in range(n):
            grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = row[c, 0].numpy()
    return grid


def reconstructions_figure(models: Mapping[str, VAE], images: torch.Tensor) -> Figure:
    """Per model, one panel: the inputs (top row) above their reconstructions E[x | z = μ]."""
    x = images if images.dtype != torch.uint8 else images.to(torch.float32) / 255.0
    if x.shape[1] != 1:
        raise ValueError("reconstructions_figure draws one-channel images")
    k = len(models)
    n = len(x)
    fig = Figure(figsize=(4.3 * k + 0.9, 2.3), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False)[0]
    h = x.shape[2]
    for ax, (kind, model) in zip(axes, models.items()):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                device = next(model.parameters()).device
                mu, _ = model.encode(x.to(device))
                recon = model.mean_image(mu).cpu()
        finally:
            model.train(was_training)
        ax.imshow(_grid([x.cpu(), recon]), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
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
        codes[kind], _ = figures.encode_means(model, test.images)
        metrics[kind] = comparison_metrics(model, test, binarize, mu=codes[kind])
    picked = _distinct_digits(test.labels, min(N_RECON, len(test)))
    scatter = figures.save_png(scatter_figure(codes, test.labels), out_dir / SCATTER_FILE)
    recon = figures.save_png(reconstructions_figure(models, test.images[picked]), out_dir / RECON_FILE)
    table = out_dir / METRICS_FILE
    table.write_text(metrics_csv(metrics))
    return ComparisonArtifacts(scatter, recon, table, metrics)


# ---------------------------------------------------------------------------------------------
# train, nest, log


@dataclass
class ComparisonResult:
    mlflow_run_id: str
    run_name: str
    out_dir: str  # <storage.uri>/<run name>: a local path, or s3://… for S3 storage
    metrics: dict[str, dict]
    runs: dict = field(default_factory=dict)  # kind → RunResult

    def file(self, name: str) -> str:
        return posixpath.join(self.out_dir, name)

    @property
    def figure(self) -> str:
        return self.file(SCATTER_FILE)

    def to_json(self) -> dict:
        return {
            "mlflow_run_id": self.mlflow_run_id,
            "run_name": self.run_name,
            "runs": {kind: {**result.to_json(), "comparison": self.metrics[kind]} for kind, result in self.runs.items()},
            "figure": self.figure,
            "reconstructions": self.file(RECON_FILE),
            "metrics_csv": self.file(METRICS_FILE),
            "dir": self.out_dir,
        }


def comparison_run_name() -> str:
    return f"compare-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def run_comparison(specs: Mapping[str, TrainSpec], *, console=None, show_progress: bool = True) -> ComparisonResult:
    """Trains the three specs (one Ray for all), then logs the comparison on a parent MLflow run
    that the three training runs nest under, and keeps its files in `<storage.uri>/<run name>/`
    of the VAE spec. Raises what `run_training` raises."""
    from mlflow.entities import RunStatus

    from vae_service import storage
    from vae_service.core.checkpoint import load_model
    from vae_service.tracking.mlflow_run import client, experiment_id, git_revision
    from vae_service.training.runner import ensure_ray, run_training

    missing = [kind for kind in KINDS if kind not in specs]
    if missing:
        raise ValueError(f"missing specs for {', '.join(missing)}")
    vae_spec = specs["vae"]
    ensure_ray()
    results = {}
    for kind in KINDS:
        if console is not None:
            console.print(f"[bold]vae compare[/] {len(results) + 1}/{len(KINDS)}: {LABELS[kind]} ({specs[kind].name})")
        results[kind] = run_training(specs[kind], console=console, show_progress=show_progress)

    run_name = comparison_run_name()
    mlflow = client()
    tags = {
        "mlflow.runName": run_name,
        "mlflow.source.git.commit": git_revision(),
        "vae.kind": "compare",
        **{f"vae.compare.{kind}_run_id": results[kind].mlflow_run_id for kind in KINDS},
    }
    parent = mlflow.create_run(experiment_id(mlflow, vae_spec.tracking.experiment), run_name=run_name, tags=tags).info.run_id
    try:
        for kind in KINDS:
            mlflow.set_tag(results[kind].mlflow_run_id, "mlflow.parentRunId", parent)
            mlflow.set_tag(results[kind].mlflow_run_id, "vae.compare.role", kind)
            mlflow.log_text(parent, dump_spec(specs[kind]), f"specs/{kind}.yaml")
        models = {}
        for kind in KINDS:
            with storage.local_copy(storage.resolve(results[kind].model_dir)) as model_dir:
                models[kind] = load_model(model_dir)
        test = load_mnist(vae_spec.data.root, download=vae_spec.data.download, val_fraction=0.0).test
        destination = storage.resolve(vae_spec.storage.uri).join(run_name)
        with storage.writing_dir(destination) as out_dir:  # local: the folder itself; S3: uploaded after
            artifacts = render_comparison(models, test, out_dir, binarize=vae_spec.data.binarize)
            for path in artifacts.paths:
                mlflow.log_artifact(parent, str(path), "comparison")
        for kind, row in artifacts.metrics.items():
            for key, value in row.items():
                mlflow.log_metric(parent, f"{kind}.{key}", float(value))
    except BaseException as exc:
        mlflow.set_tag(parent, "vae.error", (str(exc) or exc.__class__.__name__)[:5000])
        mlflow.set_terminated(parent, status=RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.set_terminated(parent, status=RunStatus.to_string(RunStatus.FINISHED))
    return ComparisonResult(parent, run_name, destination.uri, artifacts.metrics, results)


__all__ = [
    "ComparisonArtifacts",
    "ComparisonResult",
    "DEFAULT_SPECS",
    "KINDS",
    "comparability_warnings",
    "comparison_metrics",
    "default_spec_paths",
    "load_comparison_specs",
    "metrics_csv",
    "mu_spread",
    "reconstructions_figure",
    "render_comparison",
    "run_comparison",
    "scatter_figure",
]
