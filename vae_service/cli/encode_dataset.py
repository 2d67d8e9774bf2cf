"""`vae encode-dataset`: μ and log σ² of every item of a spec's data.source under a trained
model, as Parquet parts in a folder or under s3://bucket/prefix; restartable. The command runs an
encode-dataset job (core/encode_spec.py, jobs/encode_dataset.py), as `vae submit` can queue one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from vae_service.cli.common import SET_HELP, app, err, fail, load_or_exit
from vae_service.cli.models import MODEL_URI_HELP


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
    if actors is not None and actors < 1:
        fail(f"--actors {actors}: must be at least 1", 2)
    spec = load_or_exit(spec_path, set_)
    train = spec.train_specs()[0] if spec.train_specs() else None  # a sweep's: its base spec's data
    if train is None:
        fail(f"{spec_path}: a {spec.kind} spec has no data section to encode; give a train spec", 2)
    if not train.data.own:
        fail("data.source: encode-dataset reads your own data (data.source with data.format images, numpy or "
             f"parquet); {spec_path} names {train.data.dataset}", 2)
    job = _job(model_uri, train, output, batch_size, actors, images_per_part)

    from vae_service.jobs.execute import execute
    from vae_service.jobs.reporter import Reporter

    outcome = execute(job, reporter=Reporter(err, progress="off" if quiet else "bar"))
    if outcome.error is not None and outcome.error.kind == "interrupted":
        fail("interrupted: the parts written so far are kept; rerun the same command to continue", 130)
    if outcome.error is not None:
        fail(outcome.error.message, outcome.exit_code)


def _job(model_uri: str, train, output: str, batch_size: int, actors: Optional[int], images_per_part: int):
    """The encode-dataset job the arguments describe (its fields checked as a queued job's are)."""
    from pydantic import ValidationError

    from vae_service.core.encode_spec import EncodeDatasetSpec

    data = train.data.model_copy(update={"limit": None})  # every item
    try:
        return EncodeDatasetSpec(model=model_uri, data=data, output=output, batch_size=batch_size, images_per_part=images_per_part,
                                 resources={"num_workers": actors or _default_actors()})
    except ValidationError as exc:
        error = exc.errors()[0]
        option = OPTION_OF.get(str(error["loc"][0]) if error["loc"] else "", "")
        fail(f"{option or 'spec'} {error.get('input', '')}: {error['msg']}".replace("Value error, ", ""), 2)


# The command's options for the fields of the job they fill.
OPTION_OF = {"batch_size": "--batch-size", "images_per_part": "--images-per-part", "resources": "--actors", "output": "--output",
             "model": "MODEL_URI"}


def _default_actors() -> int:
    import ray

    from vae_service.cluster import ensure_ray

    ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    return max(1, min(8, cpus // 2))
