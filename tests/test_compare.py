"""`vae compare`: the article's autoencoder / KL-only / VAE comparison on a 2-D latent space."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import torch
from png_checks import picture

from vae_service.core.data import ImageSplit
from vae_service.core.model import VAE, ModelConfig
from vae_service.core.spec_loading import SpecError
from vae_service.jobs import compare as C
from vae_service.viz import comparison as V

REPO = Path(__file__).resolve().parents[1]


def _tiny(seed: int) -> VAE:
    torch.manual_seed(seed)
    return VAE(ModelConfig(latent_dim=2, hidden=(16,)))


def test_render_comparison_on_tiny_untrained_models(tmp_path):
    models = {kind: _tiny(seed).eval() for seed, kind in enumerate(V.KINDS)}
    models["kl_only"].train()  # a model in train mode is put back in it
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8, generator=generator)
    test = ImageSplit(images, torch.arange(50) % 10)

    out = V.render_comparison(models, test, tmp_path / "cmp")

    assert [p.name for p in out.paths] == [V.SCATTER_FILE, V.RECON_FILE, V.METRICS_FILE]
    for png in (out.figure, out.reconstructions):
        picture(png)  # decodes, and holds a drawing (tests/png_checks.py)
    rows = list(csv.DictReader(io.StringIO(out.metrics_csv.read_text())))
    assert [r["model"] for r in rows] == list(V.KINDS)
    assert tuple(rows[0]) == V.METRIC_COLUMNS
    for row in rows:
        assert float(row["test_neg_elbo"]) == pytest.approx(float(row["test_recon"]) + float(row["test_kl"]), rel=1e-3)
        assert 0 <= int(row["active_units"]) <= 2
        assert float(row["mu_std"]) > 0
    assert models["kl_only"].training and not models["ae"].training
    # Seeded evaluation: the same models give the same table.
    again = V.render_comparison(models, test, tmp_path / "again")
    assert again.metrics_csv.read_text() == out.metrics_csv.read_text()


def test_scatter_panels_are_square_equal_scale_and_show_the_prior():
    codes = {"ae": torch.randn(200, 2) * 20 + 5, "kl_only": torch.randn(200, 2) * 0.01, "vae": torch.randn(200, 2)}
    fig = V.scatter_figure(codes, torch.arange(200) % 10)
    panels = fig.axes[:3]
    assert [ax.get_title().splitlines()[0] for ax in panels] == ["autoencoder", "KL only", "VAE"]
    for ax, mu in zip(panels, codes.values()):
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert x1 - x0 == pytest.approx(y1 - y0)
        assert x0 < float(mu[:, 0].min()) and float(mu[:, 0].max()) < x1
        assert len(ax.patches) == 2  # the prior's 1σ and 2σ circles
    # Each panel on its own scale: the KL-only blob is not squashed to a dot.
    assert panels[1].get_xlim()[1] - panels[1].get_xlim()[0] < 1.0
    assert panels[0].get_xlim()[1] - panels[0].get_xlim()[0] > 50.0


def test_mu_spread():
    assert V.mu_spread(torch.zeros(10, 2)) == 0.0
    mu = torch.tensor([[-1.0, -3.0], [1.0, 3.0]])  # std 1 and 3 → √((1 + 9) / 2)
    assert V.mu_spread(mu) == pytest.approx(5**0.5)


def test_specs_are_matched_to_objectives_in_any_order():
    paths = [REPO / C.DEFAULT_SPECS[k] for k in ("vae", "ae", "kl_only")]
    specs = C.load_comparison(paths, ["optim.epochs=2", "data.limit=5000"]).specs
    assert list(specs) == list(V.KINDS)
    assert {k: s.objective.kind for k, s in specs.items()} == {k: k for k in V.KINDS}
    assert all(s.optim.epochs == 2 and s.data.limit == 5000 for s in specs.values())
    assert C.comparability_warnings(specs) == []

    with pytest.raises(SpecError, match="already given"):
        C.load_comparison([REPO / C.DEFAULT_SPECS["vae"]] * 3)
    with pytest.raises(SpecError, match="exactly 3"):
        C.load_comparison(paths[:2])
    uneven = dict(C.load_comparison(paths[:2] + [paths[2]], []).specs)
    uneven["ae"] = uneven["ae"].model_copy(update={"model": uneven["ae"].model.model_copy(update={"latent_dim": 3})})
    assert any("ae" in note and "latent_dim" in note for note in C.comparability_warnings(uneven))


@pytest.mark.slow
def test_compare_end_to_end(ray_cluster, tmp_path, run_job):
    from vae_service.tracking.mlflow_run import client

    overrides = [
        "data.limit=2000", "optim.epochs=1", "model.hidden=[64]", "optim.seed=0",
        "resources.cpus_per_worker=1", f"storage.uri={tmp_path / 'runs'}",
        "tracking.figures=false",  # each model's own figures: the comparison's are what is checked
    ]
    job = C.load_comparison(C.default_spec_paths(REPO), overrides)
    specs = job.specs
    result = run_job(job)

    mlflow = client()
    parent = mlflow.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("compare-")
    assert mlflow.get_experiment(parent.info.experiment_id).name == specs["vae"].tracking.experiment
    logged = {f.path for f in mlflow.list_artifacts(result.mlflow_run_id, "comparison")}
    assert {f"comparison/{name}" for name in (V.SCATTER_FILE, V.RECON_FILE, V.METRICS_FILE)} <= logged
    assert Path(result.to_json()["figure"]).is_file()
    assert Path(result.out_dir).parent == (tmp_path / "runs").resolve()
    assert Path(result.out_dir, V.METRICS_FILE).is_file() and Path(result.out_dir, V.RECON_FILE).is_file()

    children = mlflow.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{result.mlflow_run_id}'"
    )
    assert sorted(run.data.tags["vae.compare.role"] for run in children) == sorted(V.KINDS)
    for kind in V.KINDS:
        child_id = result.runs[kind].mlflow_run_id
        assert parent.data.tags[f"vae.compare.{kind}_run_id"] == child_id
        assert mlflow.get_run(child_id).data.tags["vae.kind"] == "train"

    # The article: the KL term alone pulls every code to the origin, the autoencoder spreads
    # its codes out; visible even after one short epoch.
    metrics = result.metrics
    assert metrics["kl_only"]["mu_std"] < 0.2 * metrics["ae"]["mu_std"]
    assert parent.data.metrics["kl_only.mu_std"] == pytest.approx(metrics["kl_only"]["mu_std"])
