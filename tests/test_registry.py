"""The registry's plumbing, without a store: paging, and no MLflow state left behind. Then what
one real run publishes (one tiny Ray Train run for the module), checked by value: nothing pickled
anywhere, exactly the README's figures, active units recounted, the pyfunc model's predictions.

MLflow's fluent API reads a process-wide tracking URI; vae_service sets it only inside
mlflow_run.fluent_tracking, which uses a private MLflow helper. These tests fail loudly when an
MLflow upgrade moves that helper, or when the block leaks its URI. (tests/test_cli_models.py
checks that logging and registering real models leave the process as they found it.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from artifact_checks import assert_no_pickles, file_names
from mlflow.store.entities.paged_list import PagedList
from png_checks import picture

from vae_service.environment import MLFLOW_PROCESS_DEFAULTS, apply_process_defaults
from vae_service.tracking.mlflow_run import client, fluent_tracking
from vae_service.tracking.registry import all_pages


def _environ() -> dict[str, str]:
    """The environment, less MLflow's private bookkeeping (its telemetry sets and clears
    _MLFLOW_TELEMETRY_SESSION_ID on its own)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("_MLFLOW_")}


def test_mlflow_still_has_the_private_use_tracking_uri():
    try:
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    except ImportError:
        pytest.fail("MLflow moved mlflow.tracking._tracking_service.utils._use_tracking_uri: "
                    "update vae_service.tracking.mlflow_run.fluent_tracking")
    assert callable(_use_tracking_uri)


@pytest.mark.parametrize("configured", [True, False], ids=["env-set", "env-unset"])
def test_fluent_tracking_restores_the_uri_and_the_environment(configured, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if configured:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mine.db'}")
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before, environ = mlflow.get_tracking_uri(), _environ()
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with fluent_tracking(elsewhere):
        assert mlflow.get_tracking_uri() == elsewhere
    assert mlflow.get_tracking_uri() == before
    assert _environ() == environ
    with pytest.raises(RuntimeError), fluent_tracking(elsewhere):
        raise RuntimeError("the block failed")
    assert mlflow.get_tracking_uri() == before
    assert _environ() == environ


def test_all_pages_follows_page_tokens():
    pages = {None: PagedList([1, 2], "a"), "a": PagedList([3], "b"), "b": PagedList([], None)}
    calls = []

    def search(query, max_results, page_token=None):
        calls.append((query, max_results, page_token))
        return pages[page_token]

    assert all_pages(search, "name = 'x'", max_results=2) == [1, 2, 3]
    assert calls == [("name = 'x'", 2, None), ("name = 'x'", 2, "a"), ("name = 'x'", 2, "b")]


def test_apply_process_defaults_fills_only_what_is_unset():
    environ = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}
    apply_process_defaults(environ)
    assert environ == {**MLFLOW_PROCESS_DEFAULTS, "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}


def test_a_run_without_git_on_the_path_logs_no_gitpython_warning(tmp_path):
    """The compose image has no git: MLflow's three GitPython warnings stayed out of job logs."""
    venv_bin = Path(sys.executable).parent  # python, and nothing else, on the PATH
    probe = ("from vae_service.environment import apply_process_defaults; apply_process_defaults(); "
             "from mlflow.utils.git_utils import get_git_commit; print(get_git_commit('.'))")
    env = {"PATH": str(venv_bin), "HOME": str(tmp_path)}
    quiet = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "None"
    assert "git" not in quiet.stderr.lower(), quiet.stderr
    loud = subprocess.run([sys.executable, "-c", probe.replace("apply_process_defaults(); ", "")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "Failed to import Git" in loud.stderr  # what the default silences, so the check above can fail


def test_library_calls_leave_the_environment_alone(monkeypatch):
    for name in MLFLOW_PROCESS_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    environ = _environ()
    client()
    assert _environ() == environ


def test_workers_get_the_process_defaults(monkeypatch):
    from vae_service.environment import forwarded_env

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "45")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    env = forwarded_env()
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "45"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in env  # only what is set is handed on


# ---------------------------------------------------------------------------------------------
# what one real run publishes (Ray Train, 1 worker, 1 epoch)

REGISTERED = "leaves-test"
README_FIGURES = {"reconstructions", "prior_samples", "latent_scatter", "latent_dimensions", "kl_per_dimension",
                  "latent_traversals", "interpolation", "interpolation_slerp"}  # latent_manifold only when 2-D


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """(spec, RunResult) of one tiny registered run with a 4-D latent space, under a temporary
    directory; its MLflow run is in the session's store."""
    from vae_service.core.spec_loading import validate_data
    from vae_service.jobs.execute import execute
    from vae_service.jobs.reporter import Reporter

    spec = validate_data({
        "name": "leaves", "data": {"limit": 2000}, "model": {"hidden": [64], "latent_dim": 4},
        "optim": {"epochs": 1, "batch_size": 100, "seed": 0}, "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "storage": {"uri": str(tmp_path_factory.mktemp("leaves") / "runs")},
        "tracking": {"experiment": "run-artifacts", "register_as": REGISTERED, "alias": "candidate"},
    })
    outcome = execute(spec, reporter=Reporter.quiet())
    assert outcome.error is None, str(outcome.error)
    return spec, outcome.result


@pytest.mark.slow
def test_nothing_a_run_leaves_is_a_pickle(trained, tmp_path):
    """By content: every file of the run directory (checkpoints, model/, JSON), every artifact of
    its MLflow run (figures, spec), and every file of the registered model as MLflow hands it
    out. No file is a pickle, no zip member is one (torch.save's data.pkl)."""
    _, result = trained
    run_dir = Path(result.run_dir)
    names = file_names(run_dir)
    checkpoint = Path(result.checkpoint).name
    assert {f"{checkpoint}/model.safetensors", f"{checkpoint}/optimizer.safetensors", f"{checkpoint}/state.json",
            "model/model.safetensors", "model/config.json", "spec.yaml", "metrics.json", "outcome.json"} <= names, names
    run_artifacts = Path(mlflow.artifacts.download_artifacts(run_id=result.mlflow_run_id, dst_path=str(tmp_path / "run")))
    assert {f"figures/{name}.png" for name in README_FIGURES} <= file_names(run_artifacts)
    model_files = Path(mlflow.artifacts.download_artifacts(artifact_uri=result.model_uri, dst_path=str(tmp_path / "model")))
    assert {"MLmodel", "pyfunc_model.py", "model.safetensors", "config.json"} <= {
        name.rsplit("/", 1)[-1] for name in file_names(model_files)}
    assert_no_pickles([run_dir, run_artifacts, model_files])


@pytest.mark.slow
def test_the_run_logs_exactly_the_readme_figures(trained, tmp_path):
    """README, Tracking: these 8 figures for a latent space that is not 2-D; no more, no fewer."""
    _, result = trained
    logged = {f.path for f in client().list_artifacts(result.mlflow_run_id, "figures")}
    assert logged == {f"figures/{name}.png" for name in README_FIGURES}
    local = Path(mlflow.artifacts.download_artifacts(run_id=result.mlflow_run_id, artifact_path="figures",
                                                     dst_path=str(tmp_path)))
    for path in local.iterdir():
        picture(path)  # decodes, and holds a drawing (tests/png_checks.py)


@pytest.mark.slow
def test_active_units_equal_an_independent_recount(trained):
    """active_units (reported, and logged to MLflow) is the number of dimensions j with
    Cov_x(E_q[z_j | x]) > 0.01 over the validation images, recounted here from the saved model."""
    from vae_service.core.checkpoint import load_model
    from vae_service.core.data import to_unit_float
    from vae_service.core.from_spec import training_data

    spec, result = trained
    model = load_model(result.model_dir).eval()
    val = training_data(spec).val
    with torch.no_grad():
        mu, _ = model.encode(to_unit_float(val.images))
    variance = ((mu - mu.mean(dim=0)) ** 2).mean(dim=0)  # over x, per dimension
    recount = int((variance > 0.01).sum())
    assert 0 < recount <= 4, variance  # not a trivial 0 == 0
    assert result.metrics["active_units"] == recount, (result.metrics["active_units"], variance.tolist())
    assert client().get_run(result.mlflow_run_id).data.metrics["active_units"] == recount
    assert json.loads((Path(result.run_dir) / "metrics.json").read_text())["metrics"]["active_units"] == recount


@pytest.mark.slow
def test_the_registered_pyfunc_predicts_the_models_own_mu_and_logvar(trained):
    """mlflow.pyfunc.load_model(models:/NAME/N).predict(images) returns, value by value, the
    trained encoder's μ and log σ² on the same images, given as the data holds them: grey levels
    0–255, (N, 784) as the logged signature says. Always read as grey levels: a dark batch (every value
    0 or 1) is not taken for images already in [0, 1] (the served model once did, by the batch's
    maximum)."""
    from vae_service.core.checkpoint import load_model
    from vae_service.core.data import to_unit_float
    from vae_service.core.from_spec import training_data

    spec, result = trained
    assert result.model_uri == f"models:/{REGISTERED}/1"
    images = training_data(spec).val.images[:32]
    vae = load_model(result.model_dir).eval()
    with torch.no_grad():
        mu, logvar = vae.encode(to_unit_float(images))
    pyfunc = mlflow.pyfunc.load_model(result.model_uri)
    grey_levels = images.numpy().astype(np.float32)
    encoded = pyfunc.predict(grey_levels.reshape(len(images), -1))
    assert list(encoded.columns) == [f"mu_{j}" for j in range(1, 5)] + [f"logvar_{j}" for j in range(1, 5)]
    np.testing.assert_allclose(encoded[[f"mu_{j}" for j in range(1, 5)]].to_numpy(), mu.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoded[[f"logvar_{j}" for j in range(1, 5)]].to_numpy(), logvar.numpy(), rtol=1e-5, atol=1e-6)
    dark = (images > 128).to(torch.float32)  # grey levels 0 and 1: nearly black
    with torch.no_grad():
        dark_mu, _ = vae.encode(dark / 255)
    served_dark = pyfunc.predict(dark.reshape(len(dark), -1).numpy())
    np.testing.assert_allclose(served_dark[[f"mu_{j}" for j in range(1, 5)]].to_numpy(), dark_mu.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_logged_model_has_a_signature_and_an_input_example_that_it_accepts(trained):
    """MLflow warned at the end of every run without them; the example is what predict takes."""
    _, result = trained
    info = mlflow.models.get_model_info(result.model_uri)
    assert info.signature is not None and list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 784]
    assert info.saved_input_example_info is not None
    model = mlflow.pyfunc.load_model(result.model_uri)
    example = model.input_example
    assert example.shape == (2, 784)
    assert model.predict(example).shape == (2, 2 * 4)
