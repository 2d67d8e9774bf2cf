"""Your own data (data.source): image folders (grey and RGB, local disk and moto's S3), NumPy
blobs and a Parquet table, generated here; read through Ray Data, in memory or streamed to each
worker's shard; the up-front check's errors; the memory and streaming paths agree on MNIST."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from vae_service.cli import app
from vae_service.core import metrics as M
from vae_service.core.checkpoint import read_model_config
from vae_service.core.data import DataError
from vae_service.core.preprocessing import TEST, TRAIN, VAL, Preprocessing, RunningMoments, row_hashes, split_of
from vae_service.core.spec import TrainSpec
from vae_service.core.spec_loading import apply_overrides, validate_data
from vae_service.sources.check import inspect
from vae_service.tracking.mlflow_run import client

VAE = [sys.executable, "-m", "vae_service.cli"]


# ---------------------------------------------------------------------------------------------
# data generated in the test


def write_pngs(folder: Path, n_per_class: int = 100, side: int = 16, rgb: bool = False, seed: int = 0) -> Path:
    """Two classes of noisy images (bright top half vs bright bottom half), one subfolder each."""
    rng = np.random.default_rng(seed)
    for label, bright_top in (("top", True), ("bottom", False)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 60, (side, side, 3) if rgb else (side, side)).astype(np.uint8)
            half = slice(0, side // 2) if bright_top else slice(side // 2, side)
            pixels[half] += 180
            if rgb:
                pixels[..., 0] //= 2  # colours differ per channel
            Image.fromarray(pixels).save(folder / label / f"{i:04d}.png")
    return folder


def blobs(n: int = 600, features: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = rng.normal(0, 5, (3, features))
    return centres[labels] + rng.normal(0, 1, (n, features)) * 2.0 + 10.0, labels


def spec_for(tmp_path: Path, data: dict, **sections) -> TrainSpec:
    base = {
        "name": "own",
        "data": data,
        "model": {"hidden": [32], "latent_dim": 2, **sections.pop("model", {})},
        "optim": {"epochs": 1, "batch_size": 32, "seed": 0, **sections.pop("optim", {})},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, **sections.pop("resources", {})},
        "storage": {"uri": str(tmp_path / "runs")},
        **sections,
    }
    return validate_data(apply_overrides(base, []))


def pipeline_of(result) -> str:
    return client().get_run(result.mlflow_run_id).data.params["data.pipeline"]


# ---------------------------------------------------------------------------------------------
# the pieces, without Ray


def test_split_is_a_function_of_content_and_takes_the_asked_shares():
    x = np.random.default_rng(0).normal(size=(20_000, 4))
    splits = split_of(row_hashes(x), val_fraction=0.1, test_fraction=0.2)
    shares = [float(np.mean(splits == s)) for s in (TRAIN, VAL, TEST)]
    assert shares == pytest.approx([0.7, 0.1, 0.2], abs=0.015)
    # the same items in another order (another block layout, another worker) land in the same split
    order = np.random.default_rng(1).permutation(len(x))
    assert np.array_equal(split_of(row_hashes(x[order]), 0.1, 0.2), splits[order])


def test_running_moments_match_numpy_over_uneven_batches():
    x = np.random.default_rng(0).normal(3.0, 2.0, (1000, 5))
    x[:, 4] = 7.0  # a constant feature standardises to 0, not to NaN
    moments = RunningMoments()
    for part in np.split(x, [1, 10, 333, 999]):
        moments.update(part)
    assert np.allclose(moments.mean, x.mean(0)) and np.allclose(moments.std()[:4], x.std(0)[:4])
    assert moments.std()[4] == 1.0


@pytest.mark.parametrize("data, model, field", [
    ({"source": "/x", "format": "numpy"}, {}, "model.likelihood"),
    ({"source": "/x", "format": "numpy"}, {"arch": "conv", "likelihood": "gaussian"}, "model.arch"),
    ({"source": "/x"}, {}, "data.format"),
    ({"format": "images"}, {}, "data.source"),
    ({"source": "/x", "format": "images", "key": "X"}, {}, "data.key"),
    ({"source": "/x", "format": "images", "columns": ["a"]}, {}, "data.columns"),
    ({"source": "/x", "format": "images", "label": "name"}, {}, "data.label"),
    ({"source": "/x", "format": "images", "dataset": "dsprites"}, {}, "data.dataset"),
    ({"source": "/x", "format": "numpy", "binarize": "dynamic"}, {"likelihood": "gaussian"}, "data.binarize"),
    ({"source": "/x", "format": "images", "val_fraction": 0.5, "test_fraction": 0.5}, {}, "data.val_fraction"),
    ({"dataset": "mnist", "image_size": 32}, {}, "data.image_size"),
])
def test_spec_refuses_fields_that_do_not_fit_the_format(data, model, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        TrainSpec(data=data, model=model)


def test_a_model_too_big_for_the_images_is_refused_by_the_spec():
    with pytest.raises(ValueError, match="model.hidden"):
        TrainSpec(data={"source": "/x", "format": "images", "image_size": 1024, "channels": 3},
                  model={"hidden": [16_384, 16_384]})


def test_check_refuses_bad_sources_naming_the_field(tmp_path):
    def refused(data: dict, match: str, model: dict | None = None):
        with pytest.raises(DataError, match=match):
            inspect(TrainSpec(data=data, model=model or {}))

    refused({"source": str(tmp_path / "nowhere"), "format": "images"}, r"data\.source: .*nowhere does not exist")
    (tmp_path / "empty").mkdir()
    refused({"source": str(tmp_path / "empty"), "format": "images"}, r"data\.source: no images files")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(mixed / "b.png")
    refused({"source": str(mixed), "format": "images"}, r"data\.image_size: the images have different sizes")
    (mixed / "c.png").write_bytes(b"not a png")
    refused({"source": str(mixed), "format": "images", "image_size": 16}, r"data\.source: .*c\.png is not a readable image")
    x, y = blobs(50)
    x[7, 3] = np.nan
    np.savez(tmp_path / "nan.npz", X=x, y=y)
    vectors = {"likelihood": "gaussian"}
    refused({"source": str(tmp_path / "nan.npz"), "format": "numpy", "key": "X"}, r"data\.key: .*NaN .*row 7, feature 3", vectors)
    refused({"source": str(tmp_path / "nan.npz"), "format": "numpy"}, r"data\.key: .* holds arrays \['X', 'y'\]", vectors)
    refused({"source": str(tmp_path / "nan.npz"), "format": "numpy", "key": "Z"}, r"data\.key: .* no array 'Z'", vectors)
    np.save(tmp_path / "words.npy", np.array([["a", "b"]]))
    refused({"source": str(tmp_path / "words.npy"), "format": "numpy"}, r"data\.key: .*<U1 values", vectors)
    pq.write_table(pa.table({"f": [1.0, 2.0], "name": ["a", "b"]}), tmp_path / "t.parquet")
    refused({"source": str(tmp_path / "t.parquet"), "format": "parquet", "columns": ["f", "name"]},
            r"data\.columns: column 'name' .* is string, not numeric", vectors)
    refused({"source": str(tmp_path / "t.parquet"), "format": "parquet", "columns": ["g"]}, r"data\.columns: .* no column 'g'", vectors)


def test_check_reads_the_input_shape_from_a_sample(tmp_path):
    folder = write_pngs(tmp_path / "pngs", n_per_class=3, side=12, rgb=True)
    found = inspect(TrainSpec(data={"source": str(folder), "format": "images", "channels": 3, "label": "folder"}))
    assert found.input_shape == (3, 12, 12) and found.items == 6 and found.label_names == ("bottom", "top")
    resized = inspect(TrainSpec(data={"source": f"{folder}/top/*.png", "format": "images", "image_size": 8}))
    assert resized.input_shape == (1, 8, 8) and resized.items == 3


@pytest.mark.slow
def test_a_bad_source_is_exit_2_with_the_field_and_no_traceback(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: x\ndata: {{source: {tmp_path / 'missing'}, format: images}}\nstorage: {{uri: {tmp_path}}}\n")
    done = subprocess.run(VAE + ["run", str(spec)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "data.source" in done.stderr and "does not exist" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------
# training on it (a real Ray cluster)


@pytest.mark.slow
def test_rgb_folder_trains_in_memory_to_a_registered_model_with_colour_figures(ray_cluster, run_job, tmp_path):
    folder = write_pngs(tmp_path / "pngs", rgb=True)
    spec = spec_for(tmp_path, {"source": str(folder), "format": "images", "channels": 3, "label": "folder"},
                    model={"likelihood": "continuous_bernoulli"}, tracking={"register_as": "own-rgb"})
    result = run_job(spec)
    assert pipeline_of(result) == "memory"
    assert np.isfinite(result.metrics[M.VAL_NEG_ELBO]) and np.isfinite(result.metrics[M.TEST_NEG_ELBO])
    config = read_model_config(result.model_dir)
    prep = Preprocessing.of_model_config(config)
    assert prep.input_shape == (3, 16, 16) and prep.label_names == ("bottom", "top") and not prep.vectors
    assert config["model_config"]["image_shape"] == [3, 16, 16]
    figures = {a.path for a in client().list_artifacts(result.mlflow_run_id, "figures")}
    assert {"figures/reconstructions.png", "figures/latent_scatter.png"} <= figures
    assert result.model_uri == "models:/own-rgb/1"


@pytest.mark.slow
def test_grey_folder_on_s3_streams_to_two_workers_reading_disjoint_shards(ray_cluster, run_job, tmp_path, s3_server):
    folder = write_pngs(tmp_path / "pngs", n_per_class=120)
    bucket = s3_server["make_bucket"]()
    for path in folder.rglob("*.png"):
        s3_server["client"].upload_file(str(path), bucket, f"faces/{path.relative_to(folder)}")
    spec = spec_for(tmp_path, {"source": f"s3://{bucket}/faces/", "format": "images", "loading": "streaming"},
                    optim={"epochs": 2}, resources={"num_workers": 2})
    result = run_job(spec)
    assert pipeline_of(result) == "streaming"
    for epoch in result.history:
        assert epoch[M.SHARD_OVERLAP] == 0 and epoch[M.RANKS_IN_SYNC] is True
    # both ranks' items, all of the train split (240 items less val/test, whole batches of 16 per rank)
    assert 150 <= result.history[-1][M.TRAIN_ITEMS] <= 200
    assert Preprocessing.of_model_config(read_model_config(result.model_dir)).input_shape == (1, 16, 16)


@pytest.mark.slow
def test_numpy_blobs_train_with_standardisation_from_the_train_split(ray_cluster, run_job, tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "cells.npz", X=x, y=y)
    spec = spec_for(tmp_path, {"source": str(tmp_path / "cells.npz"), "format": "numpy", "key": "X", "label": "y"},
                    model={"likelihood": "gaussian"}, optim={"epochs": 2})
    result = run_job(spec)
    prep = Preprocessing.of_model_config(read_model_config(result.model_dir))
    assert prep.vectors and prep.input_shape == (8,) and prep.label_names == ("0", "1", "2")
    train = split_of(row_hashes(x), 0.1, 0.1) == TRAIN
    assert np.allclose(prep.mean, x[train].mean(0)) and np.allclose(prep.std, x[train].std(0))
    assert not np.allclose(prep.mean, x.mean(0))  # the statistics are the train split's, not all items'
    figures = {a.path for a in client().list_artifacts(result.mlflow_run_id, "figures")}
    assert "figures/latent_scatter.png" in figures
    assert np.isfinite(result.metrics[M.TEST_NEG_ELBO])
    # `vae eval` reads the model's own test items again (same content-hash split, same statistics)
    done = CliRunner().invoke(app, ["eval", result.model_dir, "-k", "20", "--images", "1000", "--json", "--no-record"])
    assert done.exit_code == 0, done.output
    evaluated = json.loads(done.stdout.strip().splitlines()[-1])
    assert evaluated["dataset"] == str(tmp_path / "cells.npz") and evaluated["n_images"] == len(x[~train]) - int((split_of(row_hashes(x), 0.1, 0.1) == VAL).sum())
    # The same test items, standardised the same way (not divided by 255 as images are): `vae eval`
    # draws one posterior sample per item after torch.manual_seed(0), 100 items a batch; the same
    # draws on the items picked and standardised here give its number, to float rounding.
    import torch

    from vae_service.core.checkpoint import load_model
    from vae_service.core.objective import Objective, compute_loss

    vae = load_model(result.model_dir).eval()
    test = split_of(row_hashes(x), 0.1, 0.1) == TEST
    items = torch.as_tensor(prep.standardise(x[test]), dtype=torch.float32)
    assert len(items) == evaluated["n_images"]
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        one_draw = torch.cat([compute_loss(vae, items[a : a + 100], Objective(kind="vae")).neg_elbo
                              for a in range(0, len(items), 100)])
    assert evaluated["neg_elbo"] == pytest.approx(float(one_draw.mean()), rel=1e-5)
    # The run's own test −ELBO is the same estimate with other draws (the training worker's random
    # state), so it cannot be equal: it must agree within the Monte Carlo error of one draw per
    # item, measured here from 1,000 draws per item (5 standard errors of the difference of two
    # independent estimates; the KL term is exact, only the reconstruction term varies).
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        draws = torch.stack([compute_loss(vae, items, Objective(kind="vae")).neg_elbo for _ in range(1000)])
    expected = float(draws.mean())
    standard_error = float(draws.var(dim=0).mean().sqrt()) / len(items) ** 0.5
    assert abs(evaluated["neg_elbo"] - expected) <= 5 * standard_error, (evaluated["neg_elbo"], expected, standard_error)
    assert abs(result.metrics[M.TEST_NEG_ELBO] - expected) <= 5 * standard_error, \
        (result.metrics[M.TEST_NEG_ELBO], expected, standard_error)
    assert abs(evaluated["neg_elbo"] - result.metrics[M.TEST_NEG_ELBO]) <= 5 * 2 ** 0.5 * standard_error
    assert np.isfinite(evaluated["nll"]) and evaluated["nll"] <= evaluated["neg_elbo"] + 0.05 * abs(evaluated["neg_elbo"])


@pytest.mark.slow
def test_a_served_vector_model_gives_its_encoders_codes_as_vae_encode_and_encode_dataset_do(ray_cluster, run_job, tmp_path):
    """Feature vectors far from 0 (mean about 1,000, as measurements may be), given to the model
    as the file holds them: MLflow's pyfunc `predict`, `vae encode` and `vae encode-dataset` each
    give the encoder's codes of the items standardised by the model's own statistics, whatever
    the batch. (The served model once skipped the standardisation and divided by 255 any batch
    whose maximum exceeded 1: codes off by up to 3 where they are of order 1.)"""
    import mlflow
    import torch

    from vae_service.core.checkpoint import load_model

    x, y = blobs(features=6, seed=3)
    x = x * 10 + 1000
    np.savez(tmp_path / "far.npz", X=x, y=y)
    data = {"source": str(tmp_path / "far.npz"), "format": "numpy", "key": "X", "label": "y"}
    spec = spec_for(tmp_path, data, model={"likelihood": "gaussian"})
    result = run_job(spec)
    prep = Preprocessing.of_model_config(read_model_config(result.model_dir))
    with torch.no_grad():
        mu, logvar = load_model(result.model_dir).eval().encode(torch.from_numpy(prep.standardise(x)))
    assert float(mu.abs().max()) < 50  # codes of order 1: the reference itself is sane

    served = mlflow.pyfunc.load_model(result.model_uri)
    x32 = x.astype(np.float32)  # the logged signature's dtype
    whole = served.predict(x32)
    np.testing.assert_allclose(whole[["mu_1", "mu_2"]].to_numpy(), mu.numpy(), atol=1e-4)
    np.testing.assert_allclose(whole[["logvar_1", "logvar_2"]].to_numpy(), logvar.numpy(), atol=1e-4)
    in_pieces = np.concatenate([served.predict(x32[:1]).to_numpy(), served.predict(x32[1:40]).to_numpy()])
    np.testing.assert_allclose(in_pieces, whole.to_numpy()[:40], atol=1e-6)

    test_rows = np.flatnonzero(split_of(row_hashes(x), 0.1, 0.1) == TEST)
    shown = CliRunner().invoke(app, ["encode", result.model_dir, "--index", "3", "--json"])
    assert shown.exit_code == 0, shown.output
    np.testing.assert_allclose(json.loads(shown.stdout.strip().splitlines()[-1])["mu"], mu[test_rows[3]].numpy(), atol=1e-5)

    spec_file = tmp_path / "encode.yaml"
    spec_file.write_text(json.dumps({"data": data, "model": {"likelihood": "gaussian"}}))  # JSON is YAML
    done = CliRunner().invoke(app, ["encode-dataset", result.model_dir, str(spec_file), "-o", str(tmp_path / "codes"), "-q"])
    assert done.exit_code == 0, done.output
    rows = {row["id"]: row for row in pq.read_table(tmp_path / "codes").to_pylist()}
    assert len(rows) == len(x)
    for i in (0, int(test_rows[3]), len(x) - 1):
        np.testing.assert_allclose(rows[f"{tmp_path / 'far.npz'}#{i}"]["mu"], mu[i].numpy(), atol=1e-5)


@pytest.mark.slow
def test_parquet_table_trains_on_its_numeric_columns(ray_cluster, run_job, tmp_path):
    x, y = blobs(400, features=5)
    table = {f"f{i}": x[:, i] for i in range(5)} | {"kind": np.array(["a", "b", "c"])[y], "note": ["n"] * len(y)}
    (tmp_path / "table").mkdir()
    pq.write_table(pa.table(table).slice(0, 200), tmp_path / "table" / "part-0.parquet")
    pq.write_table(pa.table(table).slice(200), tmp_path / "table" / "part-1.parquet")
    spec = spec_for(tmp_path, {"source": str(tmp_path / "table"), "format": "parquet", "label": "kind"},
                    model={"likelihood": "gaussian"})
    result = run_job(spec)
    prep = Preprocessing.of_model_config(read_model_config(result.model_dir))
    assert prep.input_shape == (5,) and prep.label_names == ("a", "b", "c")
    # KL per latent dimension on the validation items: 2 finite, non-negative plain floats (JSON as is).
    kl_per_dim = result.metrics[M.VAL_KL_PER_DIM]
    assert isinstance(kl_per_dim, list) and len(kl_per_dim) == 2, kl_per_dim
    assert all(type(v) is float and np.isfinite(v) and v >= 0 for v in kl_per_dim), kl_per_dim
    assert json.loads(json.dumps(kl_per_dim)) == kl_per_dim
    # Its sum is the validation KL: the dimensions add up.
    assert sum(kl_per_dim) == pytest.approx(result.metrics[M.VAL_KL], rel=1e-5)


@pytest.mark.slow
def test_memory_and_streaming_paths_give_the_same_loss_curve_on_mnist(ray_cluster, run_job, tiny_spec):
    curves = {}
    for loading in ("memory", "streaming"):
        result = run_job(tiny_spec(data__loading=loading, optim__epochs=3, optim__batch_size=50))
        assert pipeline_of(result) == loading
        curves[loading] = [epoch[M.VAL_NEG_ELBO] for epoch in result.history]
    memory, streaming = np.array(curves["memory"]), np.array(curves["streaming"])
    # same data, same model and seed; only the order of the batches differs (a global permutation vs
    # a shuffle buffer): the curves agree within a few percent, and both fall
    assert np.all(np.abs(memory - streaming) / memory < 0.05), curves
    assert memory[-1] < memory[0] and streaming[-1] < streaming[0]
