"""dSprites: the factor grid, the procedural re-rendering, the packed cache, the original npz
(read without unpickling), the splits, and the 64×64 4×4-kernel model of Higgins et al."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_service.core import dsprites as D
from vae_service.core.data import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_real_data(tmp_path, monkeypatch):
    """Pins every test here to the re-rendering: an original npz or a rendered grid in the real
    data or cache folders must neither be read nor written."""
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VAE_CACHE_DIR", str(tmp_path / "cache"))


def centroid(image: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(image.reshape(D.SIDE, D.SIDE))
    return np.array([cols.mean(), rows.mean()])  # (x, y), y down


# ---------------------------------------------------------------------------------------------
# the grid


def test_the_grid_is_the_originals_row_major_grid():
    assert D.FACTOR_SIZES == (3, 6, 40, 32, 32) and D.GRID_SIZE == math.prod(D.FACTOR_SIZES) == 737_280
    assert D.FACTOR_NAMES == ("shape", "scale", "orientation", "pos_x", "pos_y")
    # the last factor changes fastest, as in the original's latents_classes
    assert D.factors_of(np.arange(3)).tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2]]
    assert D.factors_of([32])[0].tolist() == [0, 0, 0, 1, 0]
    assert D.factors_of([D.GRID_SIZE - 1])[0].tolist() == [2, 5, 39, 31, 31]
    indices = np.random.default_rng(0).integers(0, D.GRID_SIZE, 5000)
    factors = D.factors_of(indices)
    assert factors.dtype == np.int64 and factors.shape == (5000, 5)
    assert np.array_equal(D.indices_of(factors), indices)
    assert np.array_equal(D.indices_of(factors), np.ravel_multi_index(tuple(factors.T), D.FACTOR_SIZES))


@pytest.mark.parametrize("bad", [np.zeros((2, 4), int), np.zeros((2, 5)), np.array([[0, 6, 0, 0, 0]]), np.array([[0, 0, 0, -1, 0]])])
def test_factor_indices_are_checked(bad):
    with pytest.raises(ValueError, match="factor|factors"):
        D.render(bad)


# ---------------------------------------------------------------------------------------------
# the rendering


def test_render_is_deterministic_and_binary():
    factors = D.factors_of(np.random.default_rng(1).integers(0, D.GRID_SIZE, 300))
    images = D.render(factors)
    assert images.dtype == np.uint8 and images.shape == (300, 1, 64, 64)
    assert set(np.unique(images)) == {0, 255}
    assert (images.reshape(300, -1).max(axis=1) == 255).all()  # no empty image
    assert np.array_equal(images, D.render(factors))
    assert np.array_equal(images[7:8], D.render(factors[7:8]))  # independent of the batch


@pytest.mark.parametrize("shape", range(3))
def test_position_moves_the_shape_right_and_down(shape):
    images = D.render(np.array([[shape, 3, 7, 5, 16], [shape, 3, 7, 25, 16], [shape, 3, 7, 16, 5], [shape, 3, 7, 16, 25]]))
    left, right, top, bottom = (centroid(image) for image in images)
    assert right[0] - left[0] > 20 and abs(right[1] - left[1]) < 1  # pos_x: columns
    assert bottom[1] - top[1] > 20 and abs(bottom[0] - top[0]) < 1  # pos_y: rows, downwards
    # centres span about pixels 10…53 over the whole range
    ends = D.render(np.array([[shape, 0, 0, 0, 0], [shape, 0, 0, 31, 31]]))
    assert np.allclose(centroid(ends[0]), 10, atol=1.5) and np.allclose(centroid(ends[1]), 53, atol=1.5)


@pytest.mark.parametrize("shape", range(3))
def test_scale_grows_the_shape(shape):
    counts = [int((D.render(np.array([[shape, scale, 4, 16, 16]])) > 0).sum()) for scale in range(6)]
    assert counts == sorted(set(counts)), counts
    widths = [np.ptp(np.nonzero(D.render(np.array([[shape, s, 0, 16, 16]]))[0, 0])[1]) + 1 for s in (0, 5)]
    assert 9 <= widths[0] <= 11 and 19 <= widths[1] <= 21  # 10–20 px across


def test_symmetries_match_the_originals():
    angle = 0.3
    ellipse = D.render_values([1, 1], [0.8, 0.8], [angle, angle + np.pi], [0.4, 0.4], [0.6, 0.6])
    assert np.array_equal(ellipse[0], ellipse[1])
    square = D.render_values([0, 0], [0.8, 0.8], [angle, angle + np.pi / 2], [0.4, 0.4], [0.6, 0.6])
    assert np.array_equal(square[0], square[1])
    heart = D.render_values([2, 2], [0.8, 0.8], [angle, angle + np.pi], [0.4, 0.4], [0.6, 0.6])
    assert not np.array_equal(heart[0], heart[1])  # a heart has no rotational symmetry
    # the grid's orientations run 0…2π inclusive: the last equals the first
    first, last = D.render(np.array([[2, 2, 0, 9, 20], [2, 2, 39, 9, 20]]))
    assert np.array_equal(first, last)


def test_distinct_factors_give_distinct_images():
    """Shape, scale, position and (for the heart, which has no symmetry) orientation each change
    the picture: among hearts with orientations 0…38, no two images coincide."""
    rng = np.random.default_rng(2)
    factors = np.unique(np.stack([rng.integers(0, size, 2000) for size in (1, 6, 39, 32, 32)], axis=1) + [2, 0, 0, 0, 0], axis=0)
    packed = D.pack(D.render(factors))
    assert len(np.unique(packed, axis=0)) == len(factors)
    neighbours = D.render(np.array([[2, 0, 0, 16, 16], [2, 0, 1, 16, 16], [2, 1, 0, 16, 16], [2, 0, 0, 17, 16],
                                    [2, 0, 0, 16, 17], [0, 0, 0, 16, 16], [1, 0, 0, 16, 16]]))
    assert len(np.unique(D.pack(neighbours), axis=0)) == len(neighbours)


# ---------------------------------------------------------------------------------------------
# the packed cache


def test_pack_round_trip():
    images = D.render(D.factors_of(np.arange(0, D.GRID_SIZE, 7919)))
    packed = D.pack(images)
    assert packed.shape == (len(images), 512) and packed.dtype == np.uint8
    assert np.array_equal(D.unpack(packed), images)


def test_write_packed_renders_in_chunks_and_replaces_atomically(tmp_path):
    indices = np.random.default_rng(3).integers(0, D.GRID_SIZE, 50)
    path = tmp_path / "some" / "grid.npy"
    seen = []
    D.write_packed(path, indices, progress=lambda done, total: seen.append((done, total)), chunk=16)
    assert seen == [(16, 50), (32, 50), (48, 50), (50, 50)]
    assert [p.name for p in path.parent.iterdir()] == ["grid.npy"]  # no .part file left behind
    packed = D.read_packed(path, 50)
    assert isinstance(packed, np.memmap)
    assert np.array_equal(D.unpack(packed), D.render(D.factors_of(indices)))
    assert D.read_packed(path, 51) is None  # not the grid asked for: rebuilt by grid_images
    assert D.read_packed(tmp_path / "missing.npy") is None


def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "render", interrupted)
    with pytest.raises(KeyboardInterrupt):
        D.write_packed(tmp_path / "grid.npy", np.arange(10))
    assert list(tmp_path.iterdir()) == []


def test_grid_images_builds_the_cache_once(tmp_path, monkeypatch):
    """With a grid of 100 images (the real one takes ~20 s): written under
    $VAE_CACHE_DIR/dsprites, then read back from there without rendering again."""
    monkeypatch.setattr(D, "GRID_SIZE", 100)
    first = D.grid_images()
    assert D.grid_path() == tmp_path / "cache" / "dsprites" / D.GRID_FILE and D.grid_path().is_file()
    assert np.array_equal(D.unpack(first), D.render(D.factors_of(np.arange(100))))
    monkeypatch.setattr(D, "write_packed", lambda *a, **k: pytest.fail("rendered again"))
    assert np.array_equal(D.grid_images(), first)
    served = D.DSprites.from_grid().observations(np.array([[0, 0, 0, 2, 4]]))
    assert np.array_equal(served.numpy(), D.render(np.array([[0, 0, 0, 2, 4]])))


# ---------------------------------------------------------------------------------------------
# the original npz


def _explode():
    raise AssertionError("the metadata pickle was loaded")


class Booby:
    """Unpickling this runs _explode: a test passes only if the pickle is never loaded."""

    def __reduce__(self):
        return (_explode, ())


def write_fake_original(folder: Path, indices: np.ndarray, **replace) -> Path:
    """A small npz shaped like the original: imgs 0/1, latents_classes with the colour column,
    latents_values, and a pickled metadata entry."""
    folder.mkdir(parents=True, exist_ok=True)
    factors = D.factors_of(indices)
    arrays = {
        "imgs": (D.render(factors)[:, 0] // 255).astype(np.uint8),
        "latents_classes": np.concatenate([np.zeros((len(factors), 1), np.int64), factors], axis=1),
        "latents_values": np.concatenate([np.ones((len(factors), 1)), factors.astype(float)], axis=1),
        "metadata": np.array([Booby()], dtype=object),
    }
    arrays.update(replace)
    path = folder / D.ORIGINAL_FILE
    np.savez(path, **arrays)
    return path


def test_load_original_reads_images_and_factors_without_unpickling(tmp_path):
    indices = np.array([5, 70_000, 300_000, 737_279])
    images, factors = D.load_original(write_fake_original(tmp_path, indices))
    assert images.dtype == np.uint8 and images.shape == (4, 1, 64, 64)
    assert np.array_equal(images, D.render(D.factors_of(indices)))  # 0/1 became 0/255
    assert factors.dtype == np.int64 and np.array_equal(factors, D.factors_of(indices))


@pytest.mark.parametrize("replace, message", [
    ({"imgs": np.zeros((4, 32, 32), np.uint8)}, "imgs must be"),
    ({"latents_classes": np.zeros((3, 6), np.int64)}, "latents_classes"),
    ({"imgs": np.full((4, 64, 64), 2, np.uint8)}, "out of range"),
    ({"imgs": np.array([Booby()] * 4, dtype=object)}, "cannot read"),  # a pickled array is refused, not loaded
])
def test_a_wrong_original_is_a_data_error(tmp_path, replace, message):
    path = write_fake_original(tmp_path, np.arange(4), **replace)
    with pytest.raises(DataError, match=message):
        D.load_original(path)


def test_an_npz_without_the_keys_is_a_data_error(tmp_path):
    np.savez(tmp_path / D.ORIGINAL_FILE, images=np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(DataError, match="no imgs or latents_classes"):
        D.load_original(tmp_path / D.ORIGINAL_FILE)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        D.load_original(tmp_path / "junk.npz")


def test_the_original_is_used_when_found(tmp_path):
    indices = np.arange(0, D.GRID_SIZE, 997)
    folder = tmp_path / "data" / "dsprites"  # $VAE_DATA_DIR/dsprites
    path = write_fake_original(folder, indices)
    path_images = D.load_original(path)[0]
    assert D.find_original(None) == path
    data = D.DSprites.open()
    some = D.factors_of(indices[[3, 1, 3]])
    assert np.array_equal(data.observations(some).numpy(), path_images[[3, 1, 3]])
    with pytest.raises(DataError, match="no image for the factors"):
        data.observations(D.factors_of([1]))
    split = D.load_dsprites(None, val_fraction=0.0)
    assert len(split.train) + len(split.test) == len(indices) and len(split.test) == len(indices) // 10


def test_a_data_root_without_the_original_is_an_error(tmp_path):
    with pytest.raises(DataError, match=f"data.root {tmp_path}: no {D.ORIGINAL_FILE}"):
        D.load_dsprites(str(tmp_path), limit=10)


# ---------------------------------------------------------------------------------------------
# the factor-labelled data set and the training splits


def test_dsprites_samples_factors_and_renders_them():
    data = D.DSprites()
    assert data.factor_names == D.FACTOR_NAMES and data.factor_sizes == D.FACTOR_SIZES
    factors = data.sample_factors(20_000, np.random.default_rng(4))
    assert factors.dtype == np.int64 and factors.shape == (20_000, 5)
    for column, size in enumerate(D.FACTOR_SIZES):
        counts = np.bincount(factors[:, column], minlength=size)
        assert len(counts) == size and counts.min() > 0.6 * counts.mean()  # every value, about evenly
    observed = data.observations(factors[:10])
    assert observed.dtype == torch.uint8 and observed.shape == (10, 1, 64, 64)
    assert np.array_equal(observed.numpy(), D.render(factors[:10]))


def test_limited_splits_are_random_subsets_with_every_shape():
    data = D.load_dsprites(None, val_fraction=0.2, limit=300)
    assert (len(data.train), len(data.val), len(data.test)) == (240, 60, 300)
    assert data.image_shape == (1, 64, 64)
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.uint8 and set(split.images.unique().tolist()) == {0, 255}
        assert split.labels.dtype == torch.int64 and split.label_kind == "shape" and split.label_names == D.SHAPES
    for split in (data.train, data.test):
        assert set(split.labels.tolist()) == {0, 1, 2}
    train, val, test = D.split_rows(D.GRID_SIZE, val_fraction=0.2, limit=300)
    assert not set(train) & set(test) and not set(val) & set(test) and not set(train) & set(val)
    assert np.array_equal(data.test.images.numpy(), D.render(D.factors_of(test)))
    assert np.array_equal(data.test.labels.numpy(), D.factors_of(test)[:, 0])
    again = D.load_dsprites(None, val_fraction=0.2, limit=300)
    assert torch.equal(again.train.images, data.train.images)
    other = D.load_dsprites(None, val_fraction=0.2, limit=300, split_seed=1)
    assert not torch.equal(other.train.labels, data.train.labels)
    # limit draws from the same held-out test rows as the whole data set
    _, _, whole_test = D.split_rows(D.GRID_SIZE, val_fraction=0.2, limit=None)
    assert len(whole_test) == 73_728 and set(test) <= set(whole_test)


# ---------------------------------------------------------------------------------------------
# the spec, the 64×64 model


def test_the_dsprites_job_validates_and_loads_its_data():
    from vae_service.core import from_spec
    from vae_service.core.spec_loading import load_spec

    spec = load_spec(REPO / "jobs" / "dsprites-vae.yaml", ["data.limit=40"])
    assert spec.data.dataset == "dsprites" and spec.model.kernel_size == 4 and spec.objective.beta == 4.0
    data = from_spec.images(spec)
    assert data.image_shape == (1, 64, 64) and len(data.test) == 40
    from_spec.check_data(spec)  # nothing to find: it can be rendered


def test_kernel_4_needs_a_side_that_halves_exactly():
    from vae_service.core.spec import TrainSpec

    with pytest.raises(ValueError, match=r"model.kernel_size 4: the mnist images' side 28 .* \(28 -> 14 -> 7 -> 3\)"):
        TrainSpec.model_validate({"model": {"arch": "conv", "channels": [8, 8, 8], "kernel_size": 4}})
    TrainSpec.model_validate({"model": {"arch": "conv", "channels": [8, 8], "kernel_size": 4}})  # 28 -> 14 -> 7


def test_the_higgins_model_maps_64_to_4_and_back():
    from vae_service.core import from_spec
    from vae_service.core.model import VAE, ModelConfig
    from vae_service.core.spec_loading import load_spec

    spec = load_spec(REPO / "jobs" / "dsprites-vae.yaml")
    config = from_spec.model_config(spec, (1, 64, 64))
    vae = VAE(config)
    convs = [m for m in vae.encoder.body if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(ch, (4, 4), (2, 2)) for ch in (32, 32, 64, 64)]
    x = torch.rand(2, 1, 64, 64)
    features = vae.encoder.body[: 2 * len(convs)](x)
    assert features.shape == (2, 64, 4, 4)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (2, 10)
    assert vae.decode(mu).shape == (2, 1, 64, 64)
    # a config saved before kernel_size existed still loads, as the 3×3 model
    old = {k: v for k, v in config.to_dict().items() if k != "kernel_size"}
    assert ModelConfig.from_dict(old).kernel_size == 3


def test_the_scatter_colours_by_shape():
    from vae_service.core.model import VAE, ModelConfig
    from vae_service.viz.figures import latent_scatter

    data = D.load_dsprites(None, val_fraction=0.0, limit=60)
    vae = VAE(ModelConfig(image_shape=(1, 64, 64), latent_dim=3, hidden=(16,)))
    fig = latent_scatter(vae, data.test.images, data.test.labels, label_kind="shape", label_names=data.test.label_names)
    bar = fig.axes[1]
    assert [t.get_text() for t in bar.get_yticklabels()] == list(D.SHAPES) and bar.get_ylabel() == "shape"
    assert "coloured by shape" in fig._suptitle.get_text()
