"""`vae encode-dataset` on the shared Ray cluster: μ and log σ² of every item of a folder of PNGs
or a NumPy file, as Parquet parts (local and on moto S3), restartable part by part, and bad
sources, shapes and outputs refused in one line (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vae_service import storage
from vae_service.cli import app
from vae_service.core.checkpoint import load_model, save_model
from vae_service.core.model import VAE, ModelConfig
from vae_service.core.preprocessing import Preprocessing
from vae_service.core.spec import TrainSpec

pytestmark = pytest.mark.slow

IMAGES_PER_FOLDER = 30
LATENT = 3


def _save(directory: Path, vae: VAE, prep: Preprocessing, data: dict) -> Path:
    spec = TrainSpec.model_validate({"data": data, "model": {"latent_dim": LATENT, "hidden": [16]}})
    return save_model(directory, vae, extra={"preprocessing": prep.to_dict(), "spec": spec.model_dump(mode="json")})


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """60 grey 16×16 PNGs in folders a/ and b/, a model for them, and a spec reading them."""
    root = tmp_path_factory.mktemp("encode-images")
    rng = np.random.default_rng(0)
    for folder in ("a", "b"):
        (root / "pngs" / folder).mkdir(parents=True)
        for i in range(IMAGES_PER_FOLDER):
            pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(root / "pngs" / folder / f"{i:03d}.png")
    torch.manual_seed(0)
    vae = VAE(ModelConfig(image_shape=(1, 16, 16), latent_dim=LATENT, hidden=(16,)))
    data = {"source": str(root / "pngs"), "format": "images", "label": "folder"}
    model = _save(root / "model", vae, Preprocessing(input_shape=(1, 16, 16), label_kind="class", label_names=("a", "b")), data)
    spec = root / "spec.yaml"
    spec.write_text(f"name: encode\ndata:\n  source: {root / 'pngs'}\n  format: images\n  label: folder\n")
    return {"root": root, "model": model, "spec": spec, "pngs": sorted((root / "pngs").rglob("*.png"))}


@pytest.fixture
def cli(ray_cluster):
    def invoke(*args, code: int = 0):
        result = CliRunner().invoke(app, ["encode-dataset", *[str(a) for a in args]])
        assert "Traceback" not in result.output, result.output
        assert result.exit_code == code, result.output
        return result

    return invoke


def _mtimes(folder: Path) -> dict[str, int]:
    """The parts' and the manifest's (each run's own directory under _runs is new)."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def test_every_image_encoded_restartably_part_by_part(cli, images, tmp_path):
    out = tmp_path / "encoded"
    first = cli(images["model"], images["spec"], "--output", out, "--images-per-part", "20", "-q")
    assert "wrote 60 rows from 60 files in 4 parts" in first.output
    parts = sorted(p.name for p in out.glob("*.parquet"))
    assert len(parts) == 4 and [p.split("-")[:2] for p in parts] == [["a", "0000"], ["a", "0001"], ["b", "0000"], ["b", "0001"]]
    assert not list(out.glob(".*"))  # no temporary files left

    table = pq.read_table(out)
    assert table.num_rows == len(images["pngs"]) == 60
    rows = {row["id"]: row for row in table.to_pylist()}
    assert set(rows) == {str(p) for p in images["pngs"]}  # ids are the images' paths
    assert all(len(row["mu"]) == LATENT and len(row["logvar"]) == LATENT for row in rows.values())
    assert {row["label"] for row in rows.values()} == {"a", "b"}
    assert all(row["label"] == Path(row["id"]).parent.name for row in rows.values())
    assert {row["split"] for row in rows.values()} <= {"train", "val", "test"} and "train" in {r["split"] for r in rows.values()}
    assert json.loads((out / "_encoding.json").read_text())["latent_dim"] == LATENT

    # μ and log σ² are the model's encoder on the image scaled to [0, 1]
    png = images["pngs"][37]
    x = torch.from_numpy(np.asarray(Image.open(png), dtype=np.float32) / 255.0)[None, None]
    with torch.no_grad():
        mu, logvar = load_model(images["model"]).encode(x)
    np.testing.assert_allclose(rows[str(png)]["mu"], mu[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows[str(png)]["logvar"], logvar[0].numpy(), rtol=1e-5, atol=1e-6)

    # A rerun finds every part and writes nothing.
    before = _mtimes(out)
    again = cli(images["model"], images["spec"], "--output", out, "--images-per-part", "20", "-q")
    assert "4 parts (60 files) already there" in again.output and "wrote 0 rows" in again.output
    assert _mtimes(out) == before

    # A lost part is the only one written again.
    lost = parts[1]
    (out / lost).unlink()
    third = cli(images["model"], images["spec"], "--output", out, "--images-per-part", "20", "-q")
    assert "wrote 10 rows from 10 files in 1 parts" in third.output and "skipped 3 parts (50 files)" in third.output
    after = _mtimes(out)
    assert after.keys() == before.keys()
    assert {name for name in after if after[name] != before[name]} == {lost}
    assert pq.read_table(out).num_rows == 60

    # The same output for another model is refused (its parts would mix encodings).
    other = tmp_path / "other-model"
    torch.manual_seed(1)
    _save(other, VAE(ModelConfig(image_shape=(1, 16, 16), latent_dim=LATENT, hidden=(16,))),
          Preprocessing(input_shape=(1, 16, 16)), {"source": str(images["root"] / "pngs"), "format": "images"})
    refused = cli(other, images["spec"], "--output", out, "--images-per-part", "20", code=2)
    assert "--output" in refused.output and "another model" in refused.output


def test_output_to_s3_and_a_source_on_s3(cli, images, s3_server):
    bucket = s3_server["make_bucket"]()
    uri = f"s3://{bucket}/encodings/run1"
    result = cli(images["model"], images["spec"], "--output", uri)  # with the progress bar
    assert "wrote 60 rows from 60 files in 2 parts" in result.output and uri in result.output
    keys = sorted(o["Key"] for o in s3_server["client"].list_objects_v2(Bucket=bucket)["Contents"])
    parts = [key for key in keys if not key.endswith("/") and "/_runs/" not in key]  # (directory markers, the job's run)
    assert parts[0] == "encodings/run1/_encoding.json" and len(parts) == 3
    assert any(key.startswith("encodings/run1/_runs/encode-") and key.endswith("/outcome.json") for key in keys), keys
    location = storage.resolve(uri)
    table = pq.read_table(location.path, filesystem=location.filesystem)
    assert table.num_rows == 60 and set(table.column("id").to_pylist()) == {str(p) for p in images["pngs"]}

    again = cli(images["model"], images["spec"], "--output", uri, "-q")
    assert "wrote 0 rows" in again.output and "skipped 2 parts (60 files)" in again.output

    # Images on S3: their ids are s3:// URIs.
    for png in images["pngs"]:
        s3_server["client"].upload_file(str(png), bucket, f"pngs/{png.parent.name}/{png.name}")
    out = images["root"] / "from-s3"
    cli(images["model"], images["spec"], "-o", out, "--set", f"data.source=s3://{bucket}/pngs", "-q")
    ids = set(pq.read_table(out).column("id").to_pylist())
    assert ids == {f"s3://{bucket}/pngs/{p.parent.name}/{p.name}" for p in images["pngs"]}


def test_parquet_rows_encoded_with_their_file_and_row(cli, tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "table").mkdir()
    x = rng.normal(size=(50, 3))
    for name, rows in (("one.parquet", slice(0, 30)), ("two.parquet", slice(30, 50))):
        pq.write_table(pa.table({"f1": x[rows, 0], "f2": x[rows, 1], "f3": x[rows, 2],
                                 "kind": [f"k{i % 2}" for i in range(rows.start, rows.stop)]}),
                       tmp_path / "table" / name, row_group_size=7)
    prep = Preprocessing(input_shape=(3,), kind="vectors", mean=(0.0,) * 3, std=(1.0,) * 3)
    torch.manual_seed(0)
    vae = VAE(ModelConfig(image_shape=(3,), latent_dim=2, hidden=(8,), likelihood="gaussian"))
    model = save_model(tmp_path / "model", vae, extra={"preprocessing": prep.to_dict()})
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"data": {"source": str(tmp_path / "table"), "format": "parquet", "label": "kind"},
                                "model": {"likelihood": "gaussian"}}))
    out = tmp_path / "encoded"
    assert "wrote 50 rows from 2 files in 2 parts" in cli(model, spec, "-o", out, "-q").output
    rows = {row["id"]: row for row in pq.read_table(out).to_pylist()}
    two = tmp_path / "table" / "two.parquet"
    assert len(rows) == 50 and rows[f"{two}#19"]["label"] == "k1"
    with torch.no_grad():
        mu, _ = vae.eval().encode(torch.from_numpy(x[49:50].astype(np.float32)))
    np.testing.assert_allclose(rows[f"{two}#19"]["mu"], mu[0].numpy(), rtol=1e-5, atol=1e-6)
    columns = _one_line(cli(model, spec, "-o", out, "--set", "data.columns=[f1, f2]", code=2))
    assert columns.startswith("data.columns:") and "3 features" in columns


def test_numpy_vectors_encoded_with_the_model_preprocessing(cli, images, tmp_path):
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0, 0, 0], [5, 5, 0, 0], [0, 5, 5, 10]], dtype=np.float64)
    x = np.concatenate([c + rng.normal(size=(40, 4)) for c in centres])
    y = np.repeat(np.arange(3), 40)
    (tmp_path / "blobs").mkdir()
    np.savez(tmp_path / "blobs" / "first.npz", x=x[:100], y=y[:100])
    np.savez(tmp_path / "blobs" / "second.npz", x=x[100:], y=y[100:])
    prep = Preprocessing(input_shape=(4,), kind="vectors", mean=tuple(x.mean(0)), std=tuple(x.std(0)), label_kind="class",
                         label_names=("0", "1", "2"))
    torch.manual_seed(0)
    vae = VAE(ModelConfig(image_shape=(4,), latent_dim=2, hidden=(8,), likelihood="gaussian"))
    data = {"source": str(tmp_path / "blobs"), "format": "numpy", "key": "x", "label": "y"}
    model = save_model(tmp_path / "model", vae, extra={"preprocessing": prep.to_dict()})
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"data": data, "model": {"likelihood": "gaussian"}}))  # JSON is YAML

    out = tmp_path / "encoded"
    result = cli(model, spec, "-o", out, "-q")
    assert "wrote 120 rows from 2 files in 2 parts" in result.output
    table = pq.read_table(out)
    assert table.num_rows == len(x)
    rows = {row["id"]: row for row in table.to_pylist()}
    first, second = tmp_path / "blobs" / "first.npz", tmp_path / "blobs" / "second.npz"
    assert set(rows) == {f"{first}#{i}" for i in range(100)} | {f"{second}#{i}" for i in range(20)}
    assert rows[f"{second}#7"]["label"] == y[107]
    with torch.no_grad():
        mu, logvar = vae.eval().encode(torch.from_numpy(prep.standardise(x[107:108])))
    np.testing.assert_allclose(rows[f"{second}#7"]["mu"], mu[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows[f"{second}#7"]["logvar"], logvar[0].numpy(), rtol=1e-5, atol=1e-6)

    # An image model cannot take these vectors; a vector model of another width neither.
    refused = _one_line(cli(images["model"], spec, "-o", tmp_path / "x", code=2))
    assert refused.startswith("data.format:") and "(1, 16, 16)" in refused
    wide = save_model(tmp_path / "wide", VAE(ModelConfig(image_shape=(5,), latent_dim=2, hidden=(8,))),
                      extra={"preprocessing": Preprocessing(input_shape=(5,), kind="vectors", mean=(0.0,) * 5, std=(1.0,) * 5).to_dict()})
    refused = _one_line(cli(wide, spec, "-o", tmp_path / "x", code=2))
    assert refused.startswith("data.key:") and "5 features" in refused and "gives 4" in refused


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_bad_sources_and_shapes_are_one_line(cli, images, tmp_path):
    model, spec = images["model"], images["spec"]
    missing = _one_line(cli(model, spec, "-o", tmp_path / "o", "--set", f"data.source={tmp_path / 'nowhere'}", code=2))
    assert missing.startswith("data.source:") and "does not exist" in missing
    size = _one_line(cli(model, spec, "-o", tmp_path / "o", "--set", "data.image_size=8", code=2))
    assert size.startswith("data.image_size:") and "16×16" in size
    channels = _one_line(cli(model, spec, "-o", tmp_path / "o", "--set", "data.channels=3", code=2))
    assert channels.startswith("data.channels:")
    named = _one_line(cli(model, spec, "-o", tmp_path / "o", "--set", "data.source=null", "--set", "data.format=null",
                          "--set", "data.label=null", code=2))
    assert named.startswith("data.source:")
    unknown = _one_line(cli("models:/nope/1", spec, "-o", tmp_path / "o", code=2))
    assert "no registered model 'nope'" in unknown or "no MLflow tracking store" in unknown
    # Nothing encoded, no manifest: only each refused job's outcome, in its run directory beside the parts.
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["_runs"]
    outcomes = [json.loads(p.read_text()) for p in (tmp_path / "o" / "_runs").glob("*/outcome.json")]
    assert outcomes and {(o["job"], o["error"]["kind"], o["exit_code"]) for o in outcomes} == {("encode-dataset", "bad_input", 2)}


def test_an_image_that_does_not_fit_midway_is_one_line(cli, images, tmp_path):
    """The up-front check samples 16 images; a later one of another size fails the run in one line."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for png in images["pngs"][:20]:
        shutil.copy(png, folder / png.name)
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(folder / "zz.png")
    result = cli(images["model"], images["spec"], "-o", tmp_path / "o", "--set", f"data.source={folder}",
                 "--set", "data.label=null", "-q", code=2)
    assert "data.image_size:" in result.output.strip().splitlines()[-1]
