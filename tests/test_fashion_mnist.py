"""Fashion-MNIST, the second named IDX data set: its table, verified downloads from a real (local)
HTTP server, error messages that name it, and the spec wiring. No network.

The real files are not here, so the good path serves small generated IDX files and points the
checksum table at their SHA-256s: that tests the mechanism, not Zalando's bytes. Tampered and
missing files are checked against the real table.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from http_support import isolated_download_env, serving

from vae_service.core import from_spec
from vae_service.core.data import (
    DIGITS,
    FASHION_CLASSES,
    FASHION_MNIST,
    MNIST_FILES,
    DataError,
    download_file,
    idx_dataset,
    load_idx,
    locate_idx,
)
from vae_service.core.spec import TrainSpec

NAMES = list(MNIST_FILES)
N_TRAIN, N_TEST = 40, 20


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX uint8: two zero bytes, 0x08, ndim, big-endian dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def fake_raw() -> dict[str, bytes]:
    """Small stand-ins for the four files: 28x28 uint8 images, labels 0–9."""
    rng = np.random.default_rng(0)
    raw = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        raw[f"{prefix}-images-idx3-ubyte"] = idx_bytes(rng.integers(0, 256, size=(n, 28, 28)))
        raw[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(np.arange(n) % 10)
    return raw


@pytest.fixture
def trust_fake(fake_raw, monkeypatch):
    """Points Fashion-MNIST's checksum table at the generated files (restored after the test)."""
    for name, raw in fake_raw.items():
        monkeypatch.setitem(FASHION_MNIST.files, name, hashlib.sha256(raw).hexdigest())


@pytest.fixture
def isolated_env(tmp_path, monkeypatch) -> Path:
    return isolated_download_env(tmp_path, monkeypatch)


@pytest.fixture
def mirror(tmp_path, fake_raw, isolated_env, monkeypatch):
    """A real HTTP server on 127.0.0.1 serving gz copies of the generated files, named by
    VAE_FASHION_MNIST_MIRROR."""
    served = tmp_path / "served"
    served.mkdir()
    for name, raw in fake_raw.items():
        (served / f"{name}.gz").write_bytes(gzip.compress(raw))
    with serving(served) as (url, requests):
        monkeypatch.setenv(FASHION_MNIST.mirror_env, url)
        yield SimpleNamespace(url=url, dir=served, requests=requests, root=isolated_env,
                              cache=isolated_env / "fashion-mnist")


def fashion_spec(**data) -> TrainSpec:
    return TrainSpec.model_validate({"data": {"dataset": "fashion-mnist", **data}})


# ---------------------------------------------------------------------------------------------
# the table


def test_fashion_mnist_is_a_named_idx_data_set():
    assert idx_dataset("fashion-mnist") is FASHION_MNIST
    assert list(FASHION_MNIST.files) == NAMES  # MNIST's file names and format
    assert all(len(d) == 64 and d != MNIST_FILES[n] for n, d in FASHION_MNIST.files.items())
    assert FASHION_MNIST.mirror == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    assert FASHION_MNIST.mirror_env == "VAE_FASHION_MNIST_MIRROR"
    assert FASHION_MNIST.label_kind == "class" and FASHION_MNIST.label_names == FASHION_CLASSES
    assert FASHION_CLASSES[0] == "T-shirt/top" and FASHION_CLASSES[9] == "Ankle boot" and len(FASHION_CLASSES) == 10
    mnist = idx_dataset("mnist")
    assert mnist.files is MNIST_FILES and (mnist.label_kind, mnist.label_names) == ("digit", DIGITS)
    with pytest.raises(DataError, match="no IDX data set named 'emnist'.*fashion-mnist"):
        idx_dataset("emnist")


# ---------------------------------------------------------------------------------------------
# files that must not be trusted


def test_tampered_download_is_rejected_and_not_cached(mirror):
    """Served files that do not match the real checksums: a DataError naming Fashion-MNIST, the
    URL and how to provide the files; nothing lands in the cache."""
    with pytest.raises(DataError, match="SHA-256") as info:
        locate_idx("fashion-mnist", None, download=True)
    message = str(info.value)
    assert "not Fashion-MNIST" in message and "not MNIST" not in message
    assert f"{mirror.url}{NAMES[0]}.gz" in message
    assert "$VAE_DATA_DIR/fashion-mnist" in message and "VAE_FASHION_MNIST_MIRROR" in message
    assert mirror.requests == [f"/{NAMES[0]}.gz"]  # stops at the first untrusted file
    assert list(mirror.cache.iterdir()) == []  # no .gz, no .part
    assert not (mirror.root / "mnist").exists()


def test_download_file_checks_the_data_set_it_is_given(mirror):
    name = NAMES[1]
    with pytest.raises(DataError, match="not Fashion-MNIST"):
        download_file(name, mirror.url, mirror.cache, FASHION_MNIST)
    assert list(mirror.cache.iterdir()) == []


def test_mnist_files_are_not_fashion_mnist(tmp_path):
    """The real MNIST files, offered as Fashion-MNIST, fail the real Fashion-MNIST checksums."""
    shared = Path(os.environ["VAE_DATA_DIR"]) / "mnist"
    if not all((shared / f"{n}.gz").is_file() for n in NAMES):
        pytest.fail(f"MNIST gz files not found in {shared} (README: VAE_DATA_DIR=../shared/data)", pytrace=False)
    root = tmp_path / "offered"
    root.mkdir()
    for n in NAMES:
        shutil.copyfile(shared / f"{n}.gz", root / f"{n}.gz")
    with pytest.raises(DataError, match="SHA-256") as info:
        load_idx("fashion-mnist", str(root), download=False, limit=5)
    assert "not Fashion-MNIST" in str(info.value) and str(root / f"{NAMES[0]}.gz") in str(info.value)


# ---------------------------------------------------------------------------------------------
# missing files


def test_missing_files_name_fashion_mnist_and_where_to_put_them(tmp_path, isolated_env):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_idx("fashion-mnist", str(empty), download=False)
    message = str(info.value)
    assert f"Fashion-MNIST file {NAMES[0]}(.gz) not found" in message
    assert "four Fashion-MNIST IDX files" in message and "$VAE_DATA_DIR/fashion-mnist" in message
    assert str(empty) in message and str(isolated_env / "fashion-mnist") in message
    assert "VAE_FASHION_MNIST_MIRROR" in message and "VAE_MNIST_MIRROR" not in message
    assert not isolated_env.exists(), "download=False must not touch the cache"


def test_missing_files_under_vae_data_dir_name_its_fashion_mnist_folder(tmp_path, isolated_env, monkeypatch):
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)  # MNIST's folder is not Fashion-MNIST's
    monkeypatch.setenv("VAE_DATA_DIR", str(data))
    with pytest.raises(DataError, match="Fashion-MNIST file .* not found") as info:
        from_spec.check_data(fashion_spec(download=False))
    assert str(data / "fashion-mnist") in str(info.value)


# ---------------------------------------------------------------------------------------------
# the good path (checksums pointed at the generated files)


def test_verified_download_lands_in_the_fashion_mnist_cache(mirror, fake_raw, trust_fake):
    files = locate_idx("fashion-mnist", None, download=True)
    assert sorted(mirror.requests) == sorted(f"/{n}.gz" for n in NAMES)
    for n in NAMES:
        assert files[n] == mirror.cache / f"{n}.gz"
        assert gzip.decompress(files[n].read_bytes()) == fake_raw[n]
    assert sorted(p.name for p in mirror.cache.iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    assert not (mirror.root / "mnist").exists()

    data = load_idx("fashion-mnist", download=True, val_fraction=0.25)
    assert len(mirror.requests) == len(NAMES), "the second load uses the cache"
    assert (len(data.train), len(data.val), len(data.test)) == (N_TRAIN - 10, 10, N_TEST)
    assert data.image_shape == (1, 28, 28)
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 28, 28)
        assert split.labels.dtype == torch.int64
        assert (split.label_kind, split.label_names) == ("class", FASHION_CLASSES)
    expected = np.frombuffer(fake_raw["t10k-images-idx3-ubyte"], dtype=np.uint8, offset=16).reshape(N_TEST, 1, 28, 28)
    assert torch.equal(data.test.images, torch.from_numpy(expected.copy()))
    assert data.test.labels.tolist() == [i % 10 for i in range(N_TEST)]


def test_found_under_vae_data_dir_fashion_mnist(tmp_path, fake_raw, trust_fake, isolated_env, monkeypatch):
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name, raw in fake_raw.items():
        (folder / name).write_bytes(raw)  # raw IDX, not gz
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "data"))
    files = locate_idx("fashion-mnist", None, download=False)
    assert all(files[n] == folder / n for n in NAMES)
    assert len(load_idx("fashion-mnist", download=False, limit=7).test) == 7


def test_spec_with_fashion_mnist_loads_it(mirror, trust_fake):
    spec = fashion_spec(limit=20)
    from_spec.check_data(spec)  # downloads into the cache
    data = from_spec.images(spec)
    assert len(data.test) == 20 and data.image_shape == (1, 28, 28)
    assert data.train.label_names == FASHION_CLASSES and data.test.label_kind == "class"
    assert sorted(mirror.requests) == sorted(f"/{n}.gz" for n in NAMES)
    trained = from_spec.training_data(fashion_spec(limit=20, binarize="static"))
    assert set(trained.test.images.unique().tolist()) <= {0, 255}
    assert trained.test.label_names == FASHION_CLASSES
