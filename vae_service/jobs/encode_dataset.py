"""The encode-dataset job: every item of a data.source through a trained model's encoder, as
Parquet parts in `output` (the work itself: sources/encode.py). Restartable: the parts already
in `output` are skipped, so a rerun, a resumed queued job or a preempted one continues where
it stopped. Its run directory holds the spec and the Outcome; the parts go to `output`."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from vae_service import storage
from vae_service.core.data import DataError
from vae_service.core.encode_spec import EncodeDatasetSpec
from vae_service.core.errors import BadInput, Interrupted, one_line
from vae_service.core.interrupt import Interrupt
from vae_service.jobs.lifecycle import write_spec
from vae_service.jobs.outcome import Outcome
from vae_service.jobs.reporter import Reporter

FILES = {"images": "image", "numpy": "NumPy", "parquet": "Parquet"}
PROGRESS_LINE_EVERY_S = 10.0  # a queued job's log: one progress line at most this often


@dataclass
class EncodeResult:
    output: str
    rows: int  # written by this run
    files: int  # input files encoded by this run
    parts: int  # parts written by this run
    skipped_parts: int  # already in `output`, left as they were
    skipped_files: int
    foreign_parts: int  # files in `output` that are not parts of this source (left alone)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def summary(self) -> str:
        foreign = f"; {self.foreign_parts:,} other parts there are not parts of this source (left as they are)" \
            if self.foreign_parts else ""
        return (f"wrote {self.rows:,} rows from {self.files:,} files in {self.parts:,} parts to {self.output}; "
                f"skipped {self.skipped_parts:,} parts ({self.skipped_files:,} files) already there{foreign}")


def encode_dataset_job(job: EncodeDatasetSpec, run_dir: storage.Location, *, resume: bool, reporter: Reporter,
                       interrupt: Interrupt, tags: Optional[dict] = None) -> Outcome:
    """Raises core.errors' JobErrors (bad data, model or output: bad input)."""
    write_spec(run_dir, job)
    try:
        result = encode_dataset(job, reporter, interrupt)
    except DataError as exc:
        message = " ".join(str(exc).split("\n"))
        raise BadInput(message if message.startswith(("data.", "--")) else f"data: {message}") from None
    except storage.StorageError as exc:
        raise BadInput(f"output: {exc}") from None
    except KeyboardInterrupt:  # the parts written so far stay: run it again to continue
        raise Interrupted(run_dir.uri) from None
    reporter.console.print(result.summary, markup=False, highlight=False, soft_wrap=True)
    return Outcome.succeeded("encode-dataset", result, run_dir=run_dir.uri, mlflow_run_id=None, model_uri=job.model,
                             metrics={"rows": result.rows, "parts": result.parts, "skipped_parts": result.skipped_parts})


def encode_dataset(job: EncodeDatasetSpec, reporter: Reporter, interrupt: Interrupt) -> EncodeResult:
    from vae_service.sources import encode
    from vae_service.sources.check import inspect_source

    data = job.data
    inspection = inspect_source(data)
    output = storage.resolve(job.output)
    storage.check_reachable(output)
    model = _load_model(job.model)
    encode.check_model_fits(data, inspection, model)
    planned = encode.plan(job.model, model, data, inspection, output, job.images_per_part)
    pending, total_files = planned.pending, len(inspection.files.paths)
    reporter.console.print(f"encode-dataset: {total_files:,} {FILES[data.format]} files from {data.source} in "
                           f"{len(planned.parts):,} parts → {output}; {len(planned.skipped):,} parts "
                           f"({planned.skipped_files:,} files) already there, skipped", markup=False, highlight=False,
                           soft_wrap=True)
    written = encode.Written()
    if pending:
        if not planned.manifest_written:
            encode.write_manifest(output, planned.manifest)
        from vae_service.cluster import ensure_ray

        ensure_ray()
        with _progress(reporter, total_files, planned.skipped_files) as advance, _ray_data_silent():
            written = encode.run(data, inspection, model, pending, output, batch_size=job.batch_size,
                                 actors=job.resources.num_workers, cpus_per_actor=job.resources.cpus_per_worker,
                                 on_file=_stopping(advance, interrupt))
    return EncodeResult(output.uri, written.rows, written.files, written.parts, len(planned.skipped),
                        planned.skipped_files, planned.foreign)


def _load_model(model_uri: str):
    """The model's weights and config, from any URI `vae encode` takes; one that cannot be
    found or loaded is bad input."""
    from vae_service.core.checkpoint import CONFIG_FILE, MODEL_FILE, read_model_config
    from vae_service.sources import encode
    from vae_service.tracking.mlflow_run import tracking_errors
    from vae_service.tracking.registry import ModelNotFound, model_directory

    with tempfile.TemporaryDirectory(prefix="vae-model-") as tmp:
        try:
            directory = model_directory(model_uri, into=Path(tmp))
        except ModelNotFound as exc:
            raise BadInput(str(exc)) from None
        except tracking_errors() as exc:
            raise BadInput(f"model: mlflow: {one_line(exc, first_line=True)}") from None
        try:
            model = encode.Model((directory / MODEL_FILE).read_bytes(), read_model_config(directory))
            model.build()
        except Exception as exc:  # a damaged or foreign directory: safetensors, JSON, shapes
            raise BadInput(f"{model_uri}: cannot load the model {CONFIG_FILE}/{MODEL_FILE}: {' '.join(str(exc).split())}") from None
    return model


def _stopping(advance: Callable[[int], None], interrupt: Interrupt) -> Callable[[int], None]:
    """Progress that also ends the job, between parts' files, when it is asked to stop (the
    queue's cancel or preemption): the parts written so far stay, and a rerun skips them."""
    def on_file(n: int) -> None:
        advance(n)
        if interrupt.requested:
            raise KeyboardInterrupt
    return on_file


@contextlib.contextmanager
def _progress(reporter: Reporter, total: int, done: int) -> Iterator[Callable[[int], None]]:
    """Over the source's files (those of skipped parts count as done): a bar in a terminal, a
    line every PROGRESS_LINE_EVERY_S in a queued job's log; yields advance(n)."""
    if reporter.progress == "off":
        yield lambda n: None
    elif reporter.progress == "lines":
        state = {"done": done, "said": time.monotonic()}

        def advance(n: int) -> None:
            state["done"] += n
            if time.monotonic() - state["said"] >= PROGRESS_LINE_EVERY_S or state["done"] == total:
                state["said"] = time.monotonic()
                reporter.console.print(f"encoded {state['done']:,} of {total:,} files", markup=False, highlight=False)
        yield advance
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
                       TimeElapsedColumn(), TimeRemainingColumn(), console=reporter.console, transient=True)
        with bar:
            task = bar.add_task("encoding", total=total, completed=done)
            yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def _ray_data_silent() -> Iterator[None]:
    """Ray Data logs a failed task at ERROR before raising it; the failure is reported once,
    as one line, in the Outcome (VAE_DEBUG keeps Ray Data's log)."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    if not os.environ.get("VAE_DEBUG"):
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
