"""Decoding files into items, as plain NumPy functions (Ray Data runs them in its tasks; the
up-front check runs them on a sample): every item is a row with `x` (uint8 (C, H, W) for images,
float (features,) for vectors) and, when data.label says, `label`.

NumPy files are read whole (`read_binary_files`) and loaded here with allow_pickle=False: an .npy
or .npz from a user is data, never code (Ray's read_numpy cannot pick an .npz's arrays).
"""

from __future__ import annotations

import io
import posixpath
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from vae_service.core.data import DataError


def decode_image(raw: bytes, name: str, channels: int, size: Optional[int]) -> np.ndarray:
    """One image file → uint8 (C, H, W), converted to grey or RGB and resized to size × size."""
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"data.source: {name} is not a readable image ({exc})") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def images_batch(batch: dict, channels: int, folder_labels: bool) -> dict:
    """Ray Data `read_images` rows (image (H, W[, 3]), path) → items; images of different sizes
    without data.image_size are an error naming the field (they cannot share a batch)."""
    pixels = [np.asarray(p, dtype=np.uint8) for p in batch["image"]]
    pixels = [p[None] if p.ndim == 2 else p.transpose(2, 0, 1) for p in pixels]
    shapes = {p.shape for p in pixels}
    if len(shapes) > 1:
        sides = ", ".join(f"{h}×{w}" for _, h, w in sorted(shapes))
        raise DataError(f"data.image_size: the images have different sizes ({sides}); set data.image_size to resize them")
    out = {"x": np.stack(pixels) if pixels else np.zeros((0, channels, 1, 1), np.uint8)}
    if folder_labels:
        out["label"] = np.array([posixpath.basename(posixpath.dirname(path)) for path in batch["path"]])
    return out


def load_arrays(raw: bytes, name: str, key: Optional[str], label: Optional[str]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """An .npy or .npz file → (items, labels): one row per item, features flattened."""
    try:
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"data.source: {name} is not a NumPy file without pickles ({exc})") from None
    if isinstance(loaded, np.ndarray):
        if key is not None or label is not None:
            raise DataError(f"data.{'key' if key else 'label'}: {name} is an .npy file (one array); key and label name arrays of an .npz")
        items, labels = loaded, None
    else:
        with loaded:
            arrays = list(loaded.files)
            if key is None and len(arrays) != 1 + (label is not None):
                raise DataError(f"data.key: {name} holds arrays {arrays}; say which holds the items")
            key = key or next(a for a in arrays if a != label)
            for field, wanted in (("key", key), ("label", label)):
                if wanted is not None and wanted not in arrays:
                    raise DataError(f"data.{field}: {name} has no array {wanted!r} (it holds {arrays})")
            items = loaded[key]
            labels = loaded[label] if label is not None else None
    return _numeric_rows(items, name, "data.key"), _labels(labels, len(items), name)


def numpy_batch(batch: dict, key: Optional[str], label: Optional[str]) -> dict:
    """Ray Data `read_binary_files` rows (whole files) → one item per array row."""
    xs, labels = [], []
    for raw, path in zip(batch["bytes"], batch["path"]):
        x, y = load_arrays(raw, path, key, label)
        xs.append(x)
        labels.append(y)
    out = {"x": np.concatenate(xs)}
    if label is not None:
        out["label"] = np.concatenate(labels)
    return out


def table_batch(batch: dict, columns: list[str], label: Optional[str]) -> dict:
    """Parquet rows (a dict of columns) → items: the feature columns side by side."""
    x = np.stack([np.asarray(batch[c], dtype=np.float64) for c in columns], axis=1)
    out = {"x": _numeric_rows(x, "the table", "data.columns")}
    if label is not None:
        out["label"] = np.asarray(batch[label])
    return out


def _numeric_rows(x: np.ndarray, name: str, field: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{field}: {name} holds {x.dtype} values; items must be numbers")
    if x.ndim < 2:
        raise DataError(f"{field}: {name} has shape {x.shape}; items must be rows (items × features)")
    x = x.reshape(len(x), -1).astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"{field}: {name} has {int(bad.sum())} NaN or infinite values (first: row {row}, feature {col})")
    return x


def _labels(labels: Optional[np.ndarray], n: int, name: str) -> Optional[np.ndarray]:
    if labels is not None and len(labels) != n:
        raise DataError(f"data.label: {name} has {len(labels)} labels for {n} items")
    return labels
