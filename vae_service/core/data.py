"""The named IDX data sets (MNIST, Fashion-MNIST: the same four file names and format), each a
small table (IdxDataset): locate, verify (SHA-256 of the uncompressed bytes), download, split;
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
# Fashion-MNIST, uncompressed as well. Zalando publishes only MD5s of its .gz files; these are
# the SHA-256s that EntroMorphic/sstt's Makefile checks after `gunzip` of the files from
# Zalando's mirror, and that several other public loaders pin for the decompressed files.
# Public loaders pin two different SHA-256 sets for the .gz files themselves, so the content,
# not one gzip wrapping of it, is what to pin.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DOWNLOAD_TIMEOUT_S = 30


class DataError(Exception):
    """The data set cannot be found, fetched or trusted; the message says what to do."""


DIGITS = tuple(str(digit) for digit in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class IdxDataset:
    """A named data set shipped as MNIST's four IDX files: what they hold and where to get them."""

    name: str  # data.dataset in a spec; the folder under $VAE_DATA_DIR and the cache
    title: str  # what messages call it
    files: dict[str, str]  # file name -> SHA-256 of the uncompressed content
    mirror: str  # default download location, `<mirror><name>.gz`
    mirror_env: str  # the variable that overrides it
    label_kind: str
    label_names: tuple[str, ...]


MNIST = IdxDataset("mnist", "MNIST", MNIST_FILES, DEFAULT_MIRROR, "VAE_MNIST_MIRROR", "digit", DIGITS)
FASHION_MNIST = IdxDataset(
    "fashion-mnist", "Fashion-MNIST", FASHION_MNIST_FILES,
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", "VAE_FASHION_MNIST_MIRROR",
    "class", FASHION_CLASSES,
)
IDX_DATASETS = {d.name: d for d in (MNIST, FASHION_MNIST)}


def idx_dataset(name: str) -> IdxDataset:
    try:
        return IDX_DATASETS[name]
    except KeyError:
        raise DataError(f"no IDX data set named {name!r} (known: {', '.join(IDX_DATASETS)})") from None


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


def verify(name: str, raw: bytes, where: object, dataset: IdxDataset = MNIST) -> None:
    digest, expected = hashlib.sha256(raw).hexdigest(), dataset.files[name]
    if digest != expected:
        raise DataError(
            f"{where}: SHA-256 of the uncompressed content is {digest}, expected {expected}. "
            f"The file is corrupt or not {dataset.title}; delete it and provide the original."
        )


def download_file(name: str, mirror: str, cache_root: Path, dataset: IdxDataset = MNIST) -> Path:
    """Downloads `<mirror><name>.gz` into the cache, verified before it is moved into place."""
    url = mirror.rstrip("/") + f"/{name}.gz"
    cache_root.mkdir(parents=True, exist_ok=True)
    target = cache_root / f"{name}.gz"
    with tempfile.NamedTemporaryFile(dir=cache_root, suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                shutil.copyfileobj(response, tmp)
            tmp.flush()
            verify(name, gzip.decompress(Path(tmp.name).read_bytes()), url, dataset)
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


def locate_idx(
    dataset_name: str, root: Optional[str], download: bool, mirror: Optional[str] = None
) -> dict[str, Path]:
    """Finds (or downloads) every file of the named IDX data set; raises DataError saying how to
    provide them."""
    dataset = idx_dataset(dataset_name)
    roots = candidate_roots(root, dataset.name)
    mirror = mirror or os.environ.get(dataset.mirror_env, dataset.mirror)
    found: dict[str, Path] = {}
    for name in dataset.files:
        path = _find_file(name, roots)
        if path is None and download:
            try:
                path = download_file(name, mirror, roots[-1], dataset)
            except DataError as exc:
                raise DataError(f"{exc}\n{_how_to_provide(roots, dataset)}") from None
        if path is None:
            raise DataError(f"{dataset.title} file {name}(.gz) not found.\n{_how_to_provide(roots, dataset)}")
        found[name] = path
    return found


def locate_mnist(root: Optional[str], download: bool, mirror: Optional[str] = None) -> dict[str, Path]:
    return locate_idx("mnist", root, download, mirror)


def _how_to_provide(roots: list[Path], dataset: IdxDataset) -> str:
    looked = ", ".join(str(r) for r in roots)
    return (
        f"Looked in: {looked}. Put the four {dataset.title} IDX files (gz or raw) in one of them: set "
        f"VAE_DATA_DIR=/path/to/data (files in $VAE_DATA_DIR/{dataset.name}) or data.root in the spec, "
        f"or allow data.download with network access (mirror from {dataset.mirror_env})."
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


def _load_split(files: dict[str, Path], prefix: str, limit: Optional[int], dataset: IdxDataset) -> ImageSplit:
    arrays = {}
    for kind in ("images", "labels"):
        name = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        raw = read_idx_bytes(files[name])
        verify(name, raw, files[name], dataset)
        arrays[kind] = decode_idx(raw)[:limit]
    images = torch.from_numpy(arrays["images"].copy()).unsqueeze(1)
    labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    return ImageSplit(images, labels, dataset.label_kind, dataset.label_names)


def load_idx(
    dataset_name: str,
    root: Optional[str] = None,
    *,
    download: bool = True,
    val_fraction: float = 0.1,
    limit: Optional[int] = None,
    split_seed: int = 0,
) -> Dataset:
    """Train/validation/test splits of a named IDX data set; the validation images are a fixed
    random subset of train."""
    dataset = idx_dataset(dataset_name)
    files = locate_idx(dataset.name, root, download)
    train_full = _load_split(files, "train", limit, dataset)
    test = _load_split(files, "t10k", limit, dataset)
    order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(split_seed))
    n_val = int(round(len(train_full) * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:].sort().values
    pick = lambda split, idx: replace(split, images=split.images[idx], labels=split.labels[idx])  # noqa: E731
    return Dataset(pick(train_full, train_idx), pick(train_full, val_idx.sort().values), test)


def load_mnist(
    root: Optional[str] = None,
    *,
    download: bool = True,
    val_fraction: float = 0.1,
    limit: Optional[int] = None,
    split_seed: int = 0,
) -> Dataset:
    return load_idx("mnist", root, download=download, val_fraction=val_fraction, limit=limit, split_seed=split_seed)


# ---------------------------------------------------------------------------------------------
# turning uint8 images into model inputs


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Model inputs: uint8 images scaled to [0, 1]; float items (standardised vectors,
    core.preprocessing) are model inputs already."""
    if images.is_floating_point():
        return images.to(torch.float32)
    return images.to(torch.float32).div_(255.0)


def binarize_static(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One fixed Bernoulli draw per pixel, stored back as uint8 {0, 255}."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    probs = to_unit_float(images)
    draw = torch.rand(probs.shape, generator=generator, device=images.device) < probs
    return draw.to(torch.uint8) * 255


def batch_inputs(images: torch.Tensor, binarize: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A batch of items → model inputs (`to_unit_float`); `dynamic` draws fresh Bernoulli pixels."""
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
