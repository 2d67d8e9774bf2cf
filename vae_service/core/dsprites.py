"""dSprites (Matthey et al., 2017): 64×64 binary sprites on a full grid of five factors, the
benchmark of disentanglement (Higgins et al., 2017, β-VAE; Locatello et al., 2019).

The grid is the original's (`dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`): shape (square,
ellipse, heart) × scale (6) × orientation (40) × posX (32) × posY (32) = 737,280 images, in
row-major order: image i has the factor indices `np.unravel_index(i, FACTOR_SIZES)`.

Pixels come from the original file when it is found (`load_original`), else from `render`, a
procedural re-rendering of the same grid; the full rendered grid is cached bit-packed (~377 MB)
under the cache folder (`grid_images`).
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from vae_service.core.data import DataError, Dataset, ImageSplit, candidate_roots, default_cache_dir

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
GRID_SIZE = math.prod(FACTOR_SIZES)  # 737,280
SHAPES = ("square", "ellipse", "heart")
SIDE = 64
ORIGINAL_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"

# The factor values of the original's latents_values (shape: 1, 2, 3 there; an index here).
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 40)  # 0 and 2π both present: the last repeats the first
POSITIONS = np.linspace(0.0, 1.0, 32)

# Geometry chosen to resemble the original: a shape spans 20·scale pixels (10–20 px), and its
# centre moves over pixels 10…53 as the position goes 0…1.
SPAN_PX = 20.0
FIRST_CENTRE_PX, LAST_CENTRE_PX = 10.0, 53.0

PACKED_BYTES = SIDE * SIDE // 8  # one image, bit-packed
GRID_FILE = "grid-v1.npy"  # bump the version whenever `render` draws different pixels
GRID_CHUNK = 4096  # images rendered at once: ~70 MB of float32 per coordinate array

Progress = Callable[[int, int], None]  # (images done, images in all)


# ---------------------------------------------------------------------------------------------
# the factor grid


def factors_of(indices: np.ndarray) -> np.ndarray:
    """Image indices → their factor indices, (n, 5) int64."""
    return np.stack(np.unravel_index(np.asarray(indices, dtype=np.int64), FACTOR_SIZES), axis=1).astype(np.int64)


def indices_of(factors: np.ndarray) -> np.ndarray:
    """Factor indices (n, 5) → image indices in the grid, (n,) int64."""
    return np.ravel_multi_index(tuple(_checked_factors(factors).T), FACTOR_SIZES).astype(np.int64)


def _checked_factors(factors: np.ndarray) -> np.ndarray:
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape[1] != len(FACTOR_SIZES) or not np.issubdtype(factors.dtype, np.integer):
        raise ValueError(f"factors must be integer indices of shape (n, {len(FACTOR_SIZES)}), got {factors.dtype} {factors.shape}")
    outside = (factors < 0) | (factors >= np.array(FACTOR_SIZES))
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise ValueError(f"factor {FACTOR_NAMES[col]} = {factors[row, col]} is outside 0…{FACTOR_SIZES[col] - 1}")
    return factors.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------
# the procedural re-rendering


def render(factors: np.ndarray) -> np.ndarray:
    """The images of the given factor indices, (n, 1, 64, 64) uint8 in {0, 255}.

    A re-rendering, not the original pixels: each pixel centre is moved into the shape's frame
    (translated to the shape's centre, rotated back by its orientation, divided by its size)
    and tested against the shape's implicit form. Sizes and positions resemble the original's
    (10–20 px across; centres over pixels 10…53; pos_x moves right, pos_y down), and so do its
    symmetries: the square looks the same every 90°, the ellipse every 180°, and orientation
    2π (the last index) equals 0. Deterministic; vectorised over the batch with numpy.
    """
    factors = _checked_factors(factors)
    return render_values(
        factors[:, 0], SCALES[factors[:, 1]], ORIENTATIONS[factors[:, 2]],
        POSITIONS[factors[:, 3]], POSITIONS[factors[:, 4]],
    )


def render_values(shape: np.ndarray, scale: np.ndarray, orientation: np.ndarray, pos_x: np.ndarray,
                  pos_y: np.ndarray) -> np.ndarray:
    """`render` for factor *values* (shape an index; scale, orientation in radians and
    positions in [0, 1] any real numbers): the same drawing between the grid's points."""
    shape = np.asarray(shape, dtype=np.int64)
    if ((shape < 0) | (shape >= len(SHAPES))).any():
        raise ValueError(f"shape indices must be 0…{len(SHAPES) - 1}")
    out = np.zeros((len(shape), 1, SIDE, SIDE), dtype=np.uint8)
    values = [np.asarray(v, dtype=np.float64) for v in (scale, orientation, pos_x, pos_y)]
    for index, inside in enumerate(_INSIDE):
        rows = np.flatnonzero(shape == index)
        for start in range(0, len(rows), GRID_CHUNK):
            chunk = rows[start : start + GRID_CHUNK]
            u, v = _shape_frame(*(value[chunk] for value in values))
            out[chunk, 0] = inside(u, v).astype(np.uint8) * 255
    return out


def _shape_frame(scale, orientation, pos_x, pos_y) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel centre in its shape's own frame, (n, 64, 64) float32 each: origin at the
    shape's centre, v pointing up, rotated back by the orientation, the shape's half-span = 1."""
    pixels = np.arange(SIDE, dtype=np.float32)
    reach = np.float32(LAST_CENTRE_PX - FIRST_CENTRE_PX)
    cx = (FIRST_CENTRE_PX + reach * pos_x).astype(np.float32)[:, None, None]
    cy = (FIRST_CENTRE_PX + reach * pos_y).astype(np.float32)[:, None, None]
    half = (SPAN_PX / 2 * scale).astype(np.float32)[:, None, None]
    cos = np.cos(orientation).astype(np.float32)[:, None, None] / half
    sin = np.sin(orientation).astype(np.float32)[:, None, None] / half
    dx = pixels[None, None, :] - cx  # (n, 1, 64): columns
    dy = cy - pixels[None, :, None]  # (n, 64, 1): rows, up is positive
    # Rotating the pixel by −θ is rotating the shape by +θ (counter-clockwise as displayed).
    u = dx * cos + dy * sin
    v = dy * cos - dx * sin
    return u, v


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 1) & (np.abs(v) <= 1)


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + 4 * v * v <= 1  # twice as wide as high


# A heart: a square rotated 45° (a diamond, half-diagonal D, tip down) with a disc on each of
# its two upper edges; D makes it 2 wide, HEART_SHIFT centres it vertically.
_D = 2 / (1 + math.sqrt(2))
_HEART_SHIFT = -_D * (math.sqrt(0.5) - 0.5) / 2


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    v = v - np.float32(_HEART_SHIFT)
    diamond = np.abs(u) + np.abs(v) <= _D
    lobes = (np.abs(u) - _D / 2) ** 2 + (v - _D / 2) ** 2 <= _D * _D / 2
    return diamond | lobes


_INSIDE = (_square, _ellipse, _heart)


# ---------------------------------------------------------------------------------------------
# the rendered grid, bit-packed on disk


def pack(images: np.ndarray) -> np.ndarray:
    """(n, 1, 64, 64) binary images → (n, 512) uint8, one bit per pixel."""
    return np.packbits(np.asarray(images).reshape(len(images), -1) > 0, axis=1)


def unpack(packed: np.ndarray) -> np.ndarray:
    """`pack` undone: (n, 512) → (n, 1, 64, 64) uint8 in {0, 255}."""
    bits = np.unpackbits(np.asarray(packed), axis=1, count=SIDE * SIDE)
    bits *= 255  # in place: the whole grid unpacked is already 3 GB
    return bits.reshape(len(bits), 1, SIDE, SIDE)


def grid_path(cache_dir: Optional[Path] = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "dsprites" / GRID_FILE


def write_packed(path: Path, indices: np.ndarray, progress: Optional[Progress] = None, chunk: int = GRID_CHUNK) -> None:
    """Renders the images of grid `indices` chunk by chunk into a bit-packed .npy at `path`,
    written to a temporary file first and renamed: a reader never sees half a file (two
    workers racing to build it each write their own and the last rename wins)."""
    indices = np.asarray(indices, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its file is private (0600), and the cache may be shared by a machine's users.
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        out = np.lib.format.open_memmap(str(tmp), mode="w+", dtype=np.uint8, shape=(len(indices), PACKED_BYTES))
        for start in range(0, len(indices), chunk):
            stop = min(start + chunk, len(indices))
            out[start:stop] = pack(render(factors_of(indices[start:stop])))
            if progress is not None:
                progress(stop, len(indices))
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:  # also Ctrl-C: leave no partial file behind
        tmp.unlink(missing_ok=True)
        raise


def read_packed(path: Path, rows: Optional[int] = None) -> Optional[np.ndarray]:
    """The packed images at `path`, memory-mapped (rows are read when indexed); None when the
    file is missing or is not `rows` packed images (then it is rebuilt)."""
    try:
        packed = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != PACKED_BYTES or (rows is not None and len(packed) != rows):
        return None
    return packed


def grid_images(cache_dir: Optional[Path] = None, progress: Optional[Progress] = None) -> np.ndarray:
    """All 737,280 rendered images, bit-packed: (737280, 512) uint8, memory-mapped from
    `$VAE_CACHE_DIR/dsprites/grid-v1.npy`; rendered there first (~20 s on one core) when missing.
    `unpack` turns rows into images: the whole grid unpacked is 3 GB of uint8."""
    path = grid_path(cache_dir)
    packed = read_packed(path, GRID_SIZE)
    if packed is None:
        write_packed(path, np.arange(GRID_SIZE), progress)
        packed = read_packed(path, GRID_SIZE)
        if packed is None:
            raise DataError(f"{path}: the rendered dSprites grid could not be read back after writing it")
    return packed


# ---------------------------------------------------------------------------------------------
# the original file


def load_original(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The original npz's images, (N, 1, 64, 64) uint8 in {0, 255}, and their factor indices,
    (N, 5) int64 (its latents_classes without the constant colour column).

    Its `metadata` entry is a pickle: it is never read (allow_pickle=False refuses it anyway).
    The whole file unpacks to 3 GB of uint8 images.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted({"imgs", "latents_classes"} - set(npz.files))
            if missing:
                raise DataError(f"{path}: not the dSprites npz: no {' or '.join(missing)} in it (found {sorted(npz.files)})")
            imgs, classes = npz["imgs"], npz["latents_classes"]
    except (OSError, ValueError, EOFError) as exc:  # ValueError: a pickled array, a damaged zip member
        raise DataError(f"{path}: cannot read it as the dSprites npz ({exc})") from None
    n = len(imgs)
    if imgs.shape != (n, SIDE, SIDE) or classes.shape != (n, 1 + len(FACTOR_SIZES)):
        raise DataError(f"{path}: imgs must be (N, {SIDE}, {SIDE}) and latents_classes (N, {1 + len(FACTOR_SIZES)}); "
                        f"got {imgs.shape} and {classes.shape}")
    if not np.issubdtype(imgs.dtype, np.integer) or not np.issubdtype(classes.dtype, np.integer):
        raise DataError(f"{path}: imgs and latents_classes must be integers, got {imgs.dtype} and {classes.dtype}")
    factors = classes[:, 1:].astype(np.int64)
    if ((factors < 0) | (factors >= np.array(FACTOR_SIZES))).any() or imgs.max(initial=0) > 1 or imgs.min(initial=0) < 0:
        raise DataError(f"{path}: values out of range: imgs must be 0/1 and latents_classes within {FACTOR_SIZES}")
    images = imgs.astype(np.uint8, copy=False).reshape(n, 1, SIDE, SIDE)
    images *= 255  # in place: np.load gave this array to us alone
    return images, factors


def find_original(root: Optional[str]) -> Optional[Path]:
    """The original npz in data.root, $VAE_DATA_DIR/dsprites or the cache, or None."""
    for folder in candidate_roots(root, "dsprites"):
        if (folder / ORIGINAL_FILE).is_file():
            return folder / ORIGINAL_FILE
    return None


def find_dsprites(root: Optional[str]) -> Optional[Path]:
    """The original npz to train on, or None for the re-rendering: `find_original`, except that
    a data.root the user named and that holds no original is an error, not a silent switch."""
    path = find_original(root)
    if path is None and root:
        raise DataError(f"data.root {root}: no {ORIGINAL_FILE} there (nor in $VAE_DATA_DIR/dsprites or the cache); "
                        "leave data.root out to train on the procedural re-rendering of dSprites")
    return path


# ---------------------------------------------------------------------------------------------
# a factor-labelled data set, for the disentanglement metrics


class DSprites:
    """dSprites by factors: draws factor combinations and shows their images.

    `DSprites()` renders images on demand; `DSprites.open(root)` serves the original file's
    pixels when one is found; `DSprites.from_grid()` reads the cached rendered grid.
    """

    factor_names: tuple[str, ...] = FACTOR_NAMES
    factor_sizes: tuple[int, ...] = FACTOR_SIZES

    def __init__(self, fetch: Optional[Callable[[np.ndarray], np.ndarray]] = None):
        """`fetch`: grid indices → (n, 1, 64, 64) uint8 images; default: `render` them."""
        self._fetch = fetch or (lambda indices: render(factors_of(indices)))

    @classmethod
    def from_arrays(cls, images: np.ndarray, factors: np.ndarray) -> "DSprites":
        """Images with their factor indices (any subset of the grid, in any order)."""
        row_of = np.full(GRID_SIZE, -1, dtype=np.int64)
        row_of[indices_of(factors)] = np.arange(len(factors))

        def fetch(indices: np.ndarray) -> np.ndarray:
            rows = row_of[indices]
            if (rows < 0).any():
                missing = factors_of(indices[rows < 0][:1])[0].tolist()
                raise DataError(f"no image for the factors {dict(zip(FACTOR_NAMES, missing))} in this dSprites file")
            return images[rows]

        return cls(fetch)

    @classmethod
    def from_grid(cls, cache_dir: Optional[Path] = None, progress: Optional[Progress] = None) -> "DSprites":
        packed = grid_images(cache_dir, progress)
        return cls(lambda indices: unpack(packed[indices]))

    @classmethod
    def open(cls, root: Optional[str] = None) -> "DSprites":
        """The original's pixels when its npz is found (see `load_dsprites`), else rendered."""
        path = find_dsprites(root)
        return cls.from_arrays(*load_original(path)) if path else cls()

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n factor combinations drawn uniformly over the grid, (n, 5) int64."""
        return np.stack([rng.integers(0, size, n) for size in FACTOR_SIZES], axis=1).astype(np.int64)

    def observations(self, factors: np.ndarray) -> torch.Tensor:
        """The images of `factors`, (n, 1, 64, 64) uint8 in {0, 255}."""
        return torch.from_numpy(np.ascontiguousarray(self._fetch(indices_of(factors))))


# ---------------------------------------------------------------------------------------------
# train / validation / test splits for training


def split_rows(n: int, *, val_fraction: float, limit: Optional[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train, val and test among n images: dSprites has no test split, so a
    seeded random 10% is held out as test and val_fraction of the rest as validation. `limit`
    keeps a random N of train (before val is split off, as for MNIST) and N of test: never the
    first N, which all share one shape and scale."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = n // 10
    test, train = order[:n_test], order[n_test:]
    if limit is not None:
        test, train = test[:limit], train[:limit]
    n_val = int(round(len(train) * val_fraction))
    return train[n_val:], train[:n_val], test


def load_dsprites(root: Optional[str] = None, *, val_fraction: float = 0.1, limit: Optional[int] = None,
                  split_seed: int = 0) -> Dataset:
    """dSprites as train / validation / test splits of uint8 (N, 1, 64, 64) images in {0, 255},
    labelled by shape (0 square, 1 ellipse, 2 heart), in random order.

    From the original npz when `find_dsprites(root)` finds it, else the procedural grid: with
    `limit`, only the chosen images are rendered; without, the cached grid is read (rendered
    first if missing, ~20 s on one core). The whole grid is 3 GB of uint8 in memory, on every
    training worker (the splits are tensors on the worker's device); from the original, about
    twice that while it is split.
    """
    path = find_dsprites(root)
    if path is not None:
        images, factors = load_original(path)
        fetch = lambda rows: images[rows]  # noqa: E731
    else:
        factors = factors_of(np.arange(GRID_SIZE))
        if limit is not None:
            fetch = lambda rows: render(factors[rows])  # noqa: E731
        else:
            packed = grid_images()
            fetch = lambda rows: unpack(packed[rows])  # noqa: E731
    train, val, test = split_rows(len(factors), val_fraction=val_fraction, limit=limit, seed=split_seed)

    def split(rows: np.ndarray) -> ImageSplit:
        return ImageSplit(torch.from_numpy(np.ascontiguousarray(fetch(rows))), torch.from_numpy(factors[rows, 0].copy()),
                          label_kind="shape", label_names=SHAPES)

    return Dataset(split(train), split(val), split(test))
