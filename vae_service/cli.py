"""The `vae` command line.

Exit codes: 0 success, 1 the job failed (e.g. a non-finite loss), 2 bad input (spec, flags,
missing data), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from vae_service.core.spec import TrainSpec
from vae_service.core.spec_loading import SpecError, load_spec

app = typer.Typer(
    name="vae",
    help="Train variational autoencoders on Ray from YAML job specs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

SET_HELP = "Override a spec field, e.g. --set optim.epochs=2 (value read as YAML). Repeatable."


def _fail(message: str, code: int) -> None:
    err.print(message, markup=False, highlight=False, emoji=False, soft_wrap=True)
    raise typer.Exit(code)


def _load_or_exit(path: Path, overrides: List[str]) -> TrainSpec:
    try:
        return load_spec(path, overrides)
    except SpecError as exc:
        _fail(str(exc), 2)
        raise  # unreachable; keeps type checkers happy


@app.command()
def validate(
    specs: List[Path] = typer.Argument(..., help="Spec files to check."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Check job specs: exit 0, or 2 with one 'path.to.field: reason' line per problem."""
    problems = 0
    for path in specs:
        try:
            load_spec(path, set_)
            err.print(f"{path}: ok", markup=False, highlight=False, emoji=False, soft_wrap=True)
        except SpecError as exc:
            problems += 1
            err.print(str(exc), markup=False, highlight=False, emoji=False, soft_wrap=True)
    raise typer.Exit(2 if problems else 0)


@app.command()
def schema() -> None:
    """Print the JSON Schema of job specs (for editors: yaml-language-server)."""
    print(json.dumps(spec_json_schema(), indent=2))


def spec_json_schema() -> dict:
    schema = TrainSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vae-service job spec"
    return schema


@app.command()
def run(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec (YAML)."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object with the outcome on stdout."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run directory from its latest checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Train the spec on Ray Train (a local Ray unless RAY_ADDRESS is set)."""
    spec = _load_or_exit(spec_path, set_)
    # Imported here: Ray and torch take seconds to import, and validate/schema need neither.
    from vae_service.core.data import DataError, locate_mnist
    from vae_service.training.runner import TrainingError, TrainingInterrupted, run_training

    try:
        locate_mnist(spec.data.root, spec.data.download)  # fail fast, before Ray starts
    except DataError as exc:
        _fail(f"data: {exc}", 2)
    err.print(f"[bold]vae run[/] {spec.name}: {spec.model.arch} latent {spec.model.latent_dim}, "
              f"{spec.objective.kind} β={spec.objective.beta}, {spec.optim.epochs} epochs, "
              f"{spec.resources.num_workers} worker(s)")
    try:
        result = run_training(spec, resume_dir=str(resume) if resume else None, console=err, show_progress=not quiet)
    except TrainingError as exc:
        _fail(f"error: {exc}", 1)
    except TrainingInterrupted as exc:
        _fail(f"interrupted: checkpoints are kept; continue with `vae run {spec_path} --resume {exc}`", 130)
    _print_summary(result)
    if json_output:
        sys.stdout.write(json.dumps(result.to_json(), default=str) + "\n")


def _print_summary(result) -> None:
    table = Table(title="run summary", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.to_json()["metrics"].items():
        if value is None:
            continue
        table.add_row(key, f"{value:,.3f}" if isinstance(value, float) else str(value))
    table.add_row("epochs", str(result.epochs_completed))
    table.add_row("run dir", result.run_dir)
    table.add_row("model", result.model_dir)
    err.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
