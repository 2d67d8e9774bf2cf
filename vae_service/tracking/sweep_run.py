"""A sweep's parent MLflow run: its trials nest under it; it holds the results table, the
rate–distortion front, the active-units map, and the best trial's model in the registry."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from mlflow.entities import RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from vae_service.tracking.mlflow_run import ERROR_TAG, client
from vae_service.tracking.registry import MODEL_ARTIFACT, all_pages, register
from vae_service.viz.canvas import save_png
from vae_service.viz.sweep_figures import active_units_map, pareto_plot

PARENT_TAG = MLFLOW_PARENT_RUN_ID  # "mlflow.parentRunId": what the MLflow UI nests runs by
TRIAL_TAG = "vae.trial_id"


def child_runs(parent_run_id: str) -> dict[str, object]:
    """Trial id → the trial's MLflow run (all of them, paged)."""
    mlflow = client()
    parent = mlflow.get_run(parent_run_id)
    runs = all_pages(
        mlflow.search_runs, [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=500,
    )
    return {run.data.tags[TRIAL_TAG]: run for run in runs if run.data.tags.get(TRIAL_TAG)}


def close_stopped(run_id: str, reason: str) -> None:
    """A trial the scheduler stopped never finishes its own run: mark it KILLED, say why."""
    mlflow = client()
    if ERROR_TAG in mlflow.get_run(run_id).data.tags:  # its Train run died as it was stopped: no failure
        mlflow.delete_tag(run_id, ERROR_TAG)
    mlflow.set_tag(run_id, "vae.stopped", reason)
    mlflow.set_terminated(run_id, status=RunStatus.to_string(RunStatus.KILLED))


def log_results(parent_run_id: str, table: Sequence[dict], plotted: Sequence[dict], front: Sequence[int], best: Optional[int]) -> None:
    """trials.csv (every trial), pareto.png and active_units.png (finished trials) on the parent."""
    mlflow = client()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        columns = sorted({key for row in table for key in row}, key=lambda k: (k != "trial_id", k))
        with open(out / "trials.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(table)
        mlflow.log_artifact(parent_run_id, str(out / "trials.csv"))
        if plotted:
            save_png(pareto_plot(plotted, front, best), out / "pareto_front.png")
            save_png(active_units_map(plotted), out / "active_units.png")
            mlflow.log_artifact(parent_run_id, str(out / "pareto_front.png"), "figures")
            mlflow.log_artifact(parent_run_id, str(out / "active_units.png"), "figures")


def register_best(parent_run_id: str, best_run, name: str, alias: str, metrics: dict) -> str:
    """Registers the best trial's logged model (its run's `vae.model_uri`); returns
    models:/name/version."""
    model_uri = best_run.data.tags.get("vae.model_uri") or f"runs:/{best_run.info.run_id}/{MODEL_ARTIFACT}"
    version = register(model_uri, name, alias)
    mlflow = client()
    mlflow.set_tag(parent_run_id, "vae.best_run_id", best_run.info.run_id)
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            mlflow.log_metric(parent_run_id, f"best_{key}", float(value))
    return f"models:/{name}/{version}"
