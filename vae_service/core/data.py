"""MNIST from IDX files: locate, verify (SHA-256 of the uncompressed bytes), download, split;
and what every data set shares (splits, where to look, the cache, DataError): dSprites is in
core/dsprites.py.

The whole data set is a few tens of MB, so it lives on the training device as uint8 tensors;
batches are index slices, with no per-sample Python in the hot loop.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

# SHA-256 of the *uncompressed* files: valid for any gzip wrapping of the same content.
MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
DEFAULT_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
DOWNLOAD_TIMEOUT_S = 30


class DataError(Exception):
    """The data set cannot be found, fetched or trusted; the message says what to do."""


DIGITS = tuple(str(digit) for digit in range(10))


@dataclass(frozen=True)
class ImageSplit:
    images: torch.Tensor  # uint8, (N, 1, H, W)
    labels: torch.Tensor  # int64, (N,)
    # What label i means (the figures colour and name classes by it): MNIST's digits by default.
    label_kind: str = "digit"
    label_names: tuple[str, ...] = DIGITS

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> "ImageSplit":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))


@dataclass(frozen=True)
class Dataset:
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(self.train.to(device), self.val.to(device), self.test.to(device))


# ---------------------------------------------------------------------------------------------
# locating and verifying files


def default_cache_dir() -> Path:
    return Path(os.environ.get("VAE_CACHE_DIR", Path.home() / ".cache" / "vae-service"))


def candidate_roots(root: Optional[str], dataset: str = "mnist") -> list[Path]:
    """Where to look, in order: data.root, $VAE_DATA_DIR/<dataset>, the download cache."""
    roots = []
    if root:
        roots.append(Path(root).expanduser())
    if os.environ.get("VAE_DATA_DIR"):
        roots.append(Path(os.environ["VAE_DATA_DIR"]).expanduser() / dataset)
    roots.append(default_cache_dir() / dataset)
    return roots


def read_idx_bytes(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            return handle.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:  # truncated or damaged gzip
        raise DataError(
            f"{path}: cannot decompress ({exc}). The file is corrupt; delete it and provide the original."
        ) from None


def _find_file(name: str, roots: list[Path]) -> Optional[Path]:
    for root in roots:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def verify(name: str, raw: bytes, where: object) -> None:
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_FILES[name]:
        raise DataError(
            f"{where}: SHA-256 of the uncompressed content is {digest}, expected {MNIST_FILES[name]}. "
            "The file is corrupt or not MNIST; delete it and provide the original."
        )


def download_file(name: str, mirror: str, cache_root: Path) -> Path:
    """Downloads `<mirror><name>.gz` into the cache, verified before it is moved into place."""
    url = mirror.rstrip("/") + f"/{name}.gz"
    cache_root.mkdir(parents=True, exist_ok=True)
    target = cache_root / f"{name}.gz"
    with tempfile.NamedTemporaryFile(dir=cache_root, suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                shutil.copyfileobj(response, tmp)
            tmp.flush()
            verify(name, gzip.decompress(Path(tmp.name).read_bytes()), url)
        except DataError:
            os.unlink(tmp.name)
            raise
        except (OSError, EOFError, zlib.error, ValueError, http.client.HTTPException) as exc:
            # OSError covers URLError/HTTPError and BadGzipFile; zlib.error: damaged deflate data;
            # ValueError: a malformed mirror URL; HTTPException: e.g. IncompleteRead.
            os.unlink(tmp.name)
            raise DataError(f"download of {url} failed: {exc}") from None
        except BaseException:  # e.g. Ctrl-C: never leave a partial file behind
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, target)
    return target


def locate_mnist(root: Optional[str], download: bool, mirror: Optional[str] = None) -> dict[str, Path]:
    """Finds (or downloads) every MNIST file; raises DataError saying how to provide them."""
    roots = candidate_roots(root)
    mirror = mirror or os.environ.get("VAE_MNIST_MIRROR", DEFAULT_MIRROR)
    found: dict[str, Path] = {}
    for name in MNIST_FILES:
        path = _find_file(name, roots)
        if path is None and download:
            try:
                path = download_file(name, mirror, roots[-1])
            except DataError as exc:
                raise DataError(f"{exc}\n{_how_to_provide(roots)}") from None
        if path is None:
            raise DataError(f"MNIST file {name}(.gz) not found.\n{_how_to_provide(roots)}")
        found[name] = path
    return found


def _how_to_provide(roots: list[Path]) -> str:
    looked = ", ".join(str(r) for r in roots)
    return (
        f"Looked in: {looked}. Put the four MNIST IDX files (gz or raw) in one of them: set "
        "VAE_DATA_DIR=/path/to/data (files in $VAE_DATA_DIR/mnist) or data.root in the spec, "
        "or allow data.download with network access (mirror from VAE_MNIST_MIRROR)."
    )


# ---------------------------------------------------------------------------------------------
# decoding and splitting


def decode_idx(raw: bytes) -> np.ndarray:
    """IDX format: magic (2 zero bytes, dtype code 0x08 = uint8, ndim), big-endian dims, data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError("not an IDX uint8 file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(f"IDX payload has {len(raw) - offset} bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _load_split(files: dict[str, Path], prefix: str, limit: Optional[int]) -> ImageSplit:
    arrays = {}
    for kind in ("images", "labels"):
        name = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        raw = read_idx_bytes(files[name])
        verify(name, raw, files[name])
        arrays[kind] = decode_idx(raw)[:limit]
    images = torch.from_numpy(arrays["images"].copy()).unsqueeze(1)
    labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    return ImageSplit(images, labels)


def load_mnist(
    root: Optional[str] = None,
    *,
    download: bool = True,
    val_fraction: float = 0.1,
    limit: Optional[int] = None,
    split_seed: int = 0,
) -> Dataset:
    """Train/validation/test splits; the validation images are a fixed random subset of train."""
    files = locate_mnist(root, download)
    train_full = _load_split(files, "train", limit)
    test = _load_split(files, "t10k", limit)
    order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(split_seed))
    n_val = int(round(len(train_full) * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:].sort().values
    pick = lambda split, idx: replace(split, images=split.images[idx], labels=split.labels[idx])  # noqa: E731
    return Dataset(pick(train_full, train_idx), pick(train_full, val_idx.sort().values), test)


# ---------------------------------------------------------------------------------------------
# turning uint8 images into model inputs


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0)


def binarize_static(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One fixed Bernoulli draw per pixel, stored back as uint8 {0, 255}."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    probs = to_unit_float(images)
    draw = torch.rand(probs.shape, generator=generator, device=images.device) < probs
    return draw.to(torch.uint8) * 255


def batch_inputs(images: torch.Tensor, binarize: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """uint8 batch → float inputs in [0, 1]; `dynamic` draws fresh Bernoulli pixels."""
    x = to_unit_float(images)
    if binarize == "dynamic":
        x = torch.bernoulli(x, generator=generator)
    return x


def epoch_shard(n: int, epoch: int, rank: int, world_size: int, seed: int) -> torch.Tensor:
    """This rank's share of one epoch: a seeded permutation, every world_size-th index.

    All ranks draw the same permutation (same seed and epoch), so shards are disjoint, and
    each gets exactly n // world_size indices so every rank runs the same number of steps.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    per_rank = n // world_size
    return order[rank::world_size][:per_rank]
