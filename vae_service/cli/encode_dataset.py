"""`vae encode-dataset`: μ and log σ² of every item of a spec's data.source under a trained
model, as Parquet parts in a folder or under s3://bucket/prefix; restartable (sources/encode.py)."""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vae_service.cli.common import SET_HELP, app, err, fail, load_or_exit, say
from vae_service.cli.models import MODEL_URI_HELP, user_errors

MAX_BATCH = 65_536
FILES = {"images": "image", "numpy": "NumPy", "parquet": "Parquet"}


@app.command("encode-dataset")
def encode_dataset_command(
    model_uri: str = typer.Argument(..., metavar="MODEL_URI", help=MODEL_URI_HELP),
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec (YAML) whose data section says what to read."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    # A str, not a Path: Path("s3://b/p") would collapse to "s3:/b/p".
    output: str = typer.Option(..., "--output", "-o", help="Folder or s3://bucket/prefix for the Parquet parts."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Items per encoder call."),
    actors: Optional[int] = typer.Option(None, "--actors", help="At most this many encoder actors (default: half the cluster's CPUs, 1–8)."),
    images_per_part: int = typer.Option(1000, "--images-per-part", help="Image folders: at most this many images per output part."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Encode every item of SPEC's data.source (all splits) with MODEL_URI's encoder: Parquet parts
    with columns id, mu, logvar, label (when data.label says), h, split.

    id is the image file's URI for image folders and `<file URI>#<row>` for NumPy and Parquet
    files. One part per NumPy/Parquet file, or per run of --images-per-part images of one folder,
    each written whole: rerunning the command skips the parts already there."""
    if not 1 <= batch_size <= MAX_BATCH:
        fail(f"--batch-size {batch_size}: must be between 1 and {MAX_BATCH:,}", 2)
    if actors is not None and actors < 1:
        fail(f"--actors {actors}: must be at least 1", 2)
    if images_per_part < 1:
        fail(f"--images-per-part {images_per_part}: must be at least 1", 2)
    spec = load_or_exit(spec_path, set_)
    spec = getattr(spec, "train", spec)  # a sweep spec: its base training spec's data
    if not spec.data.own:
        fail("data.source: encode-dataset reads your own data (data.source with data.format images, numpy or "
             f"parquet); {spec_path} names {spec.data.dataset}", 2)
    data = spec.with_absolute_data_root().data.model_copy(update={"limit": None})  # every item

    from vae_service import storage
    from vae_service.core.checkpoint import CONFIG_FILE, MODEL_FILE, read_model_config
    from vae_service.sources import encode
    from vae_service.sources.check import inspect_source
    from vae_service.tracking.registry import ModelNotFound, model_directory

    with _errors():
        inspection = inspect_source(data)
        location = storage.resolve(output)
        storage.check_reachable(location)
        with tempfile.TemporaryDirectory(prefix="vae-model-") as tmp:
            directory = model_directory(model_uri, into=Path(tmp))
            try:
                model = encode.Model((directory / MODEL_FILE).read_bytes(), read_model_config(directory))
                model.build()
            except Exception as exc:  # a damaged or foreign directory: safetensors, JSON, shapes
                raise ModelNotFound(f"{model_uri}: cannot load the model {CONFIG_FILE}/{MODEL_FILE}: "
                                    f"{' '.join(str(exc).split())}") from None
        encode.check_model_fits(data, inspection, model)
        planned = encode.plan(model_uri, model, data, inspection, location, images_per_part)
        pending, skipped, skipped_files = planned.pending, len(planned.skipped), planned.skipped_files
        total_files = len(inspection.files.paths)
        say(f"encode-dataset: {total_files:,} {FILES[data.format]} files from {data.source} in {len(planned.parts):,} parts "
            f"→ {location}; {skipped:,} parts ({skipped_files:,} files) already there, skipped")
        if pending and not planned.manifest_written:
            encode.write_manifest(location, planned.manifest)
        written = encode.Written()
        if pending:
            from vae_service.cluster import ensure_ray

            ensure_ray()
            n_actors = actors or _default_actors()
            try:
                with _progress(total_files, skipped_files, quiet) as advance, _ray_data_silent():
                    written = encode.run(data, inspection, model, pending, location, batch_size=batch_size,
                                         actors=n_actors, on_file=advance)
            except KeyboardInterrupt:
                fail("interrupted: the parts written so far are kept; rerun the same command to continue", 130)
    foreign = planned.foreign
    say(f"wrote {written.rows:,} rows from {written.files:,} files in {written.parts:,} parts to {location}; "
        f"skipped {skipped:,} parts ({skipped_files:,} files) already there"
        + (f"; {foreign:,} other parts there are not parts of this source (left as they are)" if foreign else ""))


def _default_actors() -> int:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    return max(1, min(8, cpus // 2))


@contextmanager
def _errors() -> Iterator[None]:
    """Bad data, output or model: one line, exit 2 (models and MLflow as `vae eval`)."""
    from vae_service.core.data import DataError
    from vae_service.storage import StorageError

    with user_errors():
        try:
            yield
        except DataError as exc:
            message = " ".join(str(exc).split("\n"))
            fail(message if message.startswith(("data.", "--")) else f"data: {message}", 2)
        except StorageError as exc:
            fail(f"--output: {exc}", 2)


@contextmanager
def _ray_data_silent() -> Iterator[None]:
    """Ray Data logs a failed task at ERROR before raising it; the failure is reported once,
    as one line, by `_errors` (VAE_DEBUG keeps Ray Data's log)."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    if not os.environ.get("VAE_DEBUG"):
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _progress(total: int, done: int, quiet: bool):
    """A bar over the source's files (those of skipped parts count as done); yields advance(n)."""
    if quiet:
        yield lambda n: None
        return
    bar = Progress(TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True)
    with bar:
        task = bar.add_task("encoding", total=total, completed=done)
        yield lambda n: bar.advance(task, n)
