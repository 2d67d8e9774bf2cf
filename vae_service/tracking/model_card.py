"""What a registered model version says about itself: a one-line description and tags.

Browsed in the MLflow UI, `vae models list` or `vae models show`, a version names its
architecture, latent size, β, data and key metrics, so versions compare at a glance. The card is
read from the version's source run (its params are the flattened spec, its metrics the run's
and `vae eval`'s), so a train job, a sweep's best trial and a later evaluation all write the same
card.
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Optional

from vae_service.core import metrics as M

# tag → the spec field (an MLflow param of the source run)
SPEC_TAGS = {
    "arch": "model.arch", "latent_dim": "model.latent_dim", "likelihood": "model.likelihood",
    "objective": "objective.kind", "beta": "objective.beta", "dataset": "data.dataset",
    "source": "data.source", "format": "data.format", "binarize": "data.binarize", "epochs": "optim.epochs", "batch_size": "optim.batch_size", "lr": "optim.lr",
}
METRIC_TAGS = (M.VAL_NEG_ELBO, M.TEST_NEG_ELBO, M.ACTIVE_UNITS)  # plus every eval_* metric


def of_run(run) -> tuple[str, dict[str, str]]:
    """(description, tags) of a version whose source is this MLflow run."""
    params, metrics = run.data.params, run.data.metrics
    return description(params, metrics), tags(params, metrics)


def tags(params: Mapping[str, str], metrics: Mapping[str, float]) -> dict[str, str]:
    """The key spec fields and metrics, as MLflow tags (strings)."""
    found = {tag: params[field] for tag, field in SPEC_TAGS.items() if params.get(field, "null") != "null"}
    for key, value in metrics.items():
        wanted = key in METRIC_TAGS or (key.startswith(M.EVAL_PREFIX) and not key.endswith("seconds"))
        if wanted and math.isfinite(value):
            found[key] = format_number(value)
    return found


def description(params: Mapping[str, str], metrics: Mapping[str, float]) -> str:
    """E.g. "VAE (mlp 400, latent 20, β=1) on mnist (dynamic binarisation), 10 epochs; test −ELBO
    98.12 nats, IS-NLL 93.40 nats (K=1000), 17 active units"."""
    get = params.get
    arch = get("model.arch", "?")
    layers = _layers(get("model.hidden" if arch == "mlp" else "model.channels"))
    kind = {"vae": "VAE", "ae": "autoencoder", "kl_only": "KL-only VAE"}.get(get("objective.kind", "vae"), "VAE")
    beta = f", β={get('objective.beta')}" if kind == "VAE" and get("objective.beta") else ""
    binarize = get("data.binarize", "none")
    data = (_own_data(get("data.source"), get("data.format")) or get("data.dataset", "?")) + (f" ({binarize} binarisation)" if binarize != "none" else "")
    parts = [f"{kind} ({arch} {layers}, latent {get('model.latent_dim', '?')}{beta}) on {data}, {_epochs(get('optim.epochs'))}"]
    numbers = []
    if M.TEST_NEG_ELBO in metrics:
        numbers.append(f"test −ELBO {metrics[M.TEST_NEG_ELBO]:.2f} nats")
    if M.eval_metric(M.NLL) in metrics:
        samples = metrics.get(M.eval_metric("k"))
        numbers.append(f"IS-NLL {metrics[M.eval_metric(M.NLL)]:.2f} nats" + (f" (K={int(samples)})" if samples else ""))
    if M.ACTIVE_UNITS in metrics:
        numbers.append(f"{int(metrics[M.ACTIVE_UNITS])} active units")
    for name in (M.MIG, M.FACTORVAE, M.DCI):
        if M.eval_metric(name) in metrics:
            numbers.append(f"{name.upper() if name != M.FACTORVAE else 'FactorVAE'} {metrics[M.eval_metric(name)]:.3f}")
    return "; ".join(parts + ([", ".join(numbers)] if numbers else []))


def format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def _epochs(value: Optional[str]) -> str:
    return "? epochs" if value is None else f"{value} epoch{'' if value == '1' else 's'}"


def _layers(value: Optional[str]) -> str:
    try:
        return "-".join(str(v) for v in json.loads(value)) if value else "?"
    except (ValueError, TypeError):
        return "?"


def _own_data(source, fmt) -> str:
    """"cells.npz (numpy)" for a data.source; "" for a named data set (its source param is null)."""
    return f"{source} ({fmt})" if source and source != "null" else ""
