"""Every item of a data.source through a trained model's encoder, as Parquet (`vae encode-dataset`).

The source is cut into *parts*: one per NumPy or Parquet file, and for image folders runs of at
most `images_per_part` images of one folder. A part's file name is a digest of its input files'
paths (`<hint>-<digest>.parquet`), so the same source cut the same way always names the same
parts: a rerun skips the parts already in the output and encodes only the rest. Parts are
written whole on the driver (locally under a hidden temporary name, then renamed; on S3 an
object appears only once its upload completes), so a part that exists is complete.

Ray Data does the work: the pending files are read (decoded as for training, `sources/items.py`)
in part order, `read.with_split` gives each item its content hash and split, and a pool of
`Encoder` actors, each building the model once from its safetensors bytes and config.json,
applies the model's preprocessing and returns μ and log σ². The dataset keeps its input order
(`preserve_order`), so each part's rows reach the driver together and it is written as soon as
the next part's rows begin.

Columns of every part:
  id      images: the file's URI (an absolute local path, or s3://bucket/key);
          numpy / parquet: `<file URI>#<row>`, the item's 0-based row in its file
  mu      μ of q(z|x), fixed-size list of float32 (latent_dim)
  logvar  log σ² of q(z|x), same shape
  label   the item's label, when data.label says (image folders: the parent folder's name)
  h       the CRC-32 of the item's decoded content (what chooses its split)
  split   train / val / test, by data.val_fraction and data.test_fraction (every item is encoded)
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data
from safetensors.torch import load as load_safetensors

from vae_service import storage
from vae_service.core.data import DataError
from vae_service.core.inference import encode, from_own_units
from vae_service.core.model import VAE, ModelConfig
from vae_service.core.preprocessing import TEST, TRAIN, VAL, Preprocessing
from vae_service.core.spec import DataSpec
from vae_service.sources import read
from vae_service.sources.check import Inspection
from vae_service.sources.items import images_batch, load_arrays, table_batch

MANIFEST = "_encoding.json"  # beside the parts; Parquet readers skip names starting with _ or .
ROWS_PER_BATCH = 8192  # NumPy and Parquet files are read in slices of this many rows
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}


@dataclass(frozen=True)
class Part:
    name: str  # the output file's name
    paths: tuple[str, ...]  # its input files, on the source's filesystem


@dataclass(frozen=True)
class Model:
    """What each encoder actor is built from: the weights as safetensors bytes and config.json."""

    weights: bytes
    config: dict

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.weights).hexdigest()

    @property
    def latent_dim(self) -> int:
        return int(self.config["model_config"]["latent_dim"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.of_model_config(self.config)

    def build(self) -> VAE:
        vae = VAE(ModelConfig.from_dict(self.config["model_config"]))
        vae.load_state_dict(load_safetensors(self.weights))
        return vae.eval()


# ---------------------------------------------------------------------------------------------
# up-front checks


def check_model_fits(data: DataSpec, inspection: Inspection, model: Model) -> None:
    """DataError naming the field to change when the model cannot take the source's items."""
    shape = tuple(model.config["model_config"]["image_shape"])
    found = inspection.input_shape
    model_vectors = model.preprocessing.vectors or len(shape) == 1
    if model_vectors != data.vectors:
        takes = f"vectors of {shape[0]} features" if model_vectors else f"images of shape {shape} (C, H, W)"
        gives = "images" if not data.vectors else f"vectors of {found[0]} features"
        raise DataError(f"data.format: the model takes {takes} and data.format {data.format} gives {gives}")
    if model_vectors:
        if found[0] != shape[0]:
            field, where = (("data.columns", f"columns {list(inspection.columns)}") if data.format == "parquet"
                            else ("data.key", f"{inspection.files.paths[0]}"))
            raise DataError(f"{field}: the model takes {shape[0]} features per item and {where} gives {found[0]}")
        return
    if found[0] != shape[0]:
        raise DataError(f"data.channels: the model takes {shape[0]}-channel images and the data are read with "
                        f"{found[0]}; set data.channels: {shape[0]}")
    if found[1:] != shape[1:]:
        fix = f"; set data.image_size: {shape[1]}" if shape[1] == shape[2] else ""
        raise DataError(f"data.image_size: the model takes {shape[1]}×{shape[2]} images and these are "
                        f"{found[1]}×{found[2]}{fix}")


# ---------------------------------------------------------------------------------------------
# parts and the output


def plan_parts(data: DataSpec, paths: list[str], images_per_part: int) -> list[Part]:
    """The source's parts, in reading order: one per NumPy/Parquet file; image folders in runs
    of at most `images_per_part` images of one folder."""
    if data.format != "images":
        return [_part(posixpath.basename(path), (path,)) for path in paths]
    folders: dict[str, list[str]] = {}
    for path in paths:  # sorted, so each folder's images are in order
        folders.setdefault(posixpath.dirname(path), []).append(path)
    parts = []
    for folder, members in folders.items():
        hint = posixpath.basename(folder) or "images"
        for start in range(0, len(members), images_per_part):
            parts.append(_part(f"{hint}-{start // images_per_part:04d}", tuple(members[start:start + images_per_part])))
    return parts


def _part(hint: str, paths: tuple[str, ...]) -> Part:
    digest = hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()[:16]
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", hint).strip("._")[:48] or "part"
    return Part(f"{clean}-{digest}.parquet", paths)


def manifest(model_uri: str, model: Model, data: DataSpec, images_per_part: int) -> dict:
    """What the output holds encodings of; a rerun into the same output must match it."""
    fields = ("source", "format", "image_size", "channels", "key", "columns", "label", "val_fraction", "test_fraction")
    return {"model_uri": model_uri, "model_sha256": model.sha256, "latent_dim": model.latent_dim,
            "data": {name: getattr(data, name) for name in fields}, "images_per_part": images_per_part,
            "columns": ["id", "mu", "logvar", *(["label"] if data.label else []), "h", "split"]}


def existing_parts(output: storage.Location) -> set[str]:
    """Names of the finished parts already in `output` (none when it does not exist)."""
    selector = pafs.FileSelector(output.path, recursive=False, allow_not_found=True)
    return {info.base_name for info in output.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet") and not info.base_name.startswith(".")}


def check_manifest(output: storage.Location, wanted: dict, has_parts: bool) -> bool:
    """True when `output` already has the manifest `wanted`; DataError naming --output when its
    parts are encodings of another model or other data (a manifest without parts, left by a run
    that failed before its first part, is replaced: False)."""
    location = output.join(MANIFEST)
    if not storage.exists(location):
        return False
    try:
        found = storage.read_json(location)
    except (OSError, ValueError) as exc:
        raise DataError(f"--output: {location} is not readable JSON ({exc}); remove it or choose another --output") from None
    differ = [key for key in ("model_sha256", "data", "images_per_part") if found.get(key) != wanted[key]]
    if differ and has_parts:
        what = {"model_sha256": "another model", "data": "other data", "images_per_part": "another --images-per-part"}
        raise DataError(f"--output: {output} holds encodings of {' and '.join(what[k] for k in differ)} "
                        f"(its {MANIFEST}); choose another --output or empty it")
    return not differ


@dataclass(frozen=True)
class Plan:
    """What a run of encode-dataset does: the source's parts, those still to encode, what is there."""

    parts: list[Part]
    pending: list[Part]
    foreign: int  # parts in the output that are not parts of this source (left alone)
    manifest: dict
    manifest_written: bool

    @property
    def skipped(self) -> list[Part]:
        return [part for part in self.parts if part not in self.pending]

    @property
    def skipped_files(self) -> int:
        return sum(len(part.paths) for part in self.skipped)


def plan(model_uri: str, model: Model, data: DataSpec, inspection: Inspection, output: storage.Location,
         images_per_part: int) -> Plan:
    """The parts of the source and which of them `output` already holds; DataError naming --output
    when it holds encodings of another model or other data."""
    wanted = manifest(model_uri, model, data, images_per_part)
    parts = plan_parts(data, inspection.files.paths, images_per_part)
    there = existing_parts(output)
    written = check_manifest(output, wanted, has_parts=bool(there))
    pending = [part for part in parts if part.name not in there]
    return Plan(parts, pending, len(there - {part.name for part in parts}), wanted, written)


def write_manifest(output: storage.Location, wanted: dict) -> None:
    if output.is_local:
        storage.make_dirs(output)
    storage.write_text(output.join(MANIFEST), json.dumps(wanted, indent=2) + "\n")


def part_table(rows: dict[str, np.ndarray], uri_of: Callable[[str], str], latent_dim: int, vectors: bool) -> pa.Table:
    """An output part from the encoder's rows (path, row, mu, logvar, h, split[, label])."""
    paths = [uri_of(str(p)) for p in rows["path"]]
    ids = [f"{p}#{int(r)}" for p, r in zip(paths, rows["row"])] if vectors else paths
    columns = {
        "id": pa.array(ids, pa.string()),
        "mu": _fixed(rows["mu"], latent_dim),
        "logvar": _fixed(rows["logvar"], latent_dim),
    }
    if "label" in rows:
        columns["label"] = pa.array(rows["label"].tolist())
    columns["h"] = pa.array(np.asarray(rows["h"], dtype=np.int64))
    columns["split"] = pa.array([SPLIT_NAMES[int(s)] for s in rows["split"]], pa.string())
    return pa.table(columns)


def empty_table(latent_dim: int, label: bool) -> pa.Table:
    fields = [("id", pa.string()), ("mu", pa.list_(pa.float32(), latent_dim)), ("logvar", pa.list_(pa.float32(), latent_dim))]
    fields += [("label", pa.string())] if label else []
    fields += [("h", pa.int64()), ("split", pa.string())]
    return pa.schema(fields).empty_table()


def _fixed(values: np.ndarray, width: int) -> pa.Array:
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width)


def write_part(output: storage.Location, name: str, table: pa.Table) -> None:
    """The part appears whole or not at all: locally written under a hidden name and renamed;
    an S3 object appears only when its upload completes."""
    final = output.join(name)
    try:
        if output.is_local:
            storage.make_dirs(output)
            temporary = output.join(f".{name}.tmp")
            pq.write_table(table, temporary.path, filesystem=output.filesystem)
            output.filesystem.move(temporary.path, final.path)
        else:
            pq.write_table(table, final.path, filesystem=output.filesystem)
    except OSError as exc:
        raise storage.StorageError(f"{final}: cannot write: {storage.reason(exc)}") from None


def uri_function(filesystem: pafs.FileSystem) -> Callable[[str], str]:
    """A source file's path on its filesystem → its URI (s3://bucket/key, or the local path)."""
    if filesystem.type_name == "s3":
        return lambda path: f"s3://{path}"
    return lambda path: path


# ---------------------------------------------------------------------------------------------
# the Ray Data pipeline


def items_with_paths(data: DataSpec, inspection: Inspection, paths: list[str]) -> ray.data.Dataset:
    """Like `read.items` (x, label, h, split), over `paths` only, every item (no data.limit),
    each row also carrying its file's `path` and its `row` in that file."""
    fs = inspection.files.filesystem
    if data.format == "images":
        ds = read.image_files(data, fs, paths).map_batches(_images_with_paths, fn_kwargs={"channels": data.channels or 1, "folder_labels": data.label == "folder"},
                            batch_format="numpy")
    else:
        reader = _numpy_rows if data.format == "numpy" else _parquet_rows
        kwargs = {"filesystem": fs, "data": data, "columns": list(inspection.columns)}
        listing = ray.data.from_items([{"path": path} for path in paths], override_num_blocks=min(len(paths), 1000))
        ds = listing.map_batches(reader, fn_kwargs=kwargs, batch_size=1, batch_format="numpy")
    return ds.map_batches(read.with_split, fn_kwargs={"val_fraction": data.val_fraction, "test_fraction": data.test_fraction},
                          batch_format="numpy")


def _images_with_paths(batch: dict, channels: int, folder_labels: bool) -> dict:
    out = images_batch(batch, channels, folder_labels)
    return {**out, "path": np.asarray(batch["path"]), "row": np.zeros(len(out["x"]), dtype=np.int64)}


def _numpy_rows(batch: dict, filesystem: pafs.FileSystem, data: DataSpec, columns: list[str]) -> Iterator[dict]:
    for path in batch["path"]:
        with filesystem.open_input_file(path) as handle:
            raw = handle.read()
        x, labels = load_arrays(raw, path, data.key, data.label)
        for start in range(0, len(x), ROWS_PER_BATCH):
            end = min(start + ROWS_PER_BATCH, len(x))
            out = {"x": x[start:end]}
            if labels is not None:
                out["label"] = labels[start:end]
            yield _located(out, path, start)


def _parquet_rows(batch: dict, filesystem: pafs.FileSystem, data: DataSpec, columns: list[str]) -> Iterator[dict]:
    wanted = columns + ([data.label] if data.label else [])
    for path in batch["path"]:
        start = 0
        with filesystem.open_input_file(path) as handle:
            for record in pq.ParquetFile(handle).iter_batches(batch_size=ROWS_PER_BATCH, columns=wanted):
                out = table_batch({c: record.column(c).to_numpy(zero_copy_only=False) for c in wanted}, columns, data.label)
                yield _located(out, path, start)
                start += len(out["x"])


def _located(out: dict, path: str, start: int) -> dict:
    n = len(out["x"])
    return {**out, "path": np.full(n, path, dtype=object), "row": np.arange(start, start + n, dtype=np.int64)}


class Encoder:
    """A Ray Data actor: builds the model once, then μ and log σ² of each batch (x dropped)."""

    def __init__(self, weights: bytes, config: dict):
        model = Model(weights, config)
        self.vae = model.build()
        self.preprocessing = model.preprocessing
        self.shape = tuple(config["model_config"]["image_shape"])

    def __call__(self, batch: dict) -> dict:
        if batch["x"].shape[1:] != self.shape:  # images past the up-front sample may differ
            wrong = next(i for i, x in enumerate(batch["x"]) if x.shape != self.shape)
            raise DataError(f"data.image_size: {batch['path'][wrong]} is {'×'.join(map(str, batch['x'].shape[2:]))} "
                            f"and the model takes {self.shape[1]}×{self.shape[2]}; set data.image_size: {self.shape[1]}")
        mu, logvar = encode(self.vae, from_own_units(batch["x"], self.preprocessing))
        out = {key: value for key, value in batch.items() if key != "x"}
        out["mu"] = mu.numpy().astype(np.float32, copy=False)
        out["logvar"] = logvar.numpy().astype(np.float32, copy=False)
        return out


def encoded(items: ray.data.Dataset, model: Model, batch_size: int, actors: int, cpus_per_actor: float = 1.0) -> ray.data.Dataset:
    """`items` with x replaced by mu and logvar, in input order."""
    ds = items.map_batches(Encoder, fn_constructor_kwargs={"weights": model.weights, "config": model.config},
                           batch_size=batch_size, batch_format="numpy", concurrency=(1, max(1, actors)),
                           num_cpus=cpus_per_actor)
    ds.context.execution_options.preserve_order = True  # a part's rows arrive together, in order
    return ds


@dataclass
class Written:
    parts: int = 0
    rows: int = 0
    files: int = 0


def run(data: DataSpec, inspection: Inspection, model: Model, pending: list[Part], output: storage.Location, *,
        batch_size: int = 1024, actors: int = 1, cpus_per_actor: float = 1.0,
        on_file: Optional[Callable[[int], None]] = None) -> Written:
    """Encodes the `pending` parts into `output`, writing each as soon as its rows are in;
    `on_file(n)` is told of n more input files done. A DataError raised while reading (a file
    that does not decode) comes out as itself."""
    written = Written()
    if not pending:
        return written
    order = {path: index for index, part in enumerate(pending) for path in part.paths}
    uri_of = uri_function(inspection.files.filesystem)
    paths = [path for part in pending for path in part.paths]
    stream = encoded(items_with_paths(data, inspection, paths), model, batch_size, actors, cpus_per_actor)
    current, chunks, last_path = -1, [], None
    done = [False] * len(pending)

    def flush() -> None:
        if current < 0:
            return
        rows = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
        write_part(output, pending[current].name, part_table(rows, uri_of, model.latent_dim, data.vectors))
        done[current] = True
        written.parts += 1
        written.rows += len(rows["mu"])

    try:
        for batch in stream.iter_batches(batch_format="numpy", batch_size=None):
            index = np.fromiter((order[p] for p in batch["path"]), dtype=np.int64, count=len(batch["path"]))
            cuts = np.flatnonzero(np.diff(index)) + 1
            for start, end in zip([0, *cuts], [*cuts, len(index)]):
                part = int(index[start])
                if part != current:
                    if part < current or done[part]:
                        raise RuntimeError("encode-dataset: Ray Data returned rows out of order (preserve_order)")
                    flush()
                    current, chunks = part, []
                chunks.append({key: value[start:end] for key, value in batch.items()})
                new_files = _new_paths(batch["path"][start:end], last_path)
                last_path = batch["path"][end - 1]
                written.files += new_files
                if on_file and new_files:
                    on_file(new_files)
        flush()
    except Exception as exc:
        cause = data_error(exc)
        if cause is not None:
            raise cause from None
        raise
    for index, part in enumerate(pending):  # files that held no rows: an empty part marks them done
        if not done[index]:
            write_part(output, part.name, empty_table(model.latent_dim, data.label is not None))
            written.parts += 1
            written.files += len(part.paths)
            if on_file:
                on_file(len(part.paths))
    return written


def _new_paths(paths: np.ndarray, last: Optional[str]) -> int:
    """How many files begin in this run of rows (a file's rows are contiguous)."""
    if len(paths) == 0:
        return 0
    changes = int(np.count_nonzero(paths[1:] != paths[:-1]))
    return changes + (paths[0] != last)


def data_error(exc: BaseException) -> Optional[DataError]:
    """The DataError a Ray Data task raised (a file that does not decode), or None. Ray Data
    re-raises it as a UserCodeException without its cause: only the remote traceback's text,
    which ends with the DataError's line, still has it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc) is DataError:
            return exc
        found = _REMOTE_DATA_ERROR.findall(str(exc))
        if found:
            return DataError(found[-1].strip())
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


_REMOTE_DATA_ERROR = re.compile(rf"^{re.escape(DataError.__module__)}\.DataError: (.+)$", re.MULTILINE)
