"""MNIST from IDX files: locating, SHA-256 verification, downloading, splitting, sharding."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from http_support import isolated_download_env, serving

from vae_service.core.data import (
    MNIST_FILES,
    DataError,
    batch_inputs,
    binarize_static,
    decode_idx,
    download_file,
    epoch_shard,
    load_mnist,
    locate_mnist,
    to_unit_float,
)

NAMES = list(MNIST_FILES)
LABEL_FILES = [n for n in NAMES if "labels" in n]


# ---------------------------------------------------------------------------------------------
# fixtures (independent of conftest.py)


def shared_mnist_folder() -> Path:
    """The shared MNIST gz files: $VAE_DATA_DIR/mnist, else <repo>/../shared/data/mnist. Missing
    files FAIL the tests that need them (never a skip: CI must not go green without the data)."""
    env = os.environ.get("VAE_DATA_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    folder = root / "mnist"
    missing = [n for n in NAMES if not (folder / f"{n}.gz").is_file()]
    if missing:
        pytest.fail(f"MNIST gz files not found in {folder}: {missing}; put them there or point VAE_DATA_DIR "
                    f"at a directory whose mnist/ holds them (README: VAE_DATA_DIR=../shared/data)", pytrace=False)
    return folder


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return shared_mnist_folder()


def test_missing_mnist_fails_the_data_tests_instead_of_skipping_them(tmp_path, monkeypatch):
    """Without the files the fixture fails (pytest's Failed, not Skipped), naming the folder
    and VAE_DATA_DIR; with them it returns the folder."""
    (tmp_path / "mnist").mkdir()
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path))
    with pytest.raises(pytest.fail.Exception) as failed:
        shared_mnist_folder()
    assert str(tmp_path / "mnist") in str(failed.value) and "VAE_DATA_DIR" in str(failed.value)
    assert not isinstance(failed.value, pytest.skip.Exception)
    monkeypatch.undo()
    assert (shared_mnist_folder() / f"{NAMES[0]}.gz").is_file()


@pytest.fixture(scope="session")
def raw_bytes(mnist_dir) -> dict[str, bytes]:
    """Uncompressed content of each file (decompressed once per session)."""
    return {n: gzip.decompress((mnist_dir / f"{n}.gz").read_bytes()) for n in NAMES}


@pytest.fixture(scope="module")
def small(mnist_dir):
    return load_mnist(str(mnist_dir), download=False, limit=1000, val_fraction=0.1)


@pytest.fixture
def isolated_env(tmp_path, monkeypatch) -> Path:
    return isolated_download_env(tmp_path, monkeypatch)


def copy_gz(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for n in NAMES:
        shutil.copyfile(src / f"{n}.gz", dst / f"{n}.gz")
    return dst


def flip_content_byte(raw: bytes, at: int = -1) -> bytes:
    """Same length, valid IDX header, one payload byte changed."""
    data = bytearray(raw)
    data[at] ^= 0x01
    return bytes(data)


@pytest.fixture
def mirror(tmp_path, mnist_dir, isolated_env, monkeypatch):
    """A real HTTP server on 127.0.0.1 (free port) serving copies of the gz files."""
    served = copy_gz(mnist_dir, tmp_path / "served")
    with serving(served) as (url, requests):
        monkeypatch.setenv("VAE_MNIST_MIRROR", url)
        yield SimpleNamespace(url=url, dir=served, requests=requests, cache=isolated_env / "mnist")


# ---------------------------------------------------------------------------------------------
# loading and splitting


def test_limit_gives_shapes_and_dtypes(small):
    assert len(small.train) == 900 and len(small.val) == 100 and len(small.test) == 1000
    assert small.image_shape == (1, 28, 28)
    for split in (small.train, small.val, small.test):
        assert split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (1, 28, 28)
        assert split.labels.dtype == torch.int64
        assert split.labels.shape == (len(split),)
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) <= 9
    assert int(small.train.images.max()) == 255 and int(small.train.images.min()) == 0
    # all ten digits present: the images and labels belong together, not garbage
    assert set(small.train.labels.tolist()) == set(range(10))


def test_val_is_disjoint_from_train_and_together_they_are_the_limit(mnist_dir, small):
    full = load_mnist(str(mnist_dir), download=False, limit=1000, val_fraction=0.0)
    assert len(full.val) == 0 and len(full.train) == 1000
    index = {img.numpy().tobytes(): i for i, img in enumerate(full.train.images)}
    assert len(index) == 1000, "the first 1000 images are expected to be distinct"
    train_idx = {index[img.numpy().tobytes()] for img in small.train.images}
    val_idx = {index[img.numpy().tobytes()] for img in small.val.images}
    assert len(train_idx) == 900 and len(val_idx) == 100
    assert train_idx.isdisjoint(val_idx)
    assert train_idx | val_idx == set(range(1000))
    # labels travel with their images
    for img, label in zip(small.val.images, small.val.labels):
        assert full.train.labels[index[img.numpy().tobytes()]] == label


def test_split_is_seeded(mnist_dir, small):
    again = load_mnist(str(mnist_dir), download=False, limit=1000, val_fraction=0.1)
    assert torch.equal(again.val.images, small.val.images)
    other = load_mnist(str(mnist_dir), download=False, limit=1000, val_fraction=0.1, split_seed=1)
    assert not torch.equal(other.val.images, small.val.images)


def test_full_data_set(mnist_dir):
    data = load_mnist(str(mnist_dir), download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (54_000, 6_000, 10_000)


def test_found_through_vae_data_dir(mnist_dir, isolated_env, monkeypatch):
    monkeypatch.setenv("VAE_DATA_DIR", str(mnist_dir.parent))
    files = locate_mnist(None, download=False)
    assert set(files) == set(NAMES)
    assert all(path.parent == mnist_dir for path in files.values())


def test_data_root_comes_before_vae_data_dir(tmp_path, mnist_dir, isolated_env, monkeypatch, raw_bytes):
    monkeypatch.setenv("VAE_DATA_DIR", str(mnist_dir.parent))
    root = tmp_path / "mine"
    root.mkdir()
    (root / NAMES[1]).write_bytes(raw_bytes[NAMES[1]])
    files = locate_mnist(str(root), download=False)
    assert files[NAMES[1]] == root / NAMES[1]
    assert files[NAMES[0]] == mnist_dir / f"{NAMES[0]}.gz"


def test_raw_idx_files_load_like_gz(tmp_path, mnist_dir, raw_bytes, small):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for n in NAMES:
        (raw_dir / n).write_bytes(raw_bytes[n])
    files = locate_mnist(str(raw_dir), download=False)
    assert all(path.suffix != ".gz" for path in files.values())
    data = load_mnist(str(raw_dir), download=False, limit=1000, val_fraction=0.1)
    for a, b in ((data.train, small.train), (data.val, small.val), (data.test, small.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_mixed_raw_and_gz(tmp_path, mnist_dir, raw_bytes):
    mixed = copy_gz(mnist_dir, tmp_path / "mixed")
    for n in LABEL_FILES:
        (mixed / f"{n}.gz").unlink()
        (mixed / n).write_bytes(raw_bytes[n])
    data = load_mnist(str(mixed), download=False, limit=50)
    assert len(data.test) == 50


# ---------------------------------------------------------------------------------------------
# verification


@pytest.mark.parametrize("name", NAMES)
def test_corrupted_content_is_rejected_by_sha256(tmp_path, mnist_dir, raw_bytes, name):
    root = copy_gz(mnist_dir, tmp_path / "mnist")
    (root / f"{name}.gz").write_bytes(gzip.compress(flip_content_byte(raw_bytes[name]), compresslevel=1))
    with pytest.raises(DataError, match="SHA-256") as info:
        load_mnist(str(root), download=False, limit=10)
    assert str(root / f"{name}.gz") in str(info.value)
    assert MNIST_FILES[name] in str(info.value)


def test_corrupted_raw_file_is_rejected_by_sha256(tmp_path, raw_bytes, mnist_dir):
    root = copy_gz(mnist_dir, tmp_path / "mnist")
    name = LABEL_FILES[0]
    (root / f"{name}.gz").unlink()
    (root / name).write_bytes(flip_content_byte(raw_bytes[name], at=100))
    with pytest.raises(DataError, match="SHA-256"):
        load_mnist(str(root), download=False, limit=10)


@pytest.mark.parametrize(
    "damage",
    [
        lambda gz: gz[: len(gz) // 2],  # truncated download
        lambda gz: gz[: len(gz) // 2] + bytes([gz[len(gz) // 2] ^ 0xFF]) + gz[len(gz) // 2 + 1 :],
        lambda gz: b"not gzip at all",
    ],
    ids=["truncated", "flipped-byte", "not-gzip"],
)
def test_damaged_gzip_is_a_data_error(tmp_path, mnist_dir, damage):
    root = copy_gz(mnist_dir, tmp_path / "mnist")
    name = LABEL_FILES[0]
    target = root / f"{name}.gz"
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(DataError) as info:
        load_mnist(str(root), download=False, limit=10)
    assert str(target) in str(info.value)


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"\x00\x00\x09\x01" + (3).to_bytes(4, "big") + b"abc", "not an IDX uint8 file"),
        (b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc", "not an IDX uint8 file"),
        (b"\x00\x00", "not an IDX uint8 file"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "header says 5"),
    ],
)
def test_decode_idx_rejects_bad_files(raw, match):
    with pytest.raises(DataError, match=match):
        decode_idx(raw)


def test_decode_idx_reads_dims():
    raw = b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    array = decode_idx(raw)
    assert array.shape == (2, 3) and array[1, 2] == 5


# ---------------------------------------------------------------------------------------------
# missing files


def test_missing_files_without_download_say_how_to_provide_them(tmp_path, isolated_env):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        load_mnist(str(empty), download=False)
    message = str(info.value)
    assert f"MNIST file {NAMES[0]}(.gz) not found" in message
    assert "VAE_DATA_DIR" in message and "data.root" in message
    assert str(empty) in message and str(isolated_env / "mnist") in message
    assert not (isolated_env / "mnist").exists(), "download=False must not touch the cache"


def test_one_missing_file_is_named(tmp_path, mnist_dir, isolated_env):
    root = copy_gz(mnist_dir, tmp_path / "mnist")
    (root / f"{NAMES[-1]}.gz").unlink()
    with pytest.raises(DataError, match=f"MNIST file {NAMES[-1]}\\(.gz\\) not found"):
        locate_mnist(str(root), download=False)


# ---------------------------------------------------------------------------------------------
# downloading from a real (local) HTTP server


def test_download_lands_verified_files_in_the_cache(mirror, raw_bytes):
    files = locate_mnist(None, download=True)
    assert sorted(mirror.requests) == sorted(f"/{n}.gz" for n in NAMES)
    for n in NAMES:
        assert files[n] == mirror.cache / f"{n}.gz"
        assert files[n].read_bytes() == (mirror.dir / f"{n}.gz").read_bytes()
        assert gzip.decompress(files[n].read_bytes()) == raw_bytes[n]
    assert sorted(p.name for p in mirror.cache.iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    # a second run uses the cache and does not download again
    data = load_mnist(download=True, limit=20)
    assert len(data.test) == 20
    assert len(mirror.requests) == len(NAMES)


def test_download_only_fetches_what_is_missing(tmp_path, mirror, mnist_dir):
    root = copy_gz(mnist_dir, tmp_path / "partial")
    (root / f"{LABEL_FILES[0]}.gz").unlink()
    files = locate_mnist(str(root), download=True)
    assert mirror.requests == [f"/{LABEL_FILES[0]}.gz"]
    assert files[LABEL_FILES[0]] == mirror.cache / f"{LABEL_FILES[0]}.gz"


def test_tampered_download_is_rejected_and_not_cached(mirror, raw_bytes):
    name = LABEL_FILES[1]
    (mirror.dir / f"{name}.gz").write_bytes(gzip.compress(flip_content_byte(raw_bytes[name])))
    with pytest.raises(DataError, match="SHA-256") as info:
        locate_mnist(None, download=True)
    assert mirror.url in str(info.value) and "VAE_DATA_DIR" in str(info.value)
    assert not (mirror.cache / f"{name}.gz").exists()
    assert not list(mirror.cache.glob("*.part"))


@pytest.mark.parametrize(
    "damage",
    [
        lambda gz: gz[: len(gz) // 2],
        lambda gz: gz[:100] + bytes(b ^ 0xFF for b in gz[100:200]) + gz[200:],
        lambda gz: b"<html>mirror error page</html>",
    ],
    ids=["truncated", "damaged-deflate", "not-gzip"],
)
def test_damaged_download_is_a_data_error_and_leaves_nothing(mirror, damage):
    name = LABEL_FILES[0]
    target = mirror.dir / f"{name}.gz"
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(DataError, match="failed|SHA-256"):
        download_file(name, mirror.url, mirror.cache)
    assert list(mirror.cache.iterdir()) == []


def test_download_missing_on_mirror(mirror):
    (mirror.dir / f"{NAMES[0]}.gz").unlink()
    with pytest.raises(DataError, match="download of .* failed: HTTP Error 404") as info:
        locate_mnist(None, download=True)
    assert "VAE_DATA_DIR" in str(info.value)
    assert list(mirror.cache.iterdir()) == []


@pytest.mark.parametrize("url", ["not-a-url", "http://127.0.0.1:1/"], ids=["malformed", "refused"])
def test_unreachable_mirror_is_a_data_error(tmp_path, isolated_env, url):
    cache = tmp_path / "c"
    with pytest.raises(DataError, match="failed"):
        download_file(NAMES[0], url, cache)
    assert list(cache.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# sharding and model inputs


@pytest.mark.parametrize("n, world_size", [(1003, 4), (1000, 3), (10, 1), (7, 7), (5, 8)])
def test_epoch_shard_partitions_all_but_the_remainder(n, world_size):
    shards = [epoch_shard(n, epoch=2, rank=r, world_size=world_size, seed=5) for r in range(world_size)]
    per_rank = n // world_size
    assert all(len(s) == per_rank for s in shards)
    joined = torch.cat(shards).tolist()
    assert len(set(joined)) == len(joined) == per_rank * world_size  # disjoint
    assert all(0 <= i < n for i in joined)
    assert all(s.dtype == torch.int64 for s in shards)


def test_epoch_shard_is_seeded_per_epoch():
    a = epoch_shard(1000, epoch=0, rank=1, world_size=2, seed=0)
    assert torch.equal(a, epoch_shard(1000, epoch=0, rank=1, world_size=2, seed=0))
    assert not torch.equal(a, epoch_shard(1000, epoch=1, rank=1, world_size=2, seed=0))
    assert not torch.equal(a, epoch_shard(1000, epoch=0, rank=1, world_size=2, seed=1))
    # a new order, not just a new partition: the full permutation differs between epochs
    e0 = epoch_shard(1000, epoch=0, rank=0, world_size=1, seed=0)
    e1 = epoch_shard(1000, epoch=1, rank=0, world_size=1, seed=0)
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(1000))
    assert not torch.equal(e0, e1)


def test_batch_inputs_none_is_unit_float(small):
    images = small.test.images[:64]
    x = batch_inputs(images, "none")
    assert x.dtype == torch.float32 and x.shape == images.shape
    assert torch.allclose(x, images.float() / 255.0)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(batch_inputs(images, "static"), x)


def test_batch_inputs_dynamic_is_binary_and_fresh(small):
    images = small.test.images[:64]
    a = batch_inputs(images, "dynamic")
    b = batch_inputs(images, "dynamic")
    assert a.dtype == torch.float32 and a.shape == images.shape
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(a, b)
    # black pixels stay 0 and white pixels stay 1
    assert torch.all(a[images == 0] == 0) and torch.all(a[images == 255] == 1)
    # a seeded generator reproduces the draw
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(batch_inputs(images, "dynamic", g1), batch_inputs(images, "dynamic", g2))


def test_binarize_static_is_deterministic_per_seed(small):
    images = small.test.images[:64]
    a = binarize_static(images, seed=7)
    assert torch.equal(a, binarize_static(images, seed=7))
    assert not torch.equal(a, binarize_static(images, seed=8))
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert set(a.unique().tolist()) == {0, 255}
    assert torch.all(a[images == 0] == 0) and torch.all(a[images == 255] == 255)
    # roughly the grey level on average
    assert abs(float(to_unit_float(a).mean()) - float(to_unit_float(images).mean())) < 0.01


def test_float_items_are_model_inputs_already():
    """Standardised vectors (core.preprocessing) pass through; only uint8 images are scaled."""
    vectors = torch.tensor([[-1.5, 0.0, 2.0]])
    assert torch.equal(to_unit_float(vectors), vectors) and torch.equal(batch_inputs(vectors, "none"), vectors)
    assert torch.equal(to_unit_float(torch.tensor([[0, 255]], dtype=torch.uint8)), torch.tensor([[0.0, 1.0]]))
