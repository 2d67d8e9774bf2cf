"""Training on a real local Ray cluster (Ray Train V2, TorchTrainer, gloo DDP)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vae_service.core.checkpoint import load_model
from vae_service.tracking.mlflow_run import client
from vae_service.jobs.execute import execute
from vae_service.jobs.reporter import Reporter

pytestmark = pytest.mark.slow


def test_two_worker_ddp_shards_are_disjoint_and_weights_stay_identical(ray_cluster, tiny_spec, run_job):
    spec = tiny_spec(resources__num_workers=2, tracking__register_as="tiny-ddp", tracking__experiment="ddp")
    result = run_job(spec)

    assert result.epochs_completed == 1
    # Checked inside the workers after the epoch's steps, with all_gather across both ranks.
    assert result.metrics["shard_overlap"] == 0
    assert result.metrics["ranks_in_sync"] is True
    assert result.metrics["images_per_s"] > 0
    assert 0 < result.metrics["active_units"] <= 4
    model = load_model(result.model_dir)
    assert model.config.latent_dim == 4
    mu, logvar = model.encode(torch.zeros(3, 1, 28, 28))
    assert mu.shape == logvar.shape == (3, 4)
    # Pickle-free: nothing the run left behind is a pickle.
    leftovers = [p for p in Path(result.run_dir).rglob("*") if p.suffix in (".pkl", ".pt", ".pth")]
    assert leftovers == []

    # Tracked: params, metrics, figures, and a registered pickle-free model with its alias.
    mlflow = client()
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.latent_dim"] == "4"
    assert run.data.params["resources.num_workers"] == "2"
    assert run.data.metrics["val_neg_elbo"] == pytest.approx(result.metrics["val_neg_elbo"])
    assert "val_kl_dim_04" in run.data.metrics
    assert run.data.tags["vae.spec_hash"]
    figures = {f.path for f in mlflow.list_artifacts(result.mlflow_run_id, "figures")}
    assert len(figures) >= 6 and "figures/latent_scatter.png" in figures
    version = mlflow.get_model_version_by_alias("tiny-ddp", "candidate")
    assert result.model_uri == f"models:/tiny-ddp/{version.version}"
    import mlflow as mlflow_module

    local = Path(mlflow_module.artifacts.download_artifacts(artifact_uri=result.model_uri))
    names = {p.name for p in local.rglob("*")}
    assert {"MLmodel", "pyfunc_model.py", "model.safetensors", "config.json"} <= names
    assert not [n for n in names if n.endswith(".pkl")]
    encoded = mlflow_module.pyfunc.load_model(result.model_uri).predict(torch.zeros(2, 784).numpy())
    assert list(encoded.columns[:2]) == ["mu_1", "mu_2"] and len(encoded) == 2


def test_loss_falls_and_resume_continues_at_next_epoch(ray_cluster, tiny_spec, run_job):
    spec = tiny_spec(optim__epochs=2)
    first = run_job(spec)
    epochs = [row["epoch"] for row in first.history]
    assert epochs == [0, 1]
    assert first.history[1]["val_neg_elbo"] < first.history[0]["val_neg_elbo"]
    assert first.history[1]["train_neg_elbo"] < first.history[0]["train_neg_elbo"]

    more = tiny_spec(optim__epochs=3)
    resumed = run_job(more, resume=first.run_dir)
    assert [row["epoch"] for row in resumed.history] == [2]
    assert resumed.epochs_completed == 3
    assert resumed.run_dir == first.run_dir
    # It continued from the trained weights, not from scratch.
    assert resumed.metrics["val_neg_elbo"] < first.history[0]["val_neg_elbo"]
    # ...and in the same MLflow run, which now has all three epochs.
    assert resumed.mlflow_run_id == first.mlflow_run_id
    steps = [m.step for m in client().get_metric_history(first.mlflow_run_id, "val_neg_elbo")]
    assert sorted(steps) == [0, 1, 2]

    # Resuming a run with no epochs left (stopped before its model was published) trains
    # nothing and finishes from the last checkpoint.
    again = run_job(more, resume=first.run_dir)
    assert again.history == [] and again.epochs_completed == 3
    assert again.metrics["val_neg_elbo"] == resumed.metrics["val_neg_elbo"]


def test_seeded_single_worker_run_is_reproducible(ray_cluster, tiny_spec, run_job):
    a = run_job(tiny_spec(optim__seed=7))
    b = run_job(tiny_spec(optim__seed=7))
    c = run_job(tiny_spec(optim__seed=8))
    assert a.metrics["val_neg_elbo"] == b.metrics["val_neg_elbo"]
    assert a.metrics["train_loss"] == b.metrics["train_loss"]
    assert a.metrics["val_neg_elbo"] != c.metrics["val_neg_elbo"]


def test_non_finite_loss_stops_the_run_with_epoch_and_step(ray_cluster, tiny_spec):
    spec = tiny_spec(**{"optim__lr": 1e30, "model__likelihood": "gaussian", "tracking__register_as": "never",
                        "tracking__experiment": "nan"})
    outcome = execute(spec, reporter=Reporter.quiet())
    assert (outcome.state, outcome.exit_code, outcome.error.kind) == ("failed", 1, "job_failed")
    assert re.match(r"^non-finite loss at epoch 0 step \d+$", outcome.error.message), outcome.error
    # The MLflow run is marked FAILED with the reason, and nothing was registered.
    mlflow = client()
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("nan").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["vae.error"].startswith("non-finite loss at epoch 0")
    assert not mlflow.search_registered_models("name='never'")
