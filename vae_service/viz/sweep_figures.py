"""Figures of a sweep: the rate–distortion plane with its Pareto front, and active units over
β × latent dimension. Pure functions of the trials' rows (dicts with "beta", "latent_dim",
"rate", "distortion", "active_units"); each returns a `Figure`."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

MAX_CELLS = 12  # a heat map needs few distinct values per axis…
MIN_FILL = 0.5  # …and most of its cells filled (a grid); sampled β gives a coloured scatter


def _label(row: dict) -> str:
    return f"β={row['beta']:.3g}, d={row['latent_dim']}"


def pareto_plot(rows: Sequence[dict], front: Sequence[int], best: int | None = None) -> Figure:
    """Rate (x) against distortion (y) for every finished trial; the non-dominated trials
    (indices into `rows`) highlighted and joined, each point labelled with β and latent dim."""
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    rate = np.array([r["rate"] for r in rows], dtype=float)
    distortion = np.array([r["distortion"] for r in rows], dtype=float)
    on_front = np.zeros(len(rows), dtype=bool)
    on_front[list(front)] = True
    ax.scatter(rate[~on_front], distortion[~on_front], s=36, color="0.6", label="dominated trial")
    order = sorted(front, key=lambda i: rate[i])
    ax.plot(rate[order], distortion[order], "-o", color="tab:red", markersize=7, label="Pareto front")
    if best is not None:
        ax.scatter([rate[best]], [distortion[best]], s=220, facecolors="none", edgecolors="black", linewidths=1.5, label="registered (best)")
    for i, row in enumerate(rows):
        ax.annotate(_label(row), (rate[i], distortion[i]), textcoords="offset points", xytext=(5, 4), fontsize=7,
                    color="tab:red" if on_front[i] else "0.35")
    ax.set_xlabel("rate: mean KL(q(z|x) ‖ p(z)) [nats]")
    ax.set_ylabel("distortion: mean −log p(x|z) [nats]")
    ax.set_title("Rate–distortion of the sweep's trials (validation data)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def active_units_map(rows: Sequence[dict]) -> Figure:
    """Active latent units (Cov_x E[z|x] > 0.01) over β × latent dimension: a heat map when each
    axis has few distinct values, otherwise a scatter coloured by the count."""
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    betas = sorted({r["beta"] for r in rows})
    dims = sorted({r["latent_dim"] for r in rows})
    dense = len(betas) * len(dims) * MIN_FILL <= len(rows)
    if dense and len(betas) <= MAX_CELLS and len(dims) <= MAX_CELLS:
        sums, counts = np.zeros((len(dims), len(betas))), np.zeros((len(dims), len(betas)))
        for r in rows:  # a repeated cell keeps the mean of its trials
            i, j = dims.index(r["latent_dim"]), betas.index(r["beta"])
            sums[i, j] += r["active_units"]
            counts[i, j] += 1
        grid = np.full(sums.shape, np.nan)
        np.divide(sums, counts, out=grid, where=counts > 0)
        image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(betas)), [f"{b:.3g}" for b in betas], rotation=45)
        ax.set_yticks(range(len(dims)), [str(d) for d in dims])
        for i in range(len(dims)):
            for j in range(len(betas)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0f}/{dims[i]}", ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] < np.nanmax(grid) / 2 else "black")
    else:
        image = ax.scatter([r["beta"] for r in rows], [r["latent_dim"] for r in rows],
                           c=[r["active_units"] for r in rows], s=120, marker="s", cmap="viridis")
        ax.set_xscale("log")
    fig.colorbar(image, ax=ax, label="active units")
    ax.set_xlabel("β")
    ax.set_ylabel("latent dimension")
    ax.set_title("Active units: β × latent dimension (cells: active / available)")
    return fig
