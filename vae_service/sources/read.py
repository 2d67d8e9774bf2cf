"""A data.source as a Ray Data dataset of items: `read_images`, `read_parquet`, or whole NumPy
files, decoded by sources/items.py, each item given its content hash `h` and its split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray.data
from ray.data.extensions import ArrowTensorArray

from vae_service.core.preprocessing import row_hashes, split_of
from vae_service.core.spec import DataSpec
from vae_service.environment import quiet_loggers
from vae_service.sources.check import Inspection
from vae_service.sources.items import images_batch, numpy_batch, table_batch

# Ray Data prints every execution's plan and progress to stdout; a run has its own progress display.
_context = ray.data.DataContext.get_current()
_context.print_on_execution_start = _context.enable_progress_bars = False
quiet_loggers()


def items(data: DataSpec, inspection: Inspection) -> ray.data.Dataset:
    """Rows `x` (uint8 (C, H, W) or float64 (features,)), `label` when data.label says, `h` and
    `split` (core.preprocessing.TRAIN / VAL / TEST)."""
    fs, paths = inspection.files.filesystem, inspection.files.paths
    if data.format == "images":
        ds = image_files(data, fs, paths).map_batches(images_batch, fn_kwargs={"channels": data.channels or 1, "folder_labels": data.label == "folder"},
                            batch_format="numpy")
    elif data.format == "numpy":
        ds = ray.data.read_binary_files(paths, filesystem=fs, include_paths=True)
        ds = ds.map_batches(numpy_batch, fn_kwargs={"key": data.key, "label": data.label}, batch_size=1, batch_format="numpy")
    else:
        wanted = list(inspection.columns) + ([data.label] if data.label else [])
        ds = ray.data.read_parquet(paths, filesystem=fs, columns=wanted)
        ds = ds.map_batches(table_batch, fn_kwargs={"columns": list(inspection.columns), "label": data.label},
                            batch_format="numpy")
    if data.limit:
        ds = ds.limit(data.limit)
    return ds.map_batches(with_split, fn_kwargs={"val_fraction": data.val_fraction, "test_fraction": data.test_fraction},
                          batch_format="numpy")


def image_files(data: DataSpec, fs, paths: list[str]) -> ray.data.Dataset:
    """Ray Data's read_images of `paths`, resized and converted as `data` says: rows image, path."""
    size = (data.image_size, data.image_size) if data.image_size else None
    return ray.data.read_images(paths, filesystem=fs, size=size, mode="L" if (data.channels or 1) == 1 else "RGB",
                                include_paths=True)


def with_split(batch: dict, val_fraction: float, test_fraction: float) -> dict:
    hashes = row_hashes(batch["x"])
    return {**batch, "h": hashes, "split": split_of(hashes, val_fraction, test_fraction)}


def of_arrays(x: np.ndarray, blocks: int = 16) -> ray.data.Dataset:
    """Items already in memory (a named data set's split) as a Ray Data dataset of `blocks` Arrow
    blocks with their hashes, to stream them. Built once here: a map in the pipeline would
    re-run every epoch, and a single block must be whole before its first batch goes out."""
    hashes = row_hashes(x)
    parts = np.array_split(np.arange(len(x)), max(1, min(blocks, len(x))))
    return ray.data.from_arrow([pa.table({"x": ArrowTensorArray.from_numpy(x[p]), "h": hashes[p]}) for p in parts])
