"""`vae eval` and the registry's model cards, on models trained for real (shared Ray cluster,
local MLflow store): numbers printed and recorded on the run and the version, versions that
describe themselves, sorting by a metric, and the end-of-training `evaluation` section."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from vae_service.cli import app
from vae_service.tracking.mlflow_run import client

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """Two registered versions of "evaluated" (β 1 and β 4; the second also evaluated during
    training), in a module-wide MLflow store: {"uri", "results": [RunResult, RunResult]}."""
    from vae_service.core.spec_loading import apply_overrides, validate_data
    from vae_service.jobs.execute import execute
    from vae_service.jobs.reporter import Reporter

    root = tmp_path_factory.mktemp("eval")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    results = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for beta, evaluation in ((1.0, "[]"), (4.0, "[nll, elbo, au]")):
            base = {"name": "evaluated", "data": {"limit": 1000, "binarize": "dynamic"},
                    "model": {"hidden": [64], "latent_dim": 4}, "optim": {"epochs": 2, "batch_size": 100, "seed": 0},
                    "resources": {"num_workers": 1, "cpus_per_worker": 1}, "storage": {"uri": str(root / "runs")},
                    "tracking": {"experiment": "evaluated", "register_as": "evaluated", "figures": False}}
            spec = validate_data(apply_overrides(base, [f"objective.beta={beta}", f"evaluation.metrics={evaluation}",
                                                        "evaluation.nll_samples=50"]))
            outcome = execute(spec, reporter=Reporter.quiet())
            assert outcome.error is None, str(outcome.error)
            results.append(outcome.result)
    return {"uri": uri, "root": root, "results": results}


@pytest.fixture
def cli(trained, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])

    def invoke(*args: str, code: int = 0):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert "Traceback" not in result.output, result.output
        assert result.exit_code == code, result.output
        return result

    return invoke


def test_registered_versions_describe_themselves(cli):
    version = client().get_model_version("evaluated", "1")
    assert "VAE (mlp 64, latent 4, β=1.0) on mnist (dynamic binarisation), 2 epochs" in version.description
    assert "test −ELBO" in version.description
    assert {"arch": "mlp", "latent_dim": "4", "beta": "1.0", "dataset": "mnist", "binarize": "dynamic"}.items() <= version.tags.items()
    run = client().get_run(version.run_id)
    assert float(version.tags["test_neg_elbo"]) == pytest.approx(run.data.metrics["test_neg_elbo"], rel=1e-5)


def test_the_evaluation_section_logs_eval_metrics_after_the_last_epoch(trained, cli):
    run = client().get_run(trained["results"][1].mlflow_run_id)
    nll, neg_elbo = run.data.metrics["eval_nll"], run.data.metrics["eval_neg_elbo"]
    assert math.isfinite(nll) and 0 < nll <= neg_elbo + 0.5  # the IS bound is tighter than the ELBO
    assert 1 <= run.data.metrics["eval_active_units"] <= 4
    # One value, at the last epoch: the NaN placeholders of earlier epochs are not logged.
    assert [m.step for m in client().get_metric_history(run.info.run_id, "eval_nll")] == [1]
    # β = 1 trained without an evaluation section logs none.
    assert not any(k.startswith("eval_") for k in client().get_run(trained["results"][0].mlflow_run_id).data.metrics)
    # The card of version 2 carries the numbers (it was registered after they were logged).
    assert float(client().get_model_version("evaluated", "2").tags["eval_nll"]) == pytest.approx(nll, rel=1e-5)


def test_vae_eval_prints_json_and_records_on_run_and_version(cli, trained):
    out = cli("eval", "models:/evaluated/1", "--nll-samples", "20", "--images", "200", "--json")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"nll", "neg_elbo", "active_units", "k", "n_images", "seconds"} <= result.keys()
    assert result["k"] == 20 and result["n_images"] == 200 and result["binary_data"] is True
    assert result["nll"] <= result["neg_elbo"] + 0.5
    assert "mig" not in result  # MNIST has no factors: not computed by default
    version = client().get_model_version("evaluated", "1")
    run = client().get_run(version.run_id)
    assert run.data.metrics["eval_nll"] == pytest.approx(result["nll"])
    assert float(version.tags["eval_nll"]) == pytest.approx(result["nll"], rel=1e-5)
    assert "IS-NLL" in version.description and "(K=20)" in version.description

    # The same seed gives the same numbers; the table names the estimate and the binarisation.
    table = cli("eval", "models:/evaluated/1", "-k", "20", "--images", "200", "--no-record", "--metrics", "nll")
    assert "NLL, importance-sampled" in table.stdout and f"{result['nll']:.2f}" in table.stdout
    assert "−ELBO" not in table.stdout  # only what was asked for


def test_vae_eval_refuses_what_it_cannot_compute(cli):
    mig = cli("eval", "models:/evaluated/1", "--metrics", "mig", code=2)
    assert "need data with known generative factors" in mig.output and "mnist" in mig.output
    assert "unknown metric 'bogus'" in cli("eval", "models:/evaluated/1", "--metrics", "nll,bogus", code=2).output
    assert "--nll-samples 0" in cli("eval", "models:/evaluated/1", "--nll-samples", "0", code=2).output
    assert "no registered model 'nope'" in cli("eval", "models:/nope/1", code=2).output


def test_models_show_and_list_sort_by_a_metric(cli, trained):
    cli("eval", "models:/evaluated/1", "-k", "5", "--images", "100")  # both versions now have eval_nll
    shown = cli("models", "show", "evaluated", "--sort-by", "test_neg_elbo").stdout
    assert "IS-NLL" in shown and "v1  run" in shown and "v2  run" in shown
    values = {int(v): client().get_run(client().get_model_version("evaluated", v).run_id).data.metrics["test_neg_elbo"]
              for v in ("1", "2")}
    best_first = sorted(values, key=values.get)
    assert shown.index(f"v{best_first[0]}  run") < shown.index(f"v{best_first[1]}  run")
    assert "--sort-by bogus: no version has it" in cli("models", "show", "evaluated", "--sort-by", "bogus", code=2).output
    listed = cli("models", "list", "--sort-by", "nll").stdout
    assert "evaluated" in listed and "latent 4" in listed


def test_vae_eval_scores_disentanglement_of_a_dsprites_model_directory(tmp_path):
    """A dSprites model's directory (no MLflow run): mig and factorvae on the factor grid, by
    default; dci only when named; nothing recorded, and the output says so."""
    from vae_service.core.checkpoint import save_model
    from vae_service.core.from_spec import model_config
    from vae_service.core.model import VAE
    from vae_service.core.spec_loading import validate_data

    spec = validate_data({"data": {"dataset": "dsprites"}, "model": {"arch": "conv", "channels": [8, 8, 8, 8],
                                                                     "kernel_size": 4, "latent_dim": 3}})
    model_dir = save_model(tmp_path / "model", VAE(model_config(spec, (1, 64, 64))), extra={"spec": spec.model_dump(mode="json")})
    result = CliRunner().invoke(app, ["eval", str(model_dir), "--points", "200", "-k", "5", "--images", "50", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["dataset"] == "dsprites" and scores["binary_data"] is True  # dSprites pixels are 0 or 1
    assert 0.0 <= scores["mig"] <= 1.0 and 0.0 <= scores["factorvae"] <= 1.0 and "dci" not in scores
    assert "not recorded: a directory has no MLflow run" in result.stderr
