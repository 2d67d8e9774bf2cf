"""The up-front check of a data.source: the files exist, a sample of them decodes, and what the
model will take (its input shape) — before any worker starts, so a bad source is one clear line
(exit 2) and not a failed run."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from vae_service import storage
from vae_service.core.data import DataError
from vae_service.core.spec import DataSpec, TrainSpec
from vae_service.sources.files import SourceFiles, list_source
from vae_service.sources.items import decode_image, load_arrays, table_batch

SAMPLE_FILES = 16  # images decoded up front (sizes, readability)
SAMPLE_ROWS = 1000  # Parquet rows checked for NaN and types up front


@dataclass(frozen=True)
class Inspection:
    files: SourceFiles
    input_shape: tuple[int, ...]
    items: int  # how many items the source holds (an estimate for NumPy files beyond the first)
    columns: tuple[str, ...] = ()  # parquet: the feature columns
    label_names: tuple[str, ...] = ()  # image folders: the parent folders' names

    @property
    def decoded_bytes(self) -> int:
        per_item = math.prod(self.input_shape) * (1 if len(self.input_shape) == 3 else 4)
        return self.items * per_item


def inspect(spec: TrainSpec) -> Inspection:
    """Raises DataError (naming the field) when the spec's data.source cannot be trained on."""
    found = inspect_source(spec.data)
    if spec.data.format == "images" and spec.model.arch == "conv" and found.input_shape[1] != found.input_shape[2]:
        h, w = found.input_shape[1:]
        raise DataError(f"data.image_size: conv models take square images and these are {h}×{w}; set data.image_size")
    problem = spec.model_problem(found.input_shape)
    if problem:
        raise DataError(problem)
    return found


def inspect_source(data: DataSpec) -> Inspection:
    """The source alone: its files exist, a sample decodes, the items' shape (a trained model's
    fit is the caller's to check, e.g. `vae encode-dataset`)."""
    files = list_source(data)
    try:
        return {"images": _images, "numpy": _numpy, "parquet": _parquet}[data.format](data, files)
    except OSError as exc:
        raise DataError(f"data.source: cannot read {data.source}: {storage.reason(exc)}") from None


def _read(files: SourceFiles, path: str) -> bytes:
    with files.filesystem.open_input_file(path) as handle:
        return handle.read()


def _images(data: DataSpec, files: SourceFiles) -> Inspection:
    channels = data.channels or 1
    shapes = {}
    for path in files.paths[:SAMPLE_FILES]:
        shapes.setdefault(decode_image(_read(files, path), path, channels, data.image_size).shape, path)
    if len(shapes) > 1:
        sides = ", ".join(f"{s[1]}×{s[2]} ({p.rsplit('/', 1)[-1]})" for s, p in shapes.items())
        raise DataError(f"data.image_size: the images have different sizes ({sides}); set data.image_size to resize them")
    labels = ()
    if data.label == "folder":
        labels = tuple(sorted({path.rsplit("/", 2)[-2] if path.count("/") else "" for path in files.paths}))
    return Inspection(files, next(iter(shapes)), len(files.paths), label_names=labels)


def _numpy(data: DataSpec, files: SourceFiles) -> Inspection:
    x, _ = load_arrays(_read(files, files.paths[0]), files.paths[0], data.key, data.label)
    if len(x) == 0:
        raise DataError(f"data.source: {files.paths[0]} holds no rows")
    return Inspection(files, (x.shape[1],), len(x) * len(files.paths))


def _parquet(data: DataSpec, files: SourceFiles) -> Inspection:
    first = files.paths[0]
    with files.filesystem.open_input_file(first) as handle:
        table = pq.ParquetFile(handle)
        schema, rows = table.schema_arrow, table.metadata.num_rows
        sample = table.iter_batches(batch_size=SAMPLE_ROWS).__next__() if rows else None
    if data.label is not None and data.label not in schema.names:
        raise DataError(f"data.label: {first} has no column {data.label!r} (it has {schema.names})")
    numeric = [f.name for f in schema if (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
                                           or pa.types.is_boolean(f.type)) and f.name != data.label]
    columns = list(data.columns or numeric)
    for column in columns:
        if column not in schema.names:
            raise DataError(f"data.columns: {first} has no column {column!r} (it has {schema.names})")
        if column not in numeric:
            raise DataError(f"data.columns: column {column!r} of {first} is {schema.field(column).type}, not numeric")
    if not columns:
        raise DataError(f"data.columns: {first} has no numeric column to train on (it has {schema.names})")
    if sample is None:
        raise DataError(f"data.source: {first} holds no rows")
    wanted = columns + ([data.label] if data.label else [])
    table_batch({c: sample.column(c).to_numpy(zero_copy_only=False) for c in wanted}, columns, data.label)
    items = rows + sum(_rows(files, path) for path in files.paths[1:])
    return Inspection(files, (len(columns),), items, columns=tuple(columns))


def _rows(files: SourceFiles, path: str) -> int:
    with files.filesystem.open_input_file(path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows
