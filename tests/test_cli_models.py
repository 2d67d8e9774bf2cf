"""`vae models list|show|promote`, `vae sample|interpolate|encode` against a real MLflow store.

A SQLite store in a temporary directory holds one registered model, "tiny", with two versions
(two tiny untrained VAEs, each logged from its own run); the CLI runs in-process through
typer's CliRunner. No Ray: nothing here trains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from artifact_checks import assert_no_pickles, file_names, pickles_under
from png_checks import picture, strip_tiles
from typer.testing import CliRunner

from vae_service.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRICS_V1 = {"val_neg_elbo": 123.5, "test_neg_elbo": 124.25, "active_units": 2.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """{tracking_uri, runs: [run ids], dirs: [local model dirs], vaes: [models], model_ids}."""
    import mlflow

    from vae_service.core.checkpoint import save_model
    from vae_service.core.model import VAE, ModelConfig
    from vae_service.core.spec_loading import validate_data
    from vae_service.tracking import registry
    from vae_service.tracking.mlflow_run import client, start_run

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)  # whatever a local store puts beside the working directory stays in root
        spec = validate_data({})
        runs, dirs, vaes, model_uris = [], [], [], []
        process_state = _process_state()
        for seed in (0, 1):
            torch.manual_seed(seed)
            vae = VAE(ModelConfig(latent_dim=2, hidden=(32,))).eval()
            model_dir = save_model(root / f"model-{seed}", vae)
            run_id = start_run(spec, "t")
            if seed == 0:
                client().log_batch(run_id, metrics=[
                    mlflow.entities.Metric(k, v, 0, 0) for k, v in METRICS_V1.items()
                ])
            model_uri = registry.log_model(run_id, model_dir, vae)
            version = registry.register(model_uri, "tiny", "candidate")
            assert version == seed + 1
            runs.append(run_id)
            dirs.append(model_dir)
            vaes.append(vae)
            model_uris.append(model_uri)
        # No hidden global state: MLflow's process-wide URIs and the environment are as they were.
        assert _process_state() == process_state
        yield {"uri": uri, "root": root, "runs": runs, "dirs": dirs, "vaes": vaes, "model_uris": model_uris}


@pytest.fixture
def cli(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    monkeypatch.chdir(store["root"])
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args])
        assert "Traceback" not in result.output, result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


def _process_state():
    """MLflow's process-wide URIs and active run, and the environment (less MLflow's private
    bookkeeping, e.g. _MLFLOW_TELEMETRY_SESSION_ID, which its telemetry sets in the background)."""
    import mlflow

    environ = {name: value for name, value in os.environ.items() if not name.startswith("_MLFLOW_")}
    return mlflow.get_tracking_uri(), mlflow.get_registry_uri(), mlflow.active_run(), environ


def _mlflow_client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])


def _png(path: Path) -> bytes:
    """The file's bytes, once its pixels are decoded and hold a drawing (tests/png_checks.py)."""
    picture(path)
    return path.read_bytes()


def _expect_user_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# the registry


def test_models_list_shows_latest_version_and_aliases(cli):
    result = cli("models", "list")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "tiny" in line)
    assert "2" in row and "@candidate→2" in row


def test_models_show_lists_versions_aliases_metrics_and_runs(cli, store):
    result = cli("models", "show", "tiny")
    assert result.exit_code == 0, result.output
    out = result.stdout
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert set(rows) >= {"1", "2"}, out
    assert "@candidate" in rows["2"]
    assert "123.50" in rows["1"] and "124.25" in rows["1"]  # val/test −ELBO of version 1's run
    assert rows["1"].split()[-1] == "2"  # active units
    assert "—" in rows["2"]  # version 2's run logged no metrics
    # Below the table, each version's run id, whole even at 80 columns.
    assert f"v1  run {store['runs'][0]}" in out and f"v2  run {store['runs'][1]}" in out


def test_promote_moves_champion(cli, store):
    mlflow = _mlflow_client(store)
    result = cli("models", "promote", "tiny", "1")  # the default alias is champion
    assert result.exit_code == 0, result.output
    assert str(mlflow.get_model_version_by_alias("tiny", "champion").version) == "1"
    result = cli("models", "promote", "tiny", "2", "--alias", "champion")
    assert result.exit_code == 0, result.output
    assert "1 → 2" in result.stderr
    assert str(mlflow.get_model_version_by_alias("tiny", "champion").version) == "2"
    assert str(mlflow.get_model_version_by_alias("tiny", "candidate").version) == "2"  # untouched
    result = cli("models", "show", "tiny")
    assert "@candidate→2, @champion→2" in result.stdout  # the title lists every alias


def test_promote_mistakes_exit_2(cli, store):
    _expect_user_error(cli("models", "promote", "tiny", "9"), "version 9", "versions: 1, 2", "@candidate→2")
    _expect_user_error(cli("models", "promote", "nope", "1"), "'nope'", "models: tiny")
    _expect_user_error(cli("models", "promote", "tiny", "x"), "VERSION")
    _expect_user_error(cli("models", "promote", "tiny", "1", "--alias", "latest"), "latest")
    _expect_user_error(cli("models", "show", "nope"), "'nope'", "models: tiny")


def test_missing_local_store_is_an_error_and_is_not_created(cli, tmp_path, monkeypatch):
    missing = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    _expect_user_error(cli("models", "list"), "no MLflow tracking store", str(missing))
    _expect_user_error(cli("sample", "models:/tiny/1", "-o", tmp_path / "g.png"), "no MLflow tracking store")
    assert not missing.exists()


def test_commands_ignore_mlflows_process_wide_registry_uri(cli, store, tmp_path, monkeypatch):
    """Every lookup names the store MLFLOW_TRACKING_URI gives (MLflow's own download of a
    models:/ URI would resolve it through its process-wide registry URI)."""
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{elsewhere}")
    for uri in ("models:/tiny@candidate", "models:/tiny/1", f"runs:/{store['runs'][0]}/model", store["model_uris"][0]):
        result = cli("sample", uri, "-n", "4", "-o", tmp_path / "grid.png")
        assert result.exit_code == 0, result.output
    assert cli("models", "show", "tiny").exit_code == 0
    assert not elsewhere.exists()


def test_the_pickle_check_finds_pickles_by_content(tmp_path):
    """The check below can fail: it finds pickles of every protocol, torch.save files (zip and
    legacy) whatever they are called, and damaged zips it cannot read; it passes safetensors,
    JSON and PNG."""
    import io
    import pickle
    import zipfile

    from safetensors.torch import save_file

    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / f"p{protocol}.json").write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=protocol))
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buffer)
    (tmp_path / "model.safetensors").write_bytes(buffer.getvalue())  # a torch zip under a safe name
    torch.save({"w": torch.zeros(3)}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    expected = {str(tmp_path / f"p{protocol}.json") for protocol in range(pickle.HIGHEST_PROTOCOL + 1)}
    expected |= {f"{tmp_path / 'model.safetensors'}!archive/data.pkl", str(tmp_path / "legacy.bin")}
    assert set(pickles_under(tmp_path)) == expected
    clean = tmp_path / "clean"
    clean.mkdir()
    save_file({"w": torch.randn(64, 64)}, clean / "model.safetensors")
    (clean / "config.json").write_text(json.dumps({"latent_dim": 2}))
    (clean / "grid.png").write_bytes(PNG_SIGNATURE + bytes(range(256)))
    assert pickles_under(clean) == []
    # A damaged zip (a torch.save file cut short, one with a corrupted member) is reported, not passed as clean.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    whole = buffer.getvalue()
    (damaged / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("weights.json", json.dumps({"w": [0.0] * 64}))
    corrupted = bytearray(zipped.getvalue())
    start = corrupted.index(b'{"w"')  # the member's stored bytes
    corrupted[start : start + 8] = b"\xff" * 8  # its CRC no longer matches
    (damaged / "crc.bin").write_bytes(bytes(corrupted))
    found = pickles_under(damaged)
    assert len(found) == 2 and all("a zip that cannot be read" in hit for hit in found), found
    assert found[0].startswith(f"{damaged / 'crc.bin'} (") and found[1].startswith(f"{damaged / 'cut.safetensors'} (")
    with pytest.raises(AssertionError, match="cannot be read"):
        assert_no_pickles([damaged])


def test_model_artifacts_hold_no_pickle(store, tmp_path):
    """Every file of each logged model, downloaded from MLflow, and everything the store left
    on disk: no file is a pickle (by content) and no zip member is one."""
    import mlflow

    mlflow_client = _mlflow_client(store)
    for index, model_uri in enumerate(store["model_uris"]):
        location = mlflow_client.get_logged_model(model_uri.removeprefix("models:/")).artifact_location
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(tmp_path / str(index)),
                                                         tracking_uri=store["uri"]))
        names = {name.rsplit("/", 1)[-1] for name in file_names(local)}
        assert {"MLmodel", "pyfunc_model.py", "model.safetensors", "config.json"} <= names, names  # models from code
        assert_no_pickles([local])
    assert_no_pickles([store["root"]])


def test_pyfunc_predict_returns_the_models_own_mu_and_logvar(store, monkeypatch):
    """mlflow.pyfunc.load_model(uri).predict(images) gives, value by value, what the VAE's
    encoder gives on the same images (README: grey levels 0–255 in, μ and log σ² per latent
    dimension out)."""
    import mlflow

    from vae_service.core.data import load_mnist, to_unit_float
    from vae_service.tracking.mlflow_run import fluent_tracking

    grey_levels = load_mnist(None, download=False, val_fraction=0.0).test.images[:16]
    images = to_unit_float(grey_levels)
    flat = grey_levels.reshape(16, -1).numpy().astype(np.float32)
    for model_uri, vae in zip(store["model_uris"], store["vaes"]):
        with fluent_tracking(store["uri"]):
            encoded = mlflow.pyfunc.load_model(model_uri).predict(flat)
        with torch.no_grad():
            mu, logvar = vae.encode(images)
        assert list(encoded.columns) == ["mu_1", "mu_2", "logvar_1", "logvar_2"] and len(encoded) == 16
        np.testing.assert_allclose(encoded[["mu_1", "mu_2"]].to_numpy(), mu.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(encoded[["logvar_1", "logvar_2"]].to_numpy(), logvar.numpy(), rtol=1e-5, atol=1e-6)
    # The two versions are different models: the comparison above can tell them apart.
    with torch.no_grad():
        assert not torch.allclose(store["vaes"][0].encode(images)[0], store["vaes"][1].encode(images)[0], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# drawing from a model


def test_sample_from_alias_version_run_and_directory(cli, store, tmp_path):
    sources = {
        "alias": "models:/tiny@candidate",  # version 2
        "version": "models:/tiny/1",
        "run": f"runs:/{store['runs'][0]}/model",
        "dir": str(store["dirs"][0]),  # version 1's weights, read in place
    }
    pictures = {}
    for key, uri in sources.items():
        out = tmp_path / key / "grid.png"  # the parent folder is created
        result = cli("sample", uri, "-n", "16", "-o", out, "--seed", "3")
        assert result.exit_code == 0, result.output
        pictures[key] = _png(out)
    # Same seed, same weights → the same picture; version 2 draws something else.
    assert pictures["version"] == pictures["dir"] == pictures["run"]
    assert pictures["alias"] != pictures["version"]


def test_sample_mistakes_exit_2(cli, tmp_path):
    out = tmp_path / "g.png"
    _expect_user_error(cli("sample", "models:/tiny@nope", "-o", out), "alias @nope", "versions: 1, 2", "@candidate→2")
    _expect_user_error(cli("sample", "models:/tiny/7", "-o", out), "version 7", "versions: 1, 2", "@candidate→2")
    _expect_user_error(cli("sample", "models:/nope@champion", "-o", out), "'nope'", "models: tiny")
    _expect_user_error(cli("sample", "models:/tiny", "-o", out), "versions: 1, 2")
    _expect_user_error(cli("sample", tmp_path / "no-such-dir", "-o", out), "no-such-dir")
    _expect_user_error(cli("sample", "models:/tiny/1", "-n", "0", "-o", out), "-n 0")
    _expect_user_error(cli("sample", "models:/tiny/1", "-n", "100000", "-o", out), "-n 100000")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    _expect_user_error(cli("sample", "models:/tiny/1", "-o", a_file / "grid.png"), "not a directory")
    _expect_user_error(cli("sample", "models:/tiny/1", "-o", tmp_path), "PNG")
    _expect_user_error(cli("sample", "models:/tiny/1", "-o", tmp_path / "grid.jpg"), ".png")
    assert not out.exists()


def _path_between(mu_a: torch.Tensor, mu_b: torch.Tensor, steps: int, method: str) -> torch.Tensor:
    """The codes from μ_A to μ_B, t = 0 … 1, written out here (not the service's helper)."""
    t = torch.linspace(0.0, 1.0, steps)[:, None]
    if method == "linear":
        return mu_a + t * (mu_b - mu_a)
    omega = torch.arccos(torch.clamp(torch.dot(mu_a / mu_a.norm(), mu_b / mu_b.norm()), -1.0, 1.0))
    return (torch.sin((1 - t) * omega) * mu_a + torch.sin(t * omega) * mu_b) / torch.sin(omega)


def test_interpolate_writes_a_strip(cli, store, tmp_path):
    """The PNG, read back pixel by pixel: input A, --steps decoded codes, input B, left to right,
    equal square tiles; A and B are MNIST test images 0 and 1, and the tiles between them are
    σ(decoder(z)) along the path from μ_A to μ_B (computed here with the model's own encoder
    and decoder), to within the grey scale's 8-bit steps."""
    from vae_service.core.checkpoint import save_model
    from vae_service.core.data import load_mnist, to_unit_float
    from vae_service.core.model import VAE, ModelConfig

    x = to_unit_float(load_mnist(None, download=False, val_fraction=0.0).test.images[:2])
    # The registry's untrained models decode any code to nearly the same grey: a model with its
    # weights tripled draws ends that differ by many grey levels, so the tiles' order is checked too.
    torch.manual_seed(7)
    sharp = VAE(ModelConfig(latent_dim=2, hidden=(32,))).eval()
    with torch.no_grad():
        for parameter in sharp.parameters():
            parameter.mul_(3.0)
    sharp_dir = save_model(tmp_path / "sharp", sharp)
    cases = [(6, "linear", str(store["dirs"][0]), store["vaes"][0]), (4, "slerp", "models:/tiny@candidate", store["vaes"][1]),
             (5, "linear", sharp_dir, sharp), (7, "slerp", sharp_dir, sharp)]
    for case, (steps, method, uri, vae) in enumerate(cases):
        out = tmp_path / f"{case}-{method}.png"
        result = cli("interpolate", uri, "--from-index", "0", "--to-index", "1", "--steps", str(steps),
                     "--method", method, "-o", out)
        assert result.exit_code == 0, result.output
        rgb = picture(out)
        tiles, boxes = strip_tiles(rgb)
        assert len(tiles) == steps + 2, (method, boxes)
        widths = [x1 - x0 + 1 for x0, _, x1, _ in boxes]
        height = boxes[0][3] - boxes[0][1] + 1
        # Equal squares, to within their frames (the inputs' is 2 pt, the others' 0.8 pt: 3 px more).
        assert max(widths) - min(widths) <= 4 and all(abs(w - height) <= 4 for w in widths), boxes
        assert height >= 28 * 3, boxes  # at least 3 pixels a cell: the cells below are read apart
        pitch = np.diff([(x0 + x1) / 2 for x0, _, x1, _ in boxes])
        assert pitch.max() - pitch.min() <= 3 and pitch.min() > max(widths), boxes  # evenly spaced, side by side
        assert rgb.shape[0] > height and rgb.shape[1] > (steps + 2) * min(widths), (rgb.shape, boxes)
        assert vae.config.likelihood == "bernoulli"  # so E[x | z] = σ(decoder(z))
        with torch.no_grad():
            mu, _ = vae.eval().encode(x)
            decoded = torch.sigmoid(vae.decode(_path_between(mu[0], mu[1], steps, method)))[:, 0].numpy()
        grey_step = 2 / 255  # 0–1 → 256 grey levels, and back
        # The inputs' frames (2 pt, red) cover part of their outer cells: those are left out.
        np.testing.assert_allclose(tiles[0][1:-1, 1:-1], x[0, 0, 1:-1, 1:-1].numpy(), atol=grey_step)
        np.testing.assert_allclose(tiles[-1][1:-1, 1:-1], x[1, 0, 1:-1, 1:-1].numpy(), atol=grey_step)
        np.testing.assert_allclose(tiles[1], decoded[0], atol=grey_step)  # t = 0: the decoded μ_A
        np.testing.assert_allclose(tiles[-2], decoded[-1], atol=grey_step)  # t = 1: the decoded μ_B
        for i in range(steps):
            np.testing.assert_allclose(tiles[i + 1], decoded[i], atol=grey_step, err_msg=f"{method} step {i}")
        if vae is sharp:  # its ends differ: the check above tells them apart
            assert np.abs(decoded[0] - decoded[-1]).max() > 20 * grey_step


def test_interpolate_mistakes_exit_2(cli, tmp_path):
    out = tmp_path / "s.png"
    base = ("interpolate", "models:/tiny/1", "-o", out)
    _expect_user_error(cli(*base, "--from-index", "0", "--to-index", "10000"), "--to-index 10000", "0–9999")
    _expect_user_error(cli(*base, "--from-index", "-1", "--to-index", "3"), "--from-index -1")
    _expect_user_error(cli(*base, "--from-index", "0", "--to-index", "1", "--method", "cubic"), "linear, slerp")
    _expect_user_error(cli(*base, "--from-index", "0", "--to-index", "1", "--steps", "1"), "--steps 1")
    _expect_user_error(cli("interpolate", "models:/tiny@gone", "--from-index", "0", "--to-index", "1", "-o", out),
                       "alias @gone", "versions: 1, 2")
    assert not out.exists()


def test_encode_json_matches_the_models_own_encoder(cli, store):
    from vae_service.core.data import load_mnist, to_unit_float

    test = load_mnist(None, download=False, val_fraction=0.0).test
    index = 7
    x = to_unit_float(test.images[index : index + 1])
    for uri, vae in (("models:/tiny@candidate", store["vaes"][1]), ("models:/tiny/1", store["vaes"][0])):
        result = cli("encode", uri, "--index", str(index), "--json")
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        assert set(payload) == {"index", "label", "mu", "sigma"}
        assert payload["index"] == index and payload["label"] == int(test.labels[index])
        assert len(payload["mu"]) == len(payload["sigma"]) == 2
        assert all(s > 0 for s in payload["sigma"])
        with torch.no_grad():
            mu, logvar = vae.encode(x)
        assert payload["mu"] == pytest.approx(mu[0].tolist(), rel=1e-6, abs=1e-7)
        assert payload["sigma"] == pytest.approx(torch.exp(0.5 * logvar[0]).tolist(), rel=1e-6, abs=1e-7)


def test_encode_table_and_mistakes(cli):
    result = cli("encode", "models:/tiny/1", "--index", "0")
    assert result.exit_code == 0, result.output
    assert "z1" in result.stdout and "z2" in result.stdout and "μ" in result.stdout and "σ" in result.stdout
    _expect_user_error(cli("encode", "models:/tiny/1", "--index", "10000"), "--index 10000")
    _expect_user_error(cli("encode", "models:/tiny/3", "--index", "0"), "version 3", "versions: 1, 2")


# ---------------------------------------------------------------------------------------------
# models of other data: RGB images, feature vectors (your own data), a named data set's spec


def _vector_spec(source: Path):
    from vae_service.core.spec_loading import validate_data

    return validate_data({"name": "cells", "data": {"source": str(source), "format": "numpy", "key": "X", "label": "y"},
                          "model": {"hidden": [16], "latent_dim": 3, "likelihood": "gaussian"}})


@pytest.fixture(scope="module")
def vector_model(tmp_path_factory):
    """A model of 8-feature vectors (untrained) saved as `vae run` saves one: config.json holds the
    spec (data.source: an .npz of three labelled blobs) and the preprocessing (the train split's
    mean and std)."""
    from vae_service.core import from_spec
    from vae_service.core.checkpoint import save_model
    from vae_service.core.model import VAE
    from vae_service.core.preprocessing import TRAIN, Preprocessing, row_hashes, split_of

    root = tmp_path_factory.mktemp("vectors")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(0, 5, (3, 8))[y] + rng.normal(0, 1, (300, 8)) + np.arange(8) * 10.0
    np.savez(root / "cells.npz", X=x, y=y)
    spec = _vector_spec(root / "cells.npz")
    train = x[split_of(row_hashes(x), spec.data.val_fraction, spec.data.test_fraction) == TRAIN]
    prep = Preprocessing(input_shape=(8,), kind="vectors", mean=tuple(map(float, train.mean(0))),
                         std=tuple(map(float, train.std(0))), label_kind="class", label_names=("0", "1", "2"))
    torch.manual_seed(0)
    vae = VAE(from_spec.model_config(spec, (8,))).eval()
    assert tuple(vae.config.image_shape) == (8,)
    directory = save_model(root / "model", vae, extra={"spec": spec.model_dump(mode="json"), "preprocessing": prep.to_dict()})
    return {"dir": directory, "vae": vae, "prep": prep, "x": x, "y": y, "spec": spec}


def test_sample_from_a_vector_model_needs_an_npy_output(cli, vector_model, tmp_path):
    out = tmp_path / "samples.png"
    line = _expect_user_error(cli("sample", vector_model["dir"], "-o", out), "feature vectors", "--output NAME.npy")
    assert "not images" in line
    assert not out.exists()
    _expect_user_error(cli("sample", vector_model["dir"], "-o", tmp_path / "s.csv"), ".png")


def test_sample_from_a_vector_model_writes_de_standardised_vectors(cli, vector_model, tmp_path):
    from vae_service.viz.latents import prior_codes

    out = tmp_path / "deep" / "samples.npy"
    result = cli("sample", vector_model["dir"], "-n", "5", "--seed", "4", "-o", out)
    assert result.exit_code == 0, result.output
    assert "(5, 8)" in result.stderr
    array = np.load(out, allow_pickle=False)
    assert array.shape == (5, 8) and array.dtype == np.float32
    prep, vae = vector_model["prep"], vector_model["vae"]
    with torch.no_grad():
        standardised = vae.decode(prior_codes(5, 3, seed=4)).numpy()  # the Gaussian's mean, not clamped to [0, 1]
    np.testing.assert_allclose(array, standardised * np.array(prep.std) + np.array(prep.mean), rtol=1e-5, atol=1e-4)
    assert abs(array.mean() - np.mean(prep.mean)) < 5 * max(prep.std)  # in the data's units, not standardised ones


def test_sample_from_an_image_model_refuses_an_npy_output(cli, store, tmp_path):
    out = tmp_path / "samples.npy"
    _expect_user_error(cli("sample", store["dirs"][0], "-o", out), "draws images", ".png")
    assert not out.exists()


def test_interpolate_on_a_vector_model_is_refused(cli, vector_model, tmp_path):
    out = tmp_path / "s.png"
    _expect_user_error(cli("interpolate", vector_model["dir"], "--from-index", "0", "--to-index", "1", "-o", out),
                       "feature vectors", "not images")
    assert not out.exists()


@pytest.mark.slow  # starts the session's Ray cluster
def test_encode_reads_the_test_split_of_the_models_own_data(cli, vector_model, ray_cluster):
    """`vae encode` on a model of your own data: the item is from the test share of data.source,
    standardised as in training (found by its μ among the test rows' encodings)."""
    from vae_service.core.preprocessing import TEST, row_hashes, split_of

    result = cli("encode", vector_model["dir"], "--index", "3", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    x, y, prep, vae = vector_model["x"], vector_model["y"], vector_model["prep"], vector_model["vae"]
    data = vector_model["spec"].data
    test = split_of(row_hashes(x), data.val_fraction, data.test_fraction) == TEST
    with torch.no_grad():
        mu, _ = vae.encode(torch.as_tensor(prep.standardise(x[test])))
    row = int(np.argmin(np.abs(mu.numpy() - np.array(payload["mu"])).sum(1)))
    np.testing.assert_allclose(mu[row].numpy(), payload["mu"], rtol=1e-5, atol=1e-6)
    assert payload["label"] == int(y[test][row])
    table = cli("encode", vector_model["dir"], "--index", "0")
    assert table.exit_code == 0, table.output
    assert "test item 0 (class " in table.stdout.replace("\n", " ") and "MNIST" not in table.stdout
    line = _expect_user_error(cli("encode", vector_model["dir"], "--index", "100000"), "--index 100000", "test split of")
    assert f"has {int(test.sum()):,} items" in line


def test_encode_and_interpolate_on_a_model_with_a_named_data_sets_spec(cli, tmp_path):
    """A model whose config.json names MNIST: its test set from the spec (as `vae eval`)."""
    from vae_service.core.checkpoint import save_model
    from vae_service.core.data import load_mnist, to_unit_float
    from vae_service.core.model import VAE, ModelConfig
    from vae_service.core.spec_loading import validate_data

    torch.manual_seed(5)
    vae = VAE(ModelConfig(latent_dim=2, hidden=(32,))).eval()
    directory = save_model(tmp_path / "mnist-model", vae, extra={"spec": validate_data({}).model_dump(mode="json")})
    test = load_mnist(None, download=False, val_fraction=0.0).test
    result = cli("encode", directory, "--index", "7", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    with torch.no_grad():
        mu, _ = vae.encode(to_unit_float(test.images[7:8]))
    assert payload["label"] == int(test.labels[7])
    assert payload["mu"] == pytest.approx(mu[0].tolist(), rel=1e-6, abs=1e-7)
    out = tmp_path / "strip.png"
    result = cli("interpolate", directory, "--from-index", "0", "--to-index", "1", "--steps", "4", "-o", out)
    assert result.exit_code == 0, result.output
    assert "MNIST test image 0 (digit " in result.stderr
    _png(out)
    _expect_user_error(cli("encode", directory, "--index", "10000"), "the MNIST test set has 10,000 images", "0–9999")


def test_sample_from_an_rgb_model_is_in_colour(cli, tmp_path):
    from matplotlib.image import imread

    from vae_service.core.checkpoint import save_model
    from vae_service.core.model import VAE, ModelConfig

    torch.manual_seed(0)
    directory = save_model(tmp_path / "rgb", VAE(ModelConfig(image_shape=(3, 16, 16), latent_dim=2, hidden=(32,))).eval())
    out = tmp_path / "rgb.png"
    result = cli("sample", directory, "-n", "9", "-o", out)
    assert result.exit_code == 0, result.output
    picture = imread(out)[..., :3]
    assert np.abs(picture[..., 0] - picture[..., 1]).max() > 0.05 or np.abs(picture[..., 1] - picture[..., 2]).max() > 0.05
